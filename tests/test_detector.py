"""Fast tests of the zoo's small-object detector: scenes, training determinism, the cache,
padding modes, the location measures and argument errors (tiny budgets, tmp cache)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from pytest_padbias import detector
from pytest_padbias.blindspots import DetectabilityMap
from pytest_padbias.result import PadbiasError

#: A tiny training budget: a fraction of a second per model.
TINY = dict(size=32, n_train=16, epochs=1, width=2, batch_size=8)


def _patch(image, centre):
    h, w = detector.OBJECT
    r, c = int(centre[0]), int(centre[1])
    return image[0, r - h // 2 : r - h // 2 + h, c - w // 2 : c - w // 2 + w].numpy()


def test_scenes_are_deterministic_and_the_object_is_at_the_target():
    x1, c1 = detector.scenes("train", 12, size=32, data_seed=5)
    detector._split.cache_clear()
    x2, c2 = detector.scenes("train", 12, size=32, data_seed=5)
    assert torch.equal(x1, x2) and torch.equal(c1, c2)
    assert x1.shape == (12, 1, 32, 32) and x1.dtype == torch.float32 and c1.shape == (12, 2)
    assert 0.0 <= float(x1.min()) and float(x1.max()) <= 1.0
    lights = [detector.traffic_light(k) for k in range(3)]
    for image, centre in zip(x1, c1):
        assert any(np.array_equal(_patch(image, centre), light) for light in lights)
    other, _ = detector.scenes("train", 12, size=32, data_seed=6)
    test, _ = detector.scenes("test", 12, size=32, data_seed=5)
    assert not torch.equal(x1, other) and not torch.equal(x1, test)


def test_objects_reach_every_border():
    _, c = detector.scenes("train", 400, size=32)
    h, w = detector.OBJECT
    tops, lefts = c[:, 0] - h // 2, c[:, 1] - w // 2
    assert int(tops.min()) == 0 and int(tops.max()) == 32 - h
    assert int(lefts.min()) == 0 and int(lefts.max()) == 32 - w


def test_target_heatmap_marks_the_centre_cell():
    centres = torch.tensor([[4, 4], [31, 2], [17, 30]])
    y = detector.target_heatmap(centres, 32)
    assert y.shape == (3, 1, 8, 8) and y.sum().item() == 3
    for i, (r, c) in enumerate(centres.tolist()):
        assert y[i, 0, r // detector.STRIDE, c // detector.STRIDE] == 1


@pytest.mark.parametrize("mode", detector.MODES)
def test_padding_mode_is_honoured(mode):
    model = detector.detector_cnn(mode, width=2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 5 and all(c.padding_mode == mode for c in convs)
    assert sum(c.stride == (2, 2) for c in convs) == 2
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 1, 16, 16)


def test_zeros_and_reflect_differ_only_in_the_padding():
    torch.manual_seed(0)
    zeros = detector.detector_cnn("zeros", width=2)
    reflect = detector.detector_cnn("reflect", width=2)
    reflect.load_state_dict(zeros.state_dict())
    x = torch.rand(1, 1, 96, 96)
    a, b = zeros(x), reflect(x)
    assert not torch.allclose(a[..., 0, :], b[..., 0, :])  # the border row reads the padding
    # cells whose 35 px receptive field stays inside the image do not
    assert torch.allclose(a[..., 6:-6, 6:-6], b[..., 6:-6, 6:-6], atol=1e-6)


def test_training_is_deterministic_and_cached(tmp_path):
    a = detector.trained_detector("reflect", 3, cache_dir=tmp_path / "a", **TINY)
    b = detector.trained_detector("reflect", 3, cache_dir=tmp_path / "b", **TINY)
    c = detector.trained_detector("reflect", 3, cache_dir=tmp_path / "a", **TINY)
    assert a.zoo_info["origin"] == b.zoo_info["origin"] == "trained" and c.zoo_info["origin"] == "cached"
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k]), k
    assert not a.training and a.zoo_info["config"]["padding_mode"] == "reflect"
    assert all(m.padding_mode == "reflect" for m in c.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    other = detector.trained_detector("reflect", 4, cache_dir=tmp_path / "a", **TINY)
    zeros = detector.trained_detector("zeros", 3, cache_dir=tmp_path / "a", **TINY)
    assert not torch.equal(other.state_dict()["1.weight"], a.state_dict()["1.weight"])
    assert zeros.zoo_info["path"] != a.zoo_info["path"]
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".safetensors")
    assert len(names) == 3 and all(n.startswith("detector-32-") for n in names)
    assert not [p for p in (tmp_path / "a").iterdir() if p.suffix == ".tmp"]


def test_a_corrupt_cache_file_is_retrained(tmp_path):
    first = detector.trained_detector("zeros", 1, cache_dir=tmp_path, **TINY)
    path = detector.zoo.Path(first.zoo_info["path"])
    path.write_bytes(path.read_bytes()[:100])
    again = detector.trained_detector("zeros", 1, cache_dir=tmp_path, **TINY)
    assert again.zoo_info["origin"] == "trained"
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


class _Peak(nn.Module):
    """A fake detector whose heatmap peaks at a fixed cell (prob ~1), else ~0."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        out = torch.full((len(x), 1, x.shape[-2] // 4, x.shape[-1] // 4), -20.0)
        out[:, 0, self.cell[0], self.cell[1]] = 20.0
        return out


def test_object_scores_need_the_peak_at_the_object():
    x = torch.zeros(2, 1, 32, 32)
    centres = torch.tensor([[10, 10], [29, 29]])  # cells (2, 2) and (7, 7)
    score, hit = detector.object_scores(_Peak((3, 2)), x, centres)  # one cell off the first: still near it
    assert score[0] > 0.99 and hit[0] and score[1] < 0.01 and not hit[1]


def test_location_map_and_border_scan():
    model = _Peak((4, 4))
    loc = detector.location_map(model, n_backgrounds=2, grid=(4, 5), size=32)
    h, w = detector.OBJECT
    assert loc.score.shape == loc.detection.shape == (4, 5)
    assert loc.tops[0] == 0 and loc.tops[-1] == 32 - h and loc.lefts[0] == 0 and loc.lefts[-1] == 32 - w
    assert 0.0 <= loc.score.min() and loc.score.max() <= 1.0 and loc.preview.shape == (32, 32, 3)
    bands = loc.bands()
    assert bands["border"]["cells"] + bands["centre"]["cells"] == 20 and bands["top"]["cells"] == 5
    summary = loc.summary()
    assert summary["worst_side"] in detector.SIDES and summary["cv"] >= 0
    dm = loc.as_detectability_map()
    assert isinstance(dm, DetectabilityMap) and dm.padding_mode == "model"
    found = detector.border_positions(32, step=4)
    assert (0, 0, "top") in found and (0, 32 - w, "top") in found and (32 - h, 32 - w, "right") in found
    assert all((t == 0) + (t == 32 - h) + (l == 0) + (l == 32 - w) >= 1 for t, l, _ in found)
    scan = detector.border_scan(model, n_backgrounds=2, size=32, step=4)
    assert scan["positions"] == len(found) and 0.0 <= scan["blind"] <= 1.0
    assert scan["min_detection"] == 0.0  # the fake detector only sees the centre
    overall = detector.evaluate(model, n=8, size=32)
    assert set(overall) == {"detection", "score"} and 0.0 <= overall["detection"] <= 1.0


def test_the_symmetric_grid():
    offsets = detector.grid_offsets(64, 5, 16)
    assert offsets[0] == 0 and offsets[-1] == 59 and len(offsets) == 16
    assert np.array_equal(offsets, 59 - offsets[::-1])


@pytest.mark.parametrize("call, match", [
    (lambda: detector.detector_cnn("circular"), "padding_mode='circular'"),
    (lambda: detector.trained_detector("edge", 0), "padding_mode='edge'"),
    (lambda: detector.trained_detector("zeros", -1), "seed=-1"),
    (lambda: detector.trained_detector("zeros", 0, n_train=0), "n_train=0"),
    (lambda: detector.scenes("train", 4, size=30), "size=30"),
    (lambda: detector.scenes("val", 4), "split='val'"),
    (lambda: detector.scenes("train", 0), "n=0"),
    (lambda: detector.traffic_light(3), "lit=3"),
    (lambda: detector.location_map(_Peak((0, 0)), grid=(1, 5)), r"grid=\(1, 5\)"),
    (lambda: detector.location_map(_Peak((0, 0)), n_backgrounds=0), "n_backgrounds=0"),
    (lambda: detector.border_positions(64, step=0), "step=0"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(PadbiasError, match=match):
        call()
