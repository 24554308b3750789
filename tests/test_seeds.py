"""``--padbias-seed`` is honoured everywhere randomness enters, and only there.

For each source of randomness (the photograph crops of ``padbias_images``, the shift pairs
of the consistency estimate, the hypothesis search of the ``shift_robust`` gate, the random
control neurons of RAND-reflect, the zoo's training, the blind-spot background and the
artifact noise) the same seed reproduces exactly what was drawn and another seed draws
something else; the hypothesis search does so in CI too, where the plugin derandomizes it.
End to end, ``--padbias-seed`` reaches the gates: the same command and seed write the same
JSON (``tests/test_report.py`` checks that for the padding gate), another seed other results.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from pytest_padbias import zoo
from pytest_padbias.artifacts import artifact_inputs
from pytest_padbias.blindspot_stimuli import make_background
from pytest_padbias.blindspots import detectability_map
from pytest_padbias.images import natural_images
from pytest_padbias.intervention import pan_reflect_experiment, random_control
from pytest_padbias.pans import pan_census
from pytest_padbias.shift_gate import search_flipping_shift
from pytest_padbias.shifts import shift_consistency


class Recorder(nn.Module):
    """A tiny classifier that writes down every input it is shown (what the seed chose)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                                 nn.Flatten(), nn.Linear(6, 4)).eval()
        self.seen: list[tuple[float, ...]] = []

    def forward(self, x):
        self.seen += [tuple(round(float(v), 4) for v in img.flatten()[::37]) for img in x]
        return self.net(x)


def images(n=4, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(42))


def draws(fn, *seeds):
    return [fn(s) for s in seeds]


def test_natural_images_crops_follow_the_seed():
    a, b, c = draws(lambda s: natural_images(12, (24, 24), seed=s), 1, 1, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # By design the first crop of each photograph is its full centred crop, whatever the seed;
    # the seeded crops (here the 2nd of photographs 0 and 1: rows 1 and 3) are what changes.
    assert torch.equal(a[[0, 2, 4]], c[[0, 2, 4]])
    assert not torch.equal(a[1], c[1]) and not torch.equal(a[3], c[3])


def test_shift_pairs_follow_the_seed():
    def shown(seed):
        model = Recorder()
        shift_consistency(model, images(), mode="translate", max_shift=3, views_per_image=4, seed=seed)
        return model.seen

    a, b, c = draws(shown, 7, 7, 8)
    assert a == b and a != c


@pytest.mark.parametrize("derandomize", [False, True])  # the plugin derandomizes when $CI is set
def test_the_hypothesis_shift_search_follows_the_seed(derandomize):
    def searched(seed):
        model = Recorder()
        search_flipping_shift(model, images(), 3, max_examples=8, derandomize=derandomize, seed=seed)
        return model.seen

    a, b, c = draws(searched, 1, 1, 2)
    assert a == b
    assert a != c, "the hypothesis search ignored the seed"


def test_rand_reflect_control_neurons_follow_the_seed():
    census = SimpleNamespace(layers=[SimpleNamespace(name="conv", out_channels=64)])
    pans = {"conv": [0, 5, 9, 17]}
    a, b, c = draws(lambda s: random_control(census, pans, s), 3, 3, 4)
    assert a == b and a != c
    assert len(a["conv"]) == 4 and not set(a["conv"]) & set(pans["conv"])
    # pan_reflect_experiment draws its control with the seed it is given.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.rand(6, 3, 1, 1) + 0.05 * torch.rand(6, 3, 12, 12)
    real = pan_census(model, x)
    for seed in (3, 4):
        result = pan_reflect_experiment(model, x, real, theta=0.4, seed=seed)
        assert result["seed"] == seed
        assert result["random_channels"] == random_control(real, result["pan_channels"], seed)


def test_zoo_models_follow_the_seed(tmp_path):
    tiny = dict(n_train=26, epochs=1, width=2, batch_size=26)
    a = zoo.trained_model("letters", 28, "zeros", 1, cache_dir=tmp_path / "a", **tiny)
    b = zoo.trained_model("letters", 28, "zeros", 1, cache_dir=tmp_path / "b", **tiny)
    c = zoo.trained_model("letters", 28, "zeros", 2, cache_dir=tmp_path / "a", **tiny)
    assert a.zoo_info["origin"] == b.zoo_info["origin"] == c.zoo_info["origin"] == "trained"
    assert a.zoo_info["config"]["seed"] == 1 and c.zoo_info["config"]["seed"] == 2
    assert a.zoo_info["path"] != c.zoo_info["path"]  # the seed is part of the cache key
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, another process' cache: same weights
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_blind_spot_backgrounds_follow_the_seed():
    a, b, c = draws(lambda s: make_background("natural", (32, 32), seed=s), 0, 0, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(make_background("grey", (32, 32), seed=0), make_background("grey", (32, 32), seed=1))  # nothing to draw

    model = Recorder().net
    maps = draws(lambda s: detectability_map(model, (32, 32), background="natural", stride=8, seed=s).scores, 0, 0, 1)
    assert (maps[0] == maps[1]).all() and not (maps[0] == maps[2]).all()


def test_artifact_noise_follows_the_seed():
    a, b, c = draws(lambda s: artifact_inputs((16, 16), kinds=("random",), seed=s)["random"], 5, 5, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)


GATED = """
from pytest_padbias import padbias

@padbias.shift_robust(0.01, max_shift=3)
def test_seeded_gate():
    pass
"""
MODEL = """
import torch, torch.nn as nn
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(6, 4))
"""


def test_padbias_seed_reaches_the_gates_and_the_json(pytester, monkeypatch):
    monkeypatch.setenv("CI", "1")  # the plugin derandomizes hypothesis in CI: the seed must still count
    pytester.makepyfile(seeded_model=MODEL, test_inner_seeded=GATED)

    def run(name, seed):
        pytester.runpytest("--padbias-model=seeded_model.py:model", "--padbias-weights=none", "--padbias-input-size=24",
                           "--padbias-images=12", "--padbias-max-examples=5", f"--padbias-seed={seed}",
                           f"--padbias-json={name}", "-p", "no:cacheprovider").assert_outcomes(passed=1)
        return json.loads((pytester.path / name).read_text())

    a, b, c = run("a.json", 3), run("b.json", 3), run("c.json", 4)
    assert a == b
    assert a["seed"] == 3 and c["seed"] == 4
    (check_a,), (check_c,) = a["tests"][0]["checks"], c["tests"][0]["checks"]
    assert check_a["details"]["search"]["seed"] == 3 and check_c["details"]["search"]["seed"] == 4
    assert check_a["details"]["search"]["derandomize"] is True
    # Other crops and other shift pairs: other per-image consistencies and border maps.
    assert check_a["details"]["per_image_consistency"] != check_c["details"]["per_image_consistency"]
    assert check_a["details"]["border_map"] != check_c["details"]["border_map"]
