"""Fast tests of the zoo's small-object detector: the SSD-like architecture (uneven padding at
every strided conv, heads at two depths), the scenes, training (determinism, cache, early
stopping in the metadata), average precision on hand-built maps, the location maps and
argument errors (tiny budgets, tmp cache)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from pytest_padbias import detector, detector_eval, zoo
from pytest_padbias.blindspots import DetectabilityMap
from pytest_padbias.geometry import uneven_layers
from pytest_padbias.result import PadbiasError

#: A tiny training budget: a fraction of a second per model.
TINY = dict(size=64, n_train=16, n_val=8, max_epochs=2, patience=1, lr_drops=0, width=2, batch_size=8)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# --------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("size", [detector.SIZE, 64, 128])
def test_every_strided_conv_pads_unevenly_at_the_input_size(size):
    model = detector.detector_cnn("zeros", width=2)
    strided = [c for c in _convs(model) if c.stride == (2, 2)]
    assert len(strided) >= 4 and all(c.kernel_size == (3, 3) for c in strided)
    uneven = uneven_layers(model, (size, size))
    # each stride-2 stage gets an even input, so it reads the top/left padding only
    assert [r.stride for r in uneven] == [(2, 2)] * len(strided)
    assert all(r.pad_read == (1, 0, 1, 0) for r in uneven)
    assert [r.input_size[0] for r in uneven] == [size // 2**k for k in range(len(strided))]
    # the stride-1 convs and the heads pad evenly
    assert not [r for r in uneven if r.stride == (1, 1)]


def test_heads_read_feature_maps_of_two_depths():
    model = detector.detector_cnn("zeros", width=2)
    seen = {}
    for i, head in enumerate(model.heads):
        head.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, (tuple(inp[0].shape), tuple(out.shape))))
    outputs = model(torch.rand(2, 1, 96, 96))
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 12, 12), (2, 1, 6, 6)]
    assert detector.HEAD_STRIDES == (8, 16) and len({stage for _, stage, _ in detector.HEADS}) == 2
    assert seen[0][0][-1] == 12 and seen[1][0][-1] == 6  # stride-8 and stride-16 feature maps
    assert all(h.kernel_size == (3, 3) for h in model.heads)  # SSD's 3x3 prediction convs


@pytest.mark.parametrize("mode", detector.MODES)
def test_padding_mode_is_honoured(mode):
    model = detector.detector_cnn(mode, width=2)
    assert all(c.padding_mode == mode for c in _convs(model))


def test_zeros_and_reflect_differ_only_near_the_borders():
    torch.manual_seed(0)
    zeros = detector.detector_cnn("zeros", width=2)
    reflect = detector.detector_cnn("reflect", width=2)
    reflect.load_state_dict(zeros.state_dict())
    x = torch.rand(1, 1, 256, 256)
    a, b = zeros(x)[0], reflect(x)[0]
    assert not torch.allclose(a[..., 0, :], b[..., 0, :])  # the border cells read the padding
    # cells whose receptive field (47 px at the small head) stays inside the image do not
    assert torch.allclose(a[..., 8:-8, 8:-8], b[..., 8:-8, 8:-8], atol=1e-5)


# --------------------------------------------------------------------------- scenes
def test_scenes_are_deterministic_and_the_objects_are_lit_lights():
    x1, o1 = detector.scenes("train", 12, size=64, data_seed=5)
    detector._split.cache_clear()
    x2, o2 = detector.scenes("train", 12, size=64, data_seed=5)
    assert torch.equal(x1, x2) and torch.equal(o1, o2)
    assert x1.shape == (12, 1, 64, 64) and x1.dtype == torch.float32 and o1.shape[1] == 4
    assert 0.0 <= float(x1.min()) and float(x1.max()) <= 1.0
    counts = np.bincount(o1[:, 0].numpy(), minlength=12)
    assert counts.min() >= 1 and counts.max() <= detector.MAX_OBJECTS
    for i, r, c, head in o1.tolist():
        h, w = detector.HEADS[head][2]
        patch = x1[i, 0, r - h // 2 : r - h // 2 + h, c - w // 2 : c - w // 2 + w].numpy()
        assert patch.shape == (h, w)
        assert patch[:, w // 2].max() > 0.55 and patch[[0, -1]][:, [0, -1]].mean() < 0.4  # a lit lamp in a dark housing
    for other in (detector.scenes("train", 12, size=64, data_seed=6)[0], detector.scenes("val", 12, size=64, data_seed=5)[0],
                  detector.scenes("test", 12, size=64, data_seed=5)[0]):
        assert not torch.equal(x1, other)


def test_objects_are_placed_uniformly_including_the_borders():
    from scipy.stats import chisquare

    _, objects = detector.scenes("train", 600, size=64)
    for head, (_, _, (h, w)) in enumerate(detector.HEADS):
        o = objects[objects[:, 3] == head].numpy()
        tops, lefts = o[:, 1] - h // 2, o[:, 2] - w // 2
        assert tops.min() == 0 and tops.max() == 64 - h and lefts.min() == 0 and lefts.max() == 64 - w
        for offsets, extent in ((tops, 64 - h), (lefts, 64 - w)):  # 4 equal bands of positions
            bands = np.bincount(offsets * 4 // (extent + 1), minlength=4)
            assert chisquare(bands).pvalue > 1e-3, bands


def test_target_heatmaps_mark_each_objects_cell_on_its_head():
    objects = torch.tensor([[0, 4, 4, 0], [0, 60, 2, 1], [1, 17, 63, 0]])
    small, large = detector.target_heatmaps(objects, 2, 64)
    assert small.shape == (2, 1, 8, 8) and large.shape == (2, 1, 4, 4)
    assert small.sum() == 2 and large.sum() == 1
    assert small[0, 0, 0, 0] == 1 and small[1, 0, 2, 7] == 1 and large[0, 0, 3, 0] == 1
    packed = detector.pack_targets([small, large])
    assert packed.shape == (2, 64 + 16) and packed.sum() == 3


# --------------------------------------------------------------------------- training
def test_training_is_deterministic_cached_and_records_its_epochs(tmp_path):
    a = detector.trained_detector("reflect", 3, cache_dir=tmp_path / "a", **TINY)
    b = detector.trained_detector("reflect", 3, cache_dir=tmp_path / "b", **TINY)
    c = detector.trained_detector("reflect", 3, cache_dir=tmp_path / "a", **TINY)
    assert a.zoo_info["origin"] == b.zoo_info["origin"] == "trained" and c.zoo_info["origin"] == "cached"
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k]), k
    assert not a.training and a.zoo_info["config"]["padding_mode"] == "reflect"
    for model in (a, c):  # the training record is in the file, so a cached model has it too
        info = model.zoo_info["train"]
        assert 1 <= info["best_epoch"] <= info["epochs"] <= TINY["max_epochs"]
        assert isinstance(info["val_loss"], float) and info["val_loss"] > 0 and info["stopped"] in ("converged", "max epochs")
    assert zoo.train_info(c.zoo_info["path"])["epochs"] == a.zoo_info["train"]["epochs"]
    assert detector.is_cached("reflect", 3, cache_dir=tmp_path / "a", **TINY)
    assert not detector.is_cached("reflect", 5, cache_dir=tmp_path / "a", **TINY)
    other = detector.trained_detector("reflect", 4, cache_dir=tmp_path / "a", **TINY)
    zeros = detector.trained_detector("zeros", 3, cache_dir=tmp_path / "a", **TINY)
    assert not torch.equal(other.state_dict()["stages.0.0.weight"], a.state_dict()["stages.0.0.weight"])
    # same seed, other padding: the same initial weights and batch order, other weights after training
    assert not torch.equal(zeros.state_dict()["stages.0.0.weight"], a.state_dict()["stages.0.0.weight"])
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".safetensors")
    assert len(names) == 3 and all(n.startswith("detector-64-") for n in names)
    assert not [p for p in (tmp_path / "a").iterdir() if p.suffix == ".tmp"]


def test_early_stopping_ends_before_the_epoch_cap_and_keeps_the_best_epoch(tmp_path):
    budget = dict(TINY, max_epochs=40, lr=0.02)
    model = detector.trained_detector("zeros", 0, cache_dir=tmp_path, **budget)
    info = model.zoo_info["train"]
    assert info["stopped"] == "converged" and info["epochs"] < 40
    assert info["epochs"] == info["best_epoch"] + budget["patience"]
    xv, objects = detector.scenes("val", budget["n_val"], 64)
    y = detector.pack_targets(detector.target_heatmaps(objects, budget["n_val"], 64))
    with torch.no_grad():
        assert float(detector.detector_loss(model(xv), y)) == pytest.approx(info["val_loss"], rel=1e-4)


def test_a_corrupt_cache_file_is_retrained(tmp_path):
    first = detector.trained_detector("zeros", 1, cache_dir=tmp_path, **TINY)
    path = zoo.Path(first.zoo_info["path"])
    path.write_bytes(path.read_bytes()[:100])
    again = detector.trained_detector("zeros", 1, cache_dir=tmp_path, **TINY)
    assert again.zoo_info["origin"] == "trained"
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


# --------------------------------------------------------------------------- average precision
def test_average_precision_of_known_rankings():
    ap = detector_eval.average_precision
    assert ap([0.9, 0.8], [True, True], 2) == pytest.approx(100.0)
    assert ap([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))
    assert ap([0.9, 0.8, 0.1], [True, True, False], 4) == pytest.approx(50.0)  # half the objects never found
    # the envelope: precision at recall 1/2 is the best precision at any recall >= 1/2 (2/3, not 1/2)
    assert ap([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(100 * 2 / 3)
    assert ap([0.5, 0.9], [True, False], 1) == pytest.approx(50.0)  # sorted by score, not by order given
    assert ap([], [], 3) == 0.0


def test_ap_of_hand_built_score_maps():
    """One image, two small objects (cells (2, 3) and (8, 8)) and a large one (cell (1, 1)):
    the maps' peaks are scored so that the AP is known by construction."""
    objects = np.array([[0, 2 * 8 + 4, 3 * 8 + 4, 0], [0, 8 * 8 + 1, 8 * 8 + 7, 0], [0, 16 + 8, 16 + 8, 1]])
    small, large = np.zeros((1, 12, 12)), np.zeros((1, 6, 6))
    small[0, 3, 4] = 0.9  # one cell off the first object: a true positive
    small[0, 6, 0] = 0.8  # nothing there: a false positive
    small[0, 8, 8] = 0.6  # the second object
    small[0, 10, 8] = 0.7  # two cells off the second object: a false positive
    large[0, 1, 1] = 0.95  # the large object on its own head
    large[0, 4, 4] = 0.2  # a false positive on the large head
    dets = [detector_eval.peaks(small), detector_eval.peaks(large)]
    assert len(dets[0]) == 4 and len(dets[1]) == 2
    scores, tp = detector_eval.match(dets, objects)
    ranked = tp[np.argsort(-scores)].tolist()  # 0.95 T, 0.9 T, 0.8 F, 0.7 F, 0.6 T, 0.2 F
    assert ranked == [True, True, False, False, True, False]
    expected = 100 * (1 / 3 * 1 + 1 / 3 * 1 + 1 / 3 * 3 / 5)
    assert detector_eval.average_precision(scores, tp, 3) == pytest.approx(expected)
    # a small object's peak on the large head does not count (wrong scale), nor a second
    # detection of an object already matched
    dup = [detector_eval.peaks(small), np.array([[0, 1, 1, 0.95], [0, 1, 2, 0.5]])]
    s2, t2 = detector_eval.match(dup, objects[[0, 2]])
    assert sorted(zip(s2.tolist(), t2.tolist()), reverse=True)[:2] == [(0.95, True), (0.9, True)]
    assert dict(zip(s2.tolist(), t2.tolist()))[0.5] is False


def test_evaluate_ap_runs_on_a_model():
    out = detector_eval.evaluate_ap(detector.detector_cnn("zeros", width=2), n=4, size=64)
    assert {"ap", "ap_small", "ap_large", "objects", "recall_at_0.5", "precision_at_0.5"} <= set(out)
    assert 0.0 <= out["ap"] <= 100.0 and out["objects"] >= 4


# --------------------------------------------------------------------------- location maps
class _BlindRight(nn.Module):
    """A fake detector: every cell of the small head says "object" except the last two
    columns (an artificial blind spot along the right border)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        small = torch.full((len(x), 1, x.shape[-2] // 8, x.shape[-1] // 8), 20.0)
        small[..., -2:] = -20.0
        return [small, torch.full((len(x), 1, x.shape[-2] // 16, x.shape[-1] // 16), -20.0)]


def test_location_map_finds_an_artificial_blind_spot():
    loc = detector_eval.location_map(_BlindRight(), n_backgrounds=2, grid=(6, 7), size=64)
    h, w = detector.OBJECT
    assert loc.score.shape == loc.detection.shape == (6, 7)
    assert loc.tops[0] == 0 and loc.tops[-1] == 64 - h and loc.lefts[0] == 0 and loc.lefts[-1] == 64 - w
    masks = loc.masks()
    assert masks["ring"].sum() == 2 * 6 + 2 * 7 - 4 and not (masks["ring"] & masks["interior"]).any()
    s = loc.summary()
    assert s["worst_side"] == "right" and s["side_detection"]["left"] == 1.0 and s["interior_detection"] == 1.0
    assert s["worst_side_deficit"] > 50 and s["ring_deficit"] > 0
    x, rate = loc.along_border("right")
    assert list(x) == list(loc.tops + h // 2) and rate.max() == 0.0
    assert isinstance(loc.as_detectability_map(), DetectabilityMap) and loc.preview.shape == (64, 64, 3)


def test_location_stimuli_follow_the_scenes():
    jittered = detector_eval.location_stimuli(5)
    assert len(jittered) == 5 and all(s.shape == detector.OBJECT for s in jittered)
    assert len({s.tobytes() for s in jittered}) == 5
    assert all(np.array_equal(s, detector.traffic_light(1)) for s in detector_eval.location_stimuli(3, lit=1))


def test_the_symmetric_grid():
    offsets = detector_eval.grid_offsets(96, 5, 24)
    assert offsets[0] == 0 and offsets[-1] == 91 and len(offsets) == 24
    assert np.array_equal(offsets, 91 - offsets[::-1])


def test_profiles_and_their_seeds():
    quick = detector_eval.profile_budget("quick")
    assert quick["seeds"] >= 3 and detector_eval.profile_budget("quick", seeds=2)["seeds"] == 2
    report = detector_eval.profile_budget("report")
    assert report["seeds"] >= quick["seeds"] and report["n_train"] > quick["n_train"]
    z = detector_eval.DetectorZoo("quick", seeds=range(1, 3))
    assert z.seeds == (1, 2) and z.describe()["profile"] == "quick" and "seeds" not in z.budget


@pytest.mark.parametrize("call, match", [
    (lambda: detector.detector_cnn("circular"), "padding_mode='circular'"),
    (lambda: detector.detector_cnn("zeros", width=0), "width=0"),
    (lambda: detector.trained_detector("edge", 0), "padding_mode='edge'"),
    (lambda: detector.trained_detector("zeros", -1), "seed=-1"),
    (lambda: detector.trained_detector("zeros", 0, n_train=0), "n_train=0"),
    (lambda: detector.trained_detector("zeros", 0, patience=True), "patience=True"),
    (lambda: detector.trained_detector("zeros", 0, lr=0), "lr=0"),
    (lambda: detector.trained_detector("zeros", 0, device="tpu"), "device='tpu'"),
    (lambda: detector.trained_detector("zeros", 0, size=100), "size=100"),
    (lambda: detector.scenes("train", 4, size=72), "size=72"),
    (lambda: detector.detector_config("zeros", 0, epochs=3), "unknown detector budget epochs"),
    (lambda: detector.scenes("holdout", 4), "split='holdout'"),
    (lambda: detector.scenes("train", 0), "n=0"),
    (lambda: detector.traffic_light(3), "lit=3"),
    (lambda: detector.traffic_light(0, scale=3), "scale=3"),
    (lambda: detector_eval.location_map(_BlindRight(), grid=(1, 5)), r"grid=\(1, 5\)"),
    (lambda: detector_eval.location_map(_BlindRight(), n_backgrounds=0), "n_backgrounds=0"),
    (lambda: detector_eval.average_precision([0.5], [True], 0), "n_objects=0"),
    (lambda: detector_eval.average_precision([0.5, 0.4], [True], 1), "same length"),
    (lambda: detector_eval.average_precision([0.5, 0.4], [True, True], 1), "at most once"),
    (lambda: detector_eval.profile_budget("slow"), "zoo profile 'slow'"),
    (lambda: detector_eval.profile_budget("quick", seeds=0), "seeds=0"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(PadbiasError, match=match):
        call()
