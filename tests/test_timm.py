"""timm models through ``timm:NAME`` specs, and TF-style 'SAME' padding (timm's Conv2dSame,
whose pads depend on the input size) judged against TensorFlow's own padding formula."""
import math

import pytest
import torch
from timm.layers import Conv2dSame

from pytest_padbias.geometry import uneven_layers
from pytest_padbias.models import load_model


@pytest.fixture(scope="module")
def tf_efficientnet():
    return load_model("timm:tf_efficientnet_b0", "none", "cpu").module


def _tf_same_is_uneven(size, conv) -> bool:
    """TensorFlow's SAME padding: total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0),
    the odd pixel going after the input; uneven exactly when the total is odd."""
    k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total % 2 == 1


@pytest.mark.parametrize("size", [97, 224, 225, 230, 300])
def test_tf_same_padding_verdicts_equal_tensorflows_formula(tf_efficientnet, size):
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, _n=n: inputs.__setitem__(_n, a[0].shape[-1]))
             for n, m in tf_efficientnet.named_modules() if isinstance(m, Conv2dSame)]
    try:
        with torch.inference_mode():
            tf_efficientnet(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    expected = {n for n, m in tf_efficientnet.named_modules() if isinstance(m, Conv2dSame) and _tf_same_is_uneven(inputs[n], m)}
    found = {r.layer for r in uneven_layers(tf_efficientnet, (size, size))}
    assert found == expected
    assert bool(expected) == (size not in (97, 225))  # 2^5 k + 1 sizes pad evenly


GATED = """
from pytest_padbias import padbias

@padbias.no_uneven_padding
def test_gated():
    pass
"""


def test_a_timm_spec_is_gated(pytester):
    pytester.makepyfile(test_inner_timm=GATED)
    args = ["--padbias-model=timm:resnet18", "--padbias-weights=none", "-p", "no:cacheprovider"]
    failed = pytester.runpytest(*args, "--padbias-input-size=224")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["*@padbias.no_uneven_padding failed*"])
    pytester.runpytest(*args, "--padbias-input-size=225").assert_outcomes(passed=1)
