"""Line artifacts and skewed filters on hand-built layers whose answer is known."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from pytest_padbias.artifacts import (
    artifact_inputs,
    border_score,
    centre_of_mass_offset,
    kernel_skew,
    kernel_skew_figure,
    line_artifact_figure,
    line_artifacts,
    skew_of_kernel,
    skew_summary,
)
from pytest_padbias.result import PadbiasError

SYMMETRIC = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])


def box_filter(padding_mode="zeros", channels=1, bias=None):
    conv = nn.Conv2d(channels, 1, 3, padding=1, padding_mode=padding_mode, bias=bias is not None)
    nn.init.constant_(conv.weight, 1.0)
    if bias is not None:
        nn.init.constant_(conv.bias, bias)
    return conv


# --------------------------------------------------------------------------- line artifacts


def test_zero_padded_box_filter_on_a_constant_input_has_border_lines():
    model = nn.Sequential(box_filter("zeros"))
    result = line_artifacts(model, (16, 16), inputs={"ones": torch.ones(1, 1, 16, 16)})
    layer = result.layers[0]
    np.testing.assert_allclose(layer.responses["ones"][0], [4] + [6] * 14 + [4])
    score = layer.scores["ones"]
    # Interior 9; the ring's 56 edge cells read 6 and its 4 corners 4.
    assert score.score == pytest.approx((56 * 3 + 4 * 5) / 60 / 9)
    assert score.sides["top"] == pytest.approx((92 / 16 - 9) / 9)
    assert score.corners == pytest.approx({k: -5 / 9 for k in ("top_left", "top_right", "bottom_left", "bottom_right")})
    assert score.z > 100  # a flat interior: any border deviation is far outside it


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_padding_that_continues_the_input_has_no_artifact_on_a_constant_input(mode):
    model = nn.Sequential(box_filter(mode))
    score = line_artifacts(model, (16, 16), inputs={"ones": torch.ones(1, 1, 16, 16)}).layers[0].scores["ones"]
    assert score.score == pytest.approx(0.0, abs=1e-6) and score.z == pytest.approx(0.0, abs=1e-3)


def test_constant_zero_input_shows_artifacts_from_the_second_layer_on():
    # Layer 1 maps the zero image to its bias everywhere; layer 2 then pads that constant.
    model = nn.Sequential(box_filter("zeros", bias=1.0), box_filter("zeros"))
    zero = line_artifacts(model, (12, 12), kinds=("zeros",))
    first, second = (layer.scores["zeros"].score for layer in zero.layers)
    assert first == pytest.approx(0.0) and second > 0.3
    circular = line_artifacts(model, (12, 12), kinds=("zeros",), padding_mode="circular")
    assert all(layer.scores["zeros"].score == pytest.approx(0.0, abs=1e-6) for layer in circular.layers)
    assert all(m.padding_mode == "zeros" for m in model)  # restored


def test_uneven_sides_show_in_the_side_scores():
    # Stride 2 on an even size reads padding at the top and left only.
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False))
    nn.init.constant_(model[0].weight, 1.0)
    score = line_artifacts(model, (16, 16), inputs={"ones": torch.ones(1, 1, 16, 16)}).layers[0].scores["ones"]
    assert score.sides["top"] < 0 and score.sides["left"] < 0
    # The bottom row and right column differ only at the corner that meets a padded side.
    assert score.sides["bottom"] == pytest.approx(score.sides["right"]) == pytest.approx(-3 / 9 / 8)
    assert score.corners["bottom_right"] == pytest.approx(0.0) and score.corners["top_left"] < score.corners["top_right"]


def test_all_kinds_are_averaged_by_image_count():
    model = nn.Sequential(box_filter("zeros", channels=3), nn.ReLU(), box_filter("zeros"))
    result = line_artifacts(model, (20, 20), n_images=2)
    assert result.images == {"random": 2, "zeros": 1, "natural": 2}
    assert [name for name, _score in result.by_depth()] == ["0", "2"]
    layer = result.layers[0]
    expected = (2 * layer.responses["random"] + layer.responses["zeros"] + 2 * layer.responses["natural"]) / 5
    np.testing.assert_allclose(layer.responses["all"], expected, rtol=1e-5)
    json.dumps(result.to_json())


def test_maps_without_interior_are_not_scored_and_bad_names_refused():
    assert border_score(np.ones((2, 5))) is None
    with pytest.raises(PadbiasError, match="no layer"):
        line_artifacts(nn.Sequential(box_filter()), (8, 8), kinds=("zeros",), layers=["nope"])
    with pytest.raises(PadbiasError, match="input kind 'noise' is not known"):
        artifact_inputs((8, 8), kinds=("noise",))


def test_line_artifact_figure_renders_zero_beside_mirror():
    model = nn.Sequential(*[box_filter("zeros", channels=3 if i == 0 else 1) for i in range(10)])
    zero = line_artifacts(model, (16, 16), kinds=("random",), n_images=2)
    mirror = line_artifacts(model, (16, 16), kinds=("random",), n_images=2, padding_mode="reflect")
    figure = line_artifact_figure([zero, mirror], kind="random", max_layers=4)
    assert figure.png.startswith(b"\x89PNG") and figure.title.endswith("own padding vs reflect padding")


# --------------------------------------------------------------------------- skewed filters


def test_symmetric_kernel_has_no_skew():
    skew = skew_of_kernel("sym", SYMMETRIC[None, None])
    assert skew.score == 0 and skew.com_offset == (0.0, 0.0)
    assert skew.top_bottom == 0 and skew.left_right == 0


@pytest.mark.parametrize("shift, sign", [((1, 1), (1, 1)), ((-1, 0), (-1, 0)), ((0, -1), (0, -1))])
def test_shifted_kernel_skews_towards_its_mass(shift, sign):
    big = np.zeros((5, 5))
    big[1:4, 1:4] = SYMMETRIC
    kernel = np.roll(big, shift, axis=(0, 1))[1:4, 1:4]  # the blob moved, then cropped to 3x3
    skew = skew_of_kernel("shifted", np.stack([kernel, kernel])[:, None])  # two out channels, same kernel
    assert skew.score > 0
    assert tuple(np.sign(skew.com_offset)) == sign
    # top minus bottom is positive when the mass sits high
    assert np.sign(skew.top_bottom) == -sign[0] and np.sign(skew.left_right) == -sign[1]


def test_mean_is_over_input_and_output_channels_and_abs_kernel_is_separate():
    weight = np.zeros((2, 3, 3, 3))
    weight[0, :, 1, 2] = 1.0   # right
    weight[1, :, 1, 0] = -1.0  # left, negative: the mean cancels, the mean |w| does not
    skew = skew_of_kernel("mixed", weight)
    np.testing.assert_allclose(skew.mean_kernel[1], [-0.5, 0, 0.5])
    assert skew.abs_com_offset == pytest.approx((0.0, 0.0))
    assert centre_of_mass_offset(np.zeros((3, 3))) == (0.0, 0.0)


def test_uneven_flag_comes_from_the_padding_trace():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    at_even = kernel_skew(model, (32, 32))
    assert [(s.layer, s.strided, s.uneven) for s in at_even] == [("0", True, True), ("2", False, False)]  # 1x1 skipped
    assert at_even[0].pad_read == (1, 0, 1, 0)
    assert kernel_skew(model, (33, 33))[0].uneven is False
    assert [s.uneven for s in kernel_skew(model, uneven_layers={"2"})] == [False, True]
    assert kernel_skew(model)[0].uneven is None
    summary = skew_summary(at_even)
    assert summary["strided_layers"] == 1 and summary["uneven_strided"] == 1 and summary["mean_score_even_strided"] is None
    json.dumps([s.to_json() for s in at_even])


def test_kernel_skew_figure_renders():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    figure = kernel_skew_figure(kernel_skew(model, (32, 32)))
    assert figure.png.startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        kernel_skew_figure([])
