"""Shift robustness: views, consistency, the border-shift map, the hypothesis search and the
``shift_robust`` gate, on hand-built models whose right answer is known by construction,
and on the real MobileNetV2 for the search."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import currently_in_test_context, given, settings
from hypothesis import strategies as st

# pytester's in-process runs drop modules first imported during a run; extension modules
# (numpy's, matplotlib's) cannot be imported twice, so import what the gate loads lazily now.
import matplotlib.figure  # noqa: F401
import skimage.io  # noqa: F401  (skimage.data loads it lazily, with scipy.linalg and numpy.fft)
import pytest_padbias.shift_figures  # noqa: F401
from pytest_padbias.result import GateContext, PadbiasError
from pytest_padbias.shift_gate import search_flipping_shift, shift_robust_check
from pytest_padbias.border_shifts import border_shift_map
from pytest_padbias.shifts import (
    shift_consistency,
    shift_robust_arguments,
    shifted_views,
)
from pytest_padbias.strategies import shifts


# --------------------------------------------------------------------------- hand-built models
class CircularNet(nn.Module):
    """Stride-1 convolutions with circular padding, then a global mean: every feature map
    is an exact circular shift of the unshifted one, so the output cannot change."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.b = nn.Conv2d(8, 6, 5, padding=2, padding_mode="circular")

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean(dim=(2, 3))


class ColumnReader(nn.Module):
    """Class 1 when channel 0 is bright in column ``col``, else class 0: the prediction
    depends on an absolute position."""

    def __init__(self, col=10):
        super().__init__()
        self.col = col

    def forward(self, x):
        seen = x[:, 0, :, self.col].mean(dim=1)
        return 10 * torch.stack([torch.full_like(seen, 0.5), seen], dim=1)


class TopLeftQuadrant(nn.Module):
    """Sees only the top-left quadrant: class k = the brightest channel there, class 3 =
    "nothing seen" (a constant logit that wins over an empty quadrant)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        seen = x[:, :3, : h // 2, : w // 2].mean(dim=(2, 3))
        return 10 * torch.cat([seen, torch.full_like(seen[:, :1], 0.05)], dim=1)


class ChannelMean(nn.Module):
    """Global mean colour -> class: invariant to shifts of solid-colour images."""

    def forward(self, x):
        return 10 * x.mean(dim=(2, 3))


def column_images(n=3, size=24):
    """Channel 0 bright on columns 7..13 of every row, noise elsewhere: ColumnReader
    (column 10) keeps class 1 exactly while |dx| <= 3, whatever dy, under reflect fill."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, 0] = 0.0
    x[:, 0, :, 7:14] = 1.0
    return x


def column_score(x):
    """A "detector confidence" in [0, 1]: how bright channel 0 is in column 10."""
    return x[:, 0, :, 10].mean(dim=1).clamp(min=0)


def solid_images():
    """Image k is a solid colour with channel k = 1."""
    return torch.eye(3).view(3, 3, 1, 1).expand(3, 3, 32, 32).clone()


def gate_context(model, images, **kw):
    base = dict(model=model, images=images, input_size=tuple(images.shape[-2:]), device="cpu", seed=0,
                max_examples=30, derandomize=True)
    return GateContext(**{**base, **kw})


# --------------------------------------------------------------------------- views
PADDING_OF_FILL = {"zeros": "constant", "reflect": "reflect", "edge": "replicate", "circular": "circular"}


@settings(max_examples=40, deadline=None)
@given(shift=shifts(6), fill=st.sampled_from(sorted(PADDING_OF_FILL)))
def test_shifted_views_equal_padding_then_cropping(shift, fill):
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    dy, dx = shift
    padded = F.pad(x, (6, 6, 6, 6), mode=PADDING_OF_FILL[fill])
    expected = padded[:, :, 6 - dy : 6 - dy + 9, 6 - dx : 6 - dx + 11]
    assert torch.equal(shifted_views(x, [shift, shift], fill, index=[0, 1]), expected)


def test_a_smaller_canvas_with_negative_offsets_is_a_plain_crop():
    x = torch.randn(2, 3, 20, 20)
    views = shifted_views(x, [(-3, -5), (0, -8)], "zeros", index=[1, 0], size=(12, 12))
    assert torch.equal(views[0], x[1, :, 3:15, 5:17]) and torch.equal(views[1], x[0, :, 0:12, 8:20])


def test_reflect_fill_folds_shifts_longer_than_the_content():
    row = torch.arange(4.0).view(1, 1, 1, 4)
    view = shifted_views(row, [(0, 7)], "reflect", size=(1, 12))
    # canvas x shows source x - 7, reflected without repeating the edge: period 6
    assert view.flatten().tolist() == [1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]


# --------------------------------------------------------------------------- consistency
def test_circular_net_is_exactly_invariant_to_circular_shifts():
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = shift_consistency(CircularNet().eval(), images, mode="translate", fill="circular", max_shift=12, views_per_image=8)
    assert result.value == 1.0 and result.pairs == 6 * 28 and float(result) == 1.0


def test_a_model_reading_absolute_position_is_not_consistent():
    torch.manual_seed(0)
    flatten_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    translated = shift_consistency(flatten_linear, images, mode="translate", fill="circular", max_shift=8)
    assert translated.value < 0.6
    cropped = shift_consistency(nn.Sequential(nn.Flatten(), nn.Linear(3 * 24 * 24, 10)).eval(), images, mode="crop", max_shift=4)
    assert cropped.value < 0.6


def test_column_reader_consistency_matches_its_construction():
    # class 1 iff |dx| <= 3: over displacements uniform in [-10, 10]^2 two views agree
    # with probability near (7/21)^2 + (14/21)^2 = 5/9
    result = shift_consistency(ColumnReader(), column_images(), mode="translate", fill="reflect", max_shift=10, views_per_image=12)
    assert 0.35 < result.value < 0.75


def test_consistency_of_photographs_uses_crops_of_a_larger_rendering():
    photos = [np.full((40, 60, 3), 200, np.uint8), np.full((50, 50), 30, np.uint8)]
    result = shift_consistency(ChannelMean(), photos, max_shift=3, view_size=(16, 16), views_per_image=5)
    assert result.value == 1.0 and result.mode == "crop" and result.pairs == 2 * 10 and result.fill is None


def test_consistency_is_reproducible_from_the_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5)).eval()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    runs = [shift_consistency(model, images, mode="translate", max_shift=4, seed=s).per_image for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


# --------------------------------------------------------------------------- border-shift map
def test_top_left_quadrant_model_gives_the_expected_border_pattern():
    """Content at half the canvas, pushed by its half margin (8 px of 32): it leaves the
    top-left quadrant toward the south and the east, so only those positions change."""
    bmap = border_shift_map(TopLeftQuadrant(), solid_images(), content_scale=0.5, fill="zeros", labels=[0, 1, 2])
    assert bmap.offsets[0][0] == (-8, -8) and bmap.offsets[2][2] == (8, 8)
    expected = np.array([[0, 0, 1], [0, 0, 1], [1, 1, 1]], float)
    np.testing.assert_array_equal(bmap.change_rate, expected)
    np.testing.assert_array_equal(bmap.accuracy, 1 - expected)
    assert bmap.prob_drop[0, 0] < 0 < bmap.prob_drop[2, 2]  # more of the content seen at north-west
    doc = bmap.to_json()
    assert json.loads(json.dumps(doc))["change_rate"] == expected.tolist()
    assert doc["offset_map"]["dy"] == [-8, -4, 0, 4, 8]


def test_fraction_scales_the_push_and_max_shift_overrides_the_margin():
    half = border_shift_map(TopLeftQuadrant(), solid_images(), fraction=0.5, grid=3)
    assert half.offsets[0][0] == (-4, -4)
    full_size = border_shift_map(ColumnReader(), column_images(), content_scale=1.0, max_shift=4, fill="reflect", grid=3)
    np.testing.assert_array_equal(full_size.change_rate, [[1, 0, 1], [1, 0, 1], [1, 0, 1]])


def test_score_function_judges_a_view_by_half_the_centred_score():
    bmap = border_shift_map(None, column_images(), content_scale=1.0, max_shift=4, fill="reflect", grid=3, score_fn=column_score)
    np.testing.assert_array_equal(bmap.change_rate, [[1, 0, 1], [1, 0, 1], [1, 0, 1]])
    np.testing.assert_allclose(bmap.prob_drop, [[1, 0, 1], [1, 0, 1], [1, 0, 1]], atol=1e-6)
    consistency = shift_consistency(None, column_images(), mode="translate", max_shift=10, score_fn=column_score)
    assert 0.3 < consistency.value < 0.8


# --------------------------------------------------------------------------- hypothesis search
def test_shrinking_finds_the_known_minimal_flipping_shift():
    search = search_flipping_shift(ColumnReader(), column_images(), 10, fill="reflect", max_examples=30, derandomize=True)
    flip = search.smallest_flip
    assert flip is not None and flip.changed and (flip.dy, abs(flip.dx)) == (0, 4)
    assert (flip.before, flip.after) == (1.0, 0.0) and flip.image == 0
    assert search.worst.drop >= flip.drop > 0.5


def test_search_is_reproducible_from_its_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5)).eval()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    a, b = (search_flipping_shift(model, images, 5, max_examples=15, seed=11) for _ in range(2))
    assert a == b and a.smallest_flip is not None


def test_search_finds_nothing_for_an_invariant_model():
    search = search_flipping_shift(ChannelMean(), solid_images(), 6, fill="edge", max_examples=15, derandomize=True)
    assert search.smallest_flip is None and abs(search.worst.drop) < 1e-6


# --------------------------------------------------------------------------- the gate
def test_gate_passes_for_an_invariant_model_with_plain_json_and_figures():
    result = shift_robust_check(gate_context(ChannelMean(), solid_images(), categories=["red", "green", "blue"]), 0.99, fill="edge")
    assert result.passed and result.value == 1.0 and result.limit == 0.99 and result.message == ""
    assert result.details["max_shift"] == 2 and result.details["smallest_flip"] is None  # 32 // 14
    assert result.details["worst_shift"]["before_label"] in ("red", "green", "blue")
    assert json.loads(json.dumps(result.to_json())) == result.to_json()
    assert result.summary.startswith("consistency 100.0% >= 99.0% under shifts up to 2 px (edge fill)")
    assert len(result.figures) == 3 and all(f.png.startswith(b"\x89PNG") and f.title for f in result.figures)


def test_gate_fails_with_the_size_of_the_failure_and_the_minimal_flip():
    result = shift_robust_check(gate_context(ColumnReader(), column_images()), 0.9, max_shift=10)
    assert not result.passed and result.value < 0.9 and result.check == "shift_robust"
    assert "shift consistency" in result.message and "is below the threshold 90.0%" in result.message
    assert "smallest flipping shift dy=+0, dx=" in result.message and "class 1 -> class 0" in result.message
    flip = result.details["smallest_flip"]
    assert (flip["dy"], abs(flip["dx"])) == (0, 4) and flip["changed"] is True
    border = result.details["border_map"]
    assert border["change_rate"] == [[1.0, 0.0, 1.0]] * 3 and result.details["worst_position"] in ("west", "east", "north-west")


def test_gate_with_a_score_function_reports_scores():
    result = shift_robust_check(gate_context(None, column_images(), score_fn=column_score), 0.9, max_shift=10)
    assert not result.passed and "detection outcomes" in result.message
    flip = result.details["smallest_flip"]
    assert (flip["dy"], abs(flip["dx"])) == (0, 4) and (flip["before_label"], flip["after_label"]) == ("score 1.000", "score 0.000")


@settings(max_examples=2, deadline=None, database=None)
@given(st.integers(0, 1))
def test_gate_runs_inside_a_running_hypothesis_test(_k):
    # hypothesis forbids a @given inside a @given (HealthCheck.nested_given): the gate's
    # search must leave the outer test's context
    assert currently_in_test_context()
    result = shift_robust_check(gate_context(ColumnReader(), column_images(), max_examples=20), 0.9, max_shift=10)
    assert abs(result.details["smallest_flip"]["dx"]) == 4


@pytest.mark.parametrize("kwargs, words", [
    (dict(threshold=0), "threshold=0 "),
    (dict(threshold=1.5), "threshold=1.5 "),
    (dict(threshold=float("nan")), "threshold=nan"),
    (dict(threshold="0.9"), "threshold='0.9'"),
    (dict(threshold=True), "threshold=True"),
    (dict(threshold=0.9, max_shift=0), "max_shift=0 "),
    (dict(threshold=0.9, max_shift=-3), "max_shift=-3 "),
    (dict(threshold=0.9, max_shift=2.5), "max_shift=2.5 "),
    (dict(threshold=0.9, fill="wrap"), "fill='wrap' is not accepted; the fills are zeros, reflect, edge"),
])
def test_bad_gate_arguments_are_one_clear_error(kwargs, words):
    with pytest.raises(PadbiasError, match="^shift_robust ") as info:
        shift_robust_arguments(**kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_gate_arguments_are_normalised_to_plain_types_without_torch():
    assert shift_robust_arguments(np.float64(0.85), np.int64(4), "edge") == {"threshold": 0.85, "max_shift": 4, "fill": "edge"}
    code = ("import sys; from pytest_padbias.shifts import shift_robust_arguments; import pytest_padbias.strategies;"
            "shift_robust_arguments(1); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_inputs_are_one_clear_error_each():
    images = column_images(size=16)
    with pytest.raises(PadbiasError, match="max_shift=16 is too large for 16x16 images; .*at most 15 pixels"):
        shift_robust_check(gate_context(ColumnReader(), images), 0.9, max_shift=16)
    with pytest.raises(PadbiasError, match="fill='wrap' is not a fill mode; accepted: zeros, reflect, edge, circular"):
        shift_consistency(ColumnReader(), images, fill="wrap", mode="translate")
    deep = nn.Sequential(nn.Conv2d(3, 4, 7, stride=2), nn.Conv2d(4, 4, 7, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(PadbiasError, match="the model cannot evaluate 16x16 views .*smaller than the model accepts"):
        shift_robust_check(gate_context(deep, images), 0.9)
    with pytest.raises(PadbiasError, match=r"the model returned shape \(6, 4, 16, 16\), not \(N, classes\) logits; .*padbias_score"):
        shift_consistency(nn.Conv2d(3, 4, 3, padding=1), images, mode="translate", views_per_image=2)
    with pytest.raises(PadbiasError, match=r"returned shape \(9, 2\); it must return one score per image"):
        shift_consistency(None, images, mode="translate", views_per_image=2, score_fn=lambda x: x[:, :2, 0, 0])
    with pytest.raises(PadbiasError, match="negative score"):
        shift_consistency(None, images, mode="translate", views_per_image=2, score_fn=lambda x: -x.mean(dim=(1, 2, 3)) - 1)
    with pytest.raises(PadbiasError, match="photographs as H x W x 3 uint8 arrays; got list"):
        shift_consistency(ColumnReader(), [1, 2, 3])
    with pytest.raises(PadbiasError, match="content_scale=1.0 leaves no free margin"):
        border_shift_map(ColumnReader(), images, content_scale=1.0)


# --------------------------------------------------------------------------- the real MobileNetV2
@pytest.fixture(scope="module")
def mobilenet():
    from pytest_padbias.models import load_model

    return load_model("mobilenet_v2")


@pytest.fixture
def one_thread():
    """On 2 cores shared with other jobs, two intra-op threads make each batch-of-one
    forward of the search wait for a busy core (10-30x slower); one thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mobilenet_v2_search_is_reproducible_and_labelled(mobilenet, one_thread):
    from pytest_padbias.images import natural_images

    images = natural_images(3, (96, 96))
    a, b = (search_flipping_shift(mobilenet.module, images, 7, max_examples=10, derandomize=True) for _ in range(2))
    assert a == b and 0 < a.evaluated
    result = shift_robust_check(gate_context(mobilenet.module, images, max_examples=10, categories=mobilenet.categories), 0.5)
    worst = result.details["worst_shift"]
    assert worst["before_label"] in mobilenet.categories and worst["after_label"] in mobilenet.categories
    assert max(abs(worst["dy"]), abs(worst["dx"])) <= result.details["max_shift"] == 7  # 96 / 14
    assert 0.0 <= result.value <= 1.0 and math.isfinite(worst["drop"])
    if result.details["smallest_flip"]:
        assert result.details["smallest_flip"]["before"] != result.details["smallest_flip"]["after"]


# --------------------------------------------------------------------------- through the plugin
SHIFT_MODELS = """
import torch, torch.nn as nn

class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.arange(5.0))

    def forward(self, x):
        return self.logits.expand(x.shape[0], 5)

def constant():
    return Constant()

def position_reader():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
"""

SHIFT_TEST = """
from pytest_padbias import padbias

@padbias.shift_robust(0.95, max_shift=4)
def test_shift(padbias_model):
    pass
"""


@pytest.mark.parametrize("factory, outcome", [("constant", "passed"), ("position_reader", "failed")])
def test_gate_through_the_plugin(pytester, factory, outcome):
    pytester.makepyfile(shiftmodels=SHIFT_MODELS, test_shift=SHIFT_TEST)
    out = pytester.path / "run.json"
    result = pytester.runpytest(f"--padbias-model=shiftmodels.py:{factory}", "--padbias-input-size=32", "--padbias-images=2",
                                "--padbias-max-examples=5", f"--padbias-json={out}", "-p", "no:cacheprovider")
    result.assert_outcomes(**{outcome: 1})
    (check,) = json.loads(out.read_text())["tests"][0]["checks"]
    assert check["check"] == "shift_robust" and check["limit"] == 0.95 and check["details"]["max_shift"] == 4
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*@padbias.shift_robust failed: shift consistency *% is below the threshold 95.0%*"])
