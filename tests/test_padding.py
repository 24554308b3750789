"""Switching the padding of a whole model, or of chosen output channels of chosen layers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_padbias.padding import restore_channel_padding, restore_padding, switch_channel_padding, switch_padding
from pytest_padbias.result import PadbiasError


def layer_output(model, name, images):
    captured = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, a, o: captured.__setitem__("out", o))
    with torch.no_grad():
        final = model(images)
    handle.remove()
    return captured["out"], final


def reference_conv(conv: nn.Conv2d, mode: str) -> nn.Conv2d:
    """The same conv with PyTorch's own padding_mode, to check the switched channels."""
    ref = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, padding_mode=mode)
    ref.load_state_dict(conv.state_dict())
    return ref


@settings(max_examples=40, deadline=None)
@given(groups=st.sampled_from(["dense", "depthwise", "grouped"]), mode=st.sampled_from(["reflect", "replicate", "circular"]),
       chosen=st.sets(st.integers(0, 7), min_size=1, max_size=8), stride=st.integers(1, 2), bias=st.booleans(),
       seed=st.integers(0, 1000))
def test_unchosen_channels_stay_bit_identical(groups, mode, chosen, stride, bias, seed):
    torch.manual_seed(seed)
    g = {"dense": 1, "depthwise": 8, "grouped": 2}[groups]
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride, padding=1, groups=g, bias=bias)).eval()
    images = torch.randn(2, 3, 9, 11)
    before, _ = layer_output(model, "2", images)
    handle = switch_channel_padding(model, {"2": chosen}, mode)
    after, _ = layer_output(model, "2", images)
    others = [c for c in range(8) if c not in chosen]
    assert torch.equal(after[:, others], before[:, others])
    with torch.no_grad():
        expected = reference_conv(model[2], mode)(model[1](model[0](images)))
    torch.testing.assert_close(after[:, sorted(chosen)], expected[:, sorted(chosen)], rtol=1e-5, atol=1e-5)
    restore_channel_padding(model, handle)
    again, _ = layer_output(model, "2", images)
    assert torch.equal(again, before)


def test_switched_channels_change_only_near_the_border():
    """Reflect and zero padding differ only where the kernel overlaps the padding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    images = torch.rand(2, 3, 10, 10) + 1.0
    before, _ = layer_output(model, "0", images)
    handle = switch_channel_padding(model, {"0": [1]}, "reflect")
    after, _ = layer_output(model, "0", images)
    restore_channel_padding(model, handle)
    assert torch.equal(after[:, 1, 1:-1, 1:-1], before[:, 1, 1:-1, 1:-1])
    assert not torch.equal(after[:, 1, 0], before[:, 1, 0])


def test_whole_model_switch_and_restore():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 3, padding=2)).eval()
    images = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        before = model(images)
    previous = switch_padding(model, "circular")
    assert previous == {"0": "zeros", "2": "zeros"}  # the unpadded 1x1 conv is left alone
    assert model[0].padding_mode == "circular"
    restore_padding(model, previous)
    with torch.no_grad():
        assert torch.equal(model(images), before)


@pytest.mark.parametrize("channels, mode, match", [
    ({"nope": [0]}, "reflect", "no layer named 'nope'"),
    ({"1": [0]}, "reflect", "ReLU, not a Conv2d"),
    ({"0": [4]}, "reflect", "channel 4 does not exist"),
    ({"0": [0]}, "mirror", "padding mode must be one of"),
])
def test_bad_requests_are_refused(channels, mode, match):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with pytest.raises(PadbiasError, match=match):
        switch_channel_padding(model, channels, mode)


def test_reflect_on_maps_smaller_than_the_padding_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2)).eval()
    switch_channel_padding(model, {"0": [0]}, "reflect")
    with pytest.raises(PadbiasError, match="reflect padding"):
        with torch.no_grad():
            model(torch.ones(1, 1, 2, 2))
