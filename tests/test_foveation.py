"""Foveation by depth, input size and padding mode, on layers whose path counts are known by construction."""
import pytest
import torch

from pytest_padbias.foveation import (edge_usage, foveation_by_depth, foveation_by_padding, interior_count,
                                      maps_figure, marginalised_fraction)
from pytest_padbias.result import PadbiasError


def _conv_stack(depth=1, mode="zeros"):
    return torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode=mode) for _ in range(depth)]).eval()


def test_one_conv_counts_the_windows_covering_each_pixel():
    maps = foveation_by_padding(_conv_stack(), (8, 8))
    zeros, circular = maps["zeros"][0], maps["circular"][0]
    assert (zeros[0, 0], zeros[0, 4], zeros[4, 4]) == (4, 6, 9)  # corner, edge, interior windows
    assert torch.all(circular == 9)
    reflect, replicate = maps["reflect"][0], maps["replicate"][0]
    # reflect: row 0 is read by output rows 0 and 1; row 1 also stands in for row -1.
    assert (reflect[0, 4], reflect[1, 4], reflect[4, 4]) == (6, 12, 9)
    # replicate: row 0 is read twice by output row 0 (as itself and as row -1), once by row 1:
    # 3 reads per axis, like an interior pixel, so one stride-1 layer uses every pixel alike.
    assert torch.all(replicate == 9)
    for mode in ("reflect", "replicate", "circular"):
        assert maps[mode][0].sum() == 9 * 64  # every window reads 9 image pixels


def test_padding_is_restored_after_the_comparison():
    model = _conv_stack(2)
    foveation_by_padding(model, (8, 8))
    assert [m.padding_mode for m in model] == ["zeros", "zeros"]


def test_edge_usage_reports_the_outer_and_second_lines():
    counts = foveation_by_padding(_conv_stack(), (16, 16), modes=("reflect",))["reflect"][0]
    usage = edge_usage(counts)
    assert usage["outer line"] == pytest.approx(6 / 9) and usage["second line"] == pytest.approx(12 / 9)


def test_the_periphery_is_used_less_with_every_zero_padded_layer():
    ratios = [r for _layer, r in foveation_by_depth(_conv_stack(4), (32, 32))]
    assert len(ratios) == 4 and all(a > b for a, b in zip(ratios, ratios[1:]))


def test_smaller_inputs_have_a_larger_marginalised_fraction():
    model = _conv_stack(6)
    reference = interior_count(model, reference_size=257)
    assert reference == pytest.approx(9 ** 6, rel=1e-5)  # float32 sums
    fractions = marginalised_fraction(model, [16, 32, 64], reference)
    assert fractions[16] > fractions[32] > fractions[64] > 0


def test_no_conv_is_a_clear_error():
    with pytest.raises(PadbiasError, match="no convolution"):
        foveation_by_depth(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), (8, 8))


def test_the_maps_figure_is_a_png():
    maps = foveation_by_padding(_conv_stack(2), (16, 16))
    figure = maps_figure({m: c for m, (c, _r) in maps.items()}, "title")
    assert figure.png.startswith(b"\x89PNG")
