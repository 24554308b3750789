"""The padding trace on models whose answer is known by construction."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_padbias.geometry import (
    even_sizes, foveation_map, is_even, nearest_even_sizes, trace_padding, uneven_layers,
)
from pytest_padbias.result import PadbiasError


def conv_s2(k=3, p=1, **kw):
    return nn.Sequential(nn.Conv2d(3, 4, k, stride=2, padding=p, **kw))


def only(records):
    assert len(records) == 1, records
    return records[0]


def test_stride2_3x3_even_size_reads_top_padding_only():
    r = only(trace_padding(conv_s2(), (8, 8)))
    # Windows start at padded rows 0,2,4,6 and end at row 8 = the last input row: the
    # bottom padding row 9 is never read.
    assert r.pad_read == (1, 0, 1, 0)
    assert r.dropped == (0, 0)
    assert r.uneven and r.layer == "0" and r.op == "conv2d"


def test_stride2_3x3_odd_size_is_even():
    r = only(trace_padding(conv_s2(), (9, 9)))
    assert r.pad_read == (1, 1, 1, 1) and r.dropped == (0, 0) and not r.uneven


def test_non_square_input_checks_each_axis():
    r = only(trace_padding(conv_s2(), (9, 8)))
    assert r.pad_read == (1, 1, 1, 0)
    assert r.input_size == (9, 8) and r.output_size == (5, 4)


def test_strided_1x1_conv_drops_last_row():
    r = only(trace_padding(conv_s2(k=1, p=0), (8, 9)))
    assert r.dropped == (1, 0) and r.pad_read == (0, 0, 0, 0) and r.uneven


def test_maxpool_ceil_mode_reads_implicit_padding():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.MaxPool2d(2, stride=2, ceil_mode=True))
    pool = trace_padding(model, (7, 7))[1]
    # ceil_mode adds a last window over row 6 and one row past the input.
    assert pool.op == "max_pool2d" and pool.output_size == (4, 4)
    assert pool.pad_read == (0, 1, 0, 1) and pool.uneven
    floor = trace_padding(nn.Sequential(nn.Conv2d(3, 3, 1), nn.MaxPool2d(2, stride=2)), (7, 7))[1]
    assert floor.dropped == (1, 1) and floor.output_size == (3, 3)


def test_avg_pool_is_traced():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AvgPool2d(3, stride=2, padding=1))
    assert trace_padding(model, (6, 6))[1].pad_read == (1, 0, 1, 0)


class AsymmetricPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=1, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (2, 0, 1, 1)))  # left 2, right 0, top 1, bottom 1


def test_functional_pad_is_folded_into_the_conv_that_reads_it():
    r = only(trace_padding(AsymmetricPad(), (10, 10)))
    assert r.layer == "conv" and r.pad_read == (1, 1, 2, 0) and r.uneven


def test_same_padding_with_even_kernel_pads_after_the_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 4, padding="same"))
    r = only(trace_padding(model, (10, 10)))
    assert r.pad_read == (1, 2, 1, 2) and r.output_size == (10, 10) and r.uneven


class TFSameConv(nn.Module):
    """timm's Conv2dSame: pad computed from the input size at run time."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=0)

    def forward(self, x):
        ih, iw = x.shape[-2:]
        pad_h = max((-(-ih // 2) - 1) * 2 + 3 - ih, 0)
        pad_w = max((-(-iw // 2) - 1) * 2 + 3 - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self.conv(x)


def test_dynamic_same_padding_follows_the_input_size():
    model = TFSameConv()
    # Even size: total pad 1, all of it after the input (TF style).
    assert only(trace_padding(model, (8, 8))).pad_read == (0, 1, 0, 1)
    # Odd size: total pad 2, one each side: even.
    assert only(trace_padding(model, (9, 9))).pad_read == (1, 1, 1, 1)
    assert only(trace_padding(model, (16, 16))).pad_read == (0, 1, 0, 1)


def test_reflect_padding_mode_is_reported_with_its_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"))
    r = only(trace_padding(model, (8, 8)))
    assert r.mode == "reflect" and r.pad_read == (1, 0, 1, 0)


def test_conv1d_runs_along_the_width():
    model = nn.Sequential(nn.Conv1d(3, 4, 3, stride=2, padding=1))
    model_in = trace_padding(model, (1, 8))
    assert only(model_in).pad_read == (0, 0, 1, 0)


def test_dilated_conv_uses_its_effective_span():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2))
    assert only(trace_padding(model, (9, 9))).pad_read == (2, 2, 2, 2)
    assert only(trace_padding(model, (8, 8))).pad_read == (2, 1, 2, 1)


def test_residual_branch_attributed_to_its_module():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Conv2d(3, 3, 3, stride=2, padding=1)
            self.skip = nn.Conv2d(3, 3, 1, stride=2)

        def forward(self, x):
            return self.main(x) + self.skip(x)

    layers = {r.layer: r for r in uneven_layers(Block(), (16, 16))}
    assert set(layers) == {"main", "skip"}
    assert layers["skip"].dropped == (1, 1) and layers["main"].pad_read == (1, 0, 1, 0)


def test_input_too_small_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 7, stride=2), nn.Conv2d(4, 4, 7, stride=2))
    with pytest.raises(PadbiasError, match=r"too small for the model: layer 1 gets a 5x5 input"):
        trace_padding(model, (16, 16))


@pytest.mark.parametrize("bad", [0, -3, (10, 0)])
def test_non_positive_size_is_rejected(bad):
    with pytest.raises(PadbiasError, match="positive"):
        trace_padding(conv_s2(), bad)


def test_model_without_convolutions_is_rejected():
    with pytest.raises(PadbiasError, match="no convolution"):
        trace_padding(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), (8, 8))


def test_conv3d_is_named_as_unsupported():
    class Video(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 4, 3)

        def forward(self, x):
            return self.conv(x.unsqueeze(2).repeat(1, 1, 4, 1, 1))

    with pytest.raises(PadbiasError, match="3-D convolution"):
        trace_padding(Video(), (8, 8))


def test_model_that_raises_in_forward_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(PadbiasError, match="cannot run.*boom"):
        trace_padding(Broken(), (8, 8))


def tower(depth):
    return nn.Sequential(*[nn.Conv2d(3, 3, 3, stride=2, padding=1) for _ in range(depth)])


def test_even_sizes_are_2_to_the_d_plus_1():
    # Every stride-2 3x3 layer needs an odd input: sizes k * 2^d + 1.
    assert even_sizes(tower(3), 8, 64) == [9, 17, 25, 33, 41, 49, 57]
    assert nearest_even_sizes(tower(3), (30, 40)) == {"below": [25, 33], "above": [33, 41]}


@settings(max_examples=40, deadline=None)
@given(h=st.integers(9, 200), w=st.integers(9, 200))
def test_replayed_program_equals_a_fresh_trace(h, w):
    """The arithmetic replay of one trace equals a real meta trace at every size."""
    from pytest_padbias.trace import trace_spatial_ops

    model = tower(3)
    replay = trace_padding(model, (h, w))
    fresh = trace_spatial_ops(model, (h, w))
    assert [r.output_size for r in replay] == [op.traced_out for op in fresh.ops]
    assert all(r.uneven == (not is_even(model, (h, w)) and True) or not r.uneven for r in replay)


def test_foveation_counts_paths_and_marginalises_the_border():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1))
    counts, ratio = foveation_map(model, (10, 10))
    # Interior: 9 layer-1 outputs, each read by 9 layer-2 outputs.
    assert counts[5, 5] == 81
    # Corner: layer-1 outputs (0,0),(0,1),(1,0),(1,1) reach 4, 6, 6 and 9 layer-2 outputs.
    assert counts[0, 0] == 25
    assert ratio < 1.0


def test_foveation_with_circular_padding_is_flat():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"),
                          nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"))
    counts, ratio = foveation_map(model, (10, 10))
    assert torch.all(counts == 81) and ratio == pytest.approx(1.0)


def test_zero_pad_module_is_folded_into_the_strided_conv():
    model = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, stride=2))
    # TF-style: pad one row/column after the input only, then an unpadded stride-2 conv.
    r = only(trace_padding(model, (8, 8)))
    assert r.layer == "1" and r.pad_read == (0, 1, 0, 1) and r.uneven


def test_reflection_pad_module_feeding_a_pool_keeps_its_mode():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReflectionPad2d(1), nn.MaxPool2d(3, stride=2))
    pool = trace_padding(model, (9, 9))[1]
    assert pool.op == "max_pool2d" and pool.mode == "reflect" and pool.pad_read == (1, 1, 1, 1) and not pool.uneven
