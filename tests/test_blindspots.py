"""Stimulus detectability maps and the no_blind_spot gate, on models whose blind spots
are known by construction."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

# pytester's in-process runs drop modules first imported during a run; extension
# modules cannot be imported twice, so import what the gate loads lazily now.
import matplotlib.collections  # noqa: F401
import matplotlib.figure  # noqa: F401
import scipy.ndimage  # noqa: F401
import skimage.data  # noqa: F401
import torchvision  # noqa: F401
import pytest_padbias.models  # noqa: F401
from pytest_padbias.blindspot_gate import _even_size_hint, no_blind_spot_check
from pytest_padbias.blindspot_figures import detectability_figure
from pytest_padbias.blindspots import (
    detectability_map,
    find_blind_spots,
    mitigation_maps,
    no_blind_spot_arguments,
    placements,
)
from pytest_padbias.result import GateContext, PadbiasError

SIZE = (32, 32)
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # pixels go in as they are
WHITE = np.ones((8, 8, 3), dtype=np.float32)


class MaskedEnergy(nn.Module):
    """Sees only the rows above ``visible_rows``: scores the energy of the input's
    difference from the grey background there, relative to a full 8x8 white square.

    A white 8x8 stimulus placed with its top at row t is more than half hidden once
    t > visible_rows - 4, so with ratio 0.5 exactly those placements are a blind spot.
    """

    def __init__(self, visible_rows=24, classifier=False):
        super().__init__()
        self.visible_rows = visible_rows
        self.classifier = classifier

    def forward(self, x):
        energy = ((x[:, :, : self.visible_rows] - 0.5) ** 2).sum(dim=(1, 2, 3)) / (3 * 64 * 0.25)
        if not self.classifier:
            return energy
        # Class 1 wins (p ~ 1) while more than half the square is visible.
        return torch.stack([torch.full_like(energy, 0.5), energy], dim=1) * 40.0


class CircularDetector(nn.Module):
    """Circular convs and a global max: exactly invariant to where the stimulus is."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        )
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.features(x).amax(dim=(2, 3)))


class ZeroPaddedSmoother(nn.Module):
    """Three 5x5 mean filters with zero padding, then the peak above the grey level.

    Zero padding darkens the outer pixels, so a small bright square in a corner no
    longer rises above the background: a blind spot that reflect padding removes.
    """

    def __init__(self):
        super().__init__()
        convs = [nn.Conv2d(3, 1, 5, padding=2, bias=False)] + [nn.Conv2d(1, 1, 5, padding=2, bias=False) for _ in range(2)]
        for conv in convs:
            nn.init.constant_(conv.weight, 1.0 / conv.weight[0].numel())
        self.convs = nn.Sequential(*convs)

    def forward(self, x):
        return torch.relu(self.convs(x) - 0.5).amax(dim=(1, 2, 3))


def gate_context(model, score_fn=None, size=SIZE, **extras):
    return GateContext(model=model, images=None, input_size=size, device="cpu", seed=0, score_fn=score_fn, extras=extras)


# --------------------------------------------------------------------------- argument validation


def test_arguments_defaults_are_normalised():
    assert no_blind_spot_arguments() == {"ratio": 0.5, "stride": None, "stimulus": None, "min_area": 1}
    assert no_blind_spot_arguments(0.3, 4, WHITE, 2)["stride"] == 4


@pytest.mark.parametrize("kwargs, words", [
    ({"ratio": 0}, "ratio=0"), ({"ratio": 1}, "ratio=1"), ({"ratio": 1.5}, "strictly between 0 and 1"),
    ({"ratio": "0.5"}, "ratio='0.5'"), ({"ratio": True}, "ratio=True"),
    ({"stride": 0}, "stride=0"), ({"stride": -2}, "positive integer"), ({"stride": 2.5}, "stride=2.5"), ({"stride": True}, "stride=True"),
    ({"min_area": 0}, "min_area=0"), ({"min_area": 1.5}, "grid cells"),
    ({"stimulus": "missing.png"}, "does not exist"), ({"stimulus": "notes.txt"}, "not an image file name"),
    ({"stimulus": [1, 2, 3]}, "shape (3,)"), ({"stimulus": object()}, "is not accepted"),
])
def test_bad_arguments_get_one_clear_sentence(kwargs, words):
    with pytest.raises(PadbiasError) as info:
        no_blind_spot_arguments(**kwargs)
    assert words in str(info.value)
    assert str(info.value).count(". ") == 0  # one sentence


def test_argument_check_does_not_import_torch():
    code = (
        "import sys; import pytest_padbias.blindspots as b; b.no_blind_spot_arguments(0.4, 3, [[0.5]], 2); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


@pytest.mark.parametrize("kwargs, words", [
    ({"stimulus": np.ones((40, 8, 3))}, "larger than the 32x32 input"),
    ({"stimulus": np.ones((8, 8, 2))}, "has 2 channels but the model takes 3"),
    ({"stimulus": np.full((8, 8, 3), 2.5)}, "give pixel values"),
    ({"background": np.ones((16, 16, 3))}, "background is 16x16 pixels but the input size is 32x32"),
    ({"background": "blue"}, "background='blue' is not accepted"),
    ({"stride": 33}, "stride=33 is larger than the 32x32 input"),
    ({"ratio": 1.2}, "ratio=1.2"),
])
def test_bad_sweep_inputs_are_refused(kwargs, words):
    model = MaskedEnergy()
    kwargs = {"stimulus": WHITE, **kwargs}
    with pytest.raises(PadbiasError) as info:
        detectability_map(model, SIZE, score_fn=model, **PLAIN, **kwargs)
    assert words in str(info.value)


def test_a_score_fn_must_give_one_non_negative_score_per_image():
    with pytest.raises(PadbiasError, match="one score per image"):
        detectability_map(MaskedEnergy(), SIZE, stimulus=WHITE, score_fn=lambda x: torch.zeros(len(x) + 1), **PLAIN)
    with pytest.raises(PadbiasError, match="non-negative"):
        detectability_map(MaskedEnergy(), SIZE, stimulus=WHITE, score_fn=lambda x: -torch.ones(len(x)), **PLAIN)
    with pytest.raises(PadbiasError, match="not \\[N, classes\\] logits; give a score_fn"):
        detectability_map(MaskedEnergy(), SIZE, stimulus=WHITE, **PLAIN)  # returns [N], no score_fn


# --------------------------------------------------------------------------- the map


def test_placements_reach_both_borders():
    assert placements(32, 8, 3).tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert placements(32, 8, 5).tolist() == [0, 5, 10, 15, 20, 24]
    assert placements(8, 8, 3).tolist() == [0]


def test_masked_rows_are_exactly_the_blind_spot():
    model = MaskedEnergy()
    result = detectability_map(model, SIZE, stimulus=WHITE, stride=3, score_fn=model, **PLAIN)
    assert result.scores.shape == (9, 9)
    assert result.median == pytest.approx(1.0)
    # Tops 21 and 24 leave 3/8 and 0/8 of the square visible.
    assert [r.box for r in result.regions] == [(21, 0, 32, 32)]
    assert result.regions[0].borders == ("bottom",)
    assert result.regions[0].cells == 18
    assert result.min_median_ratio == pytest.approx(0.0)


def test_classifier_scores_the_class_of_the_centred_stimulus():
    model = MaskedEnergy(classifier=True)
    result = detectability_map(model, SIZE, stimulus=WHITE, stride=3, categories=["background", "square"], **PLAIN)
    assert result.target_class == 1 and result.target_name == "square"
    assert result.centred_score > 0.99
    assert [r.box for r in result.regions] == [(21, 0, 32, 32)]


def test_min_area_drops_small_regions():
    scores = np.ones((5, 5))
    scores[0, 0] = 0.1
    scores[4, 1:4] = 0.2
    regions = find_blind_spots(scores, np.arange(5) * 4, np.arange(5) * 4, (8, 8), ratio=0.5, min_area=2)
    assert [(r.box, r.cells, r.borders) for r in regions] == [((16, 4, 24, 20), 3, ("bottom",))]


def test_translation_invariant_circular_model_has_no_blind_spot():
    model = CircularDetector().eval()
    result = detectability_map(model, SIZE, stimulus=WHITE, stride=4)
    assert result.regions == []
    assert result.min_median_ratio == pytest.approx(1.0, abs=1e-5)


def test_batching_changes_nothing_and_uses_large_batches():
    model = MaskedEnergy()
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    one = detectability_map(model, SIZE, stimulus=WHITE, stride=3, score_fn=model, batch_size=1, **PLAIN)
    seen.clear()
    many = detectability_map(model, SIZE, stimulus=WHITE, stride=3, score_fn=model, batch_size=32, **PLAIN)
    np.testing.assert_allclose(one.scores, many.scores, rtol=1e-6)
    assert seen == [1, 32, 32, 17]  # the centred stimulus, then 81 placements


def test_reflect_padding_removes_the_corner_blind_spots_of_zero_padding():
    model = ZeroPaddedSmoother()
    maps = mitigation_maps(model, SIZE, stimulus=np.ones((4, 4, 3)), stride=4, score_fn=model, **PLAIN)
    assert list(maps) == ["zeros", "reflect", "replicate", "circular"]
    corners = sorted(r.borders for r in maps["zeros"].regions)
    assert corners == [("bottom", "left"), ("bottom", "right"), ("top", "left"), ("top", "right")]
    for mode in ("reflect", "replicate", "circular"):
        assert maps[mode].regions == [] and maps[mode].min_median_ratio == pytest.approx(1.0)
    assert all(conv.padding_mode == "zeros" for conv in model.convs)  # restored


def test_default_stimulus_and_image_file_stimulus(tmp_path):
    from PIL import Image

    model = CircularDetector().eval()
    default = detectability_map(model, SIZE, stride=8)
    assert default.stimulus_size == (11, 11)  # a third of the input
    path = tmp_path / "square.png"
    Image.fromarray(np.full((6, 5), 255, dtype=np.uint8)).save(path)  # grey file, colour model
    from_file = detectability_map(model, SIZE, stimulus=str(path), stride=8)
    assert from_file.stimulus_size == (6, 5)
    natural = detectability_map(model, SIZE, stimulus=WHITE, stride=8, background="natural")
    assert natural.preview.shape == (32, 32, 3)


def test_figure_renders_with_an_unusable_mode():
    model = MaskedEnergy()
    own = detectability_map(model, SIZE, stimulus=WHITE, stride=3, score_fn=model, **PLAIN)
    figure = detectability_figure([own, PadbiasError("reflect needs larger maps")])
    assert figure.png.startswith(b"\x89PNG") and "detectability" in figure.title


# --------------------------------------------------------------------------- the gate


def test_gate_finds_the_masked_region_and_says_where():
    model = MaskedEnergy()
    result = no_blind_spot_check(gate_context(model, score_fn=model, **PLAIN), ratio=0.5, stride=3, stimulus=WHITE)
    assert not result.passed
    assert result.value == pytest.approx(0.0) and result.limit == 0.5
    assert result.details["regions"] == [{"box": [21, 0, 32, 32], "cells": 18, "min_ratio": 0.0, "borders": ["bottom"]}]
    assert "rows 21-32, cols 0-32 (bottom border" in result.message
    assert "Retrain with padding_mode='reflect'" in result.message  # it has no padding to switch
    json.dumps(result.to_json())  # plain JSON types
    assert len(result.figures) == 1 and result.figures[0].png.startswith(b"\x89PNG")


def test_gate_suggests_reflect_padding_when_it_removes_the_blind_spots():
    model = ZeroPaddedSmoother()
    result = no_blind_spot_check(gate_context(model, score_fn=model, **PLAIN), stride=4, stimulus=np.ones((4, 4, 3)))
    assert not result.passed and len(result.details["regions"]) == 4
    assert "with reflect padding the minimum is 1.00 of the median and 0 region(s) remain" in result.message
    assert "Switch the convolutions to padding_mode='reflect'" in result.message


def test_failure_message_suggests_an_even_input_size_only_when_padding_is_uneven():
    strided = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    assert _even_size_hint(strided, (32, 32)) == ", or an input size at which every layer pads evenly (e.g. 33x33 instead of 32x32)"
    assert _even_size_hint(strided, (33, 33)) == ""
    assert _even_size_hint(MaskedEnergy(), (32, 32)) == ""  # no conv to trace: no hint


def test_gate_passes_a_translation_invariant_model():
    result = no_blind_spot_check(gate_context(CircularDetector().eval()), stride=4, stimulus=WHITE)
    assert result.passed and result.message == ""
    assert result.value == pytest.approx(1.0, abs=1e-5)
    assert result.details["reflect"]["regions"] == []
    assert "limit 0.5" in result.summary


def test_gate_min_area_ignores_regions_smaller_than_it():
    model = MaskedEnergy()
    ctx = gate_context(model, score_fn=model, **PLAIN)
    assert not no_blind_spot_check(ctx, stride=3, stimulus=WHITE, min_area=18).passed
    assert no_blind_spot_check(ctx, stride=3, stimulus=WHITE, min_area=19).passed


# --------------------------------------------------------------------------- through pytest


GATE_MODELS = """
import torch
import torch.nn as nn


class Masked(nn.Module):
    # A classifier that cannot see the bottom quarter of the input.
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)  # tells the plugin the model takes 3 channels
        grey = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
        self.register_buffer("grey", grey.view(1, 3, 1, 1))

    def forward(self, x):
        # A white 8x8 square gives energy 0.408 when fully visible; class 1 needs 60% of it.
        energy = ((x[:, :, :24] - self.grey) ** 2).mean(dim=(1, 2, 3))
        return torch.stack([torch.full_like(energy, 0.245), energy], 1) * 1000


def masked():
    return Masked()


def circular():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3))
"""

GATED = """
import numpy as np
from pytest_padbias import padbias

@padbias.no_blind_spot(stride=4, stimulus=np.ones((8, 8, 3)))
def test_gated(padbias_model):
    pass
"""


@pytest.mark.parametrize("factory, outcome", [("circular", "passed"), ("masked", "failed")])
def test_marker_passes_and_fails_through_pytest(pytester, factory, outcome):
    pytester.makepyfile(gate_models=GATE_MODELS, test_gated=GATED)
    result = pytester.runpytest(
        f"--padbias-model=gate_models.py:{factory}", "--padbias-weights=none", "--padbias-input-size=32",
        "--padbias-images=1", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*@padbias.no_blind_spot failed: blind spot*rows 20-32, cols 0-32 (bottom border*"])


def test_marker_with_a_bad_ratio_is_a_usage_error(pytester):
    pytester.makepyfile(test_bad="""
from pytest_padbias import padbias

@padbias.no_blind_spot(ratio=2)
def test_bad():
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no_blind_spot: ratio=2 is not accepted; give a number strictly between 0 and 1*"])
