"""Agreement with the reproducibility report's torchinfo-based ``has_uneven_padding``
(shared/papers/000_873c4a5f441dd0f4.txt, Sec. 3): same verdict on every strided Conv2d."""
import pytest
import torch.nn as nn
import torchvision

from pytest_padbias.geometry import trace_padding

torchinfo = pytest.importorskip("torchinfo")


def report_verdicts(model, size):
    """The report's equations per strided Conv2d: uneven when the padded input length
    differs from the span the windows cover, s * (out - 1) + k."""
    names = {id(m): n for n, m in model.named_modules()}
    info = torchinfo.summary(model, (1, 3, size, size), verbose=0, device="cpu")
    verdicts = {}
    for layer in info.summary_list:
        conv = layer.module
        if isinstance(conv, nn.Conv2d) and any(s > 1 for s in conv.stride):
            *_, h_in, w_in = layer.input_size
            *_, h_out, w_out = layer.output_size
            h_line, w_line = h_in + 2 * conv.padding[0], w_in + 2 * conv.padding[1]
            h_hat = conv.stride[0] * (h_out - 1) + conv.kernel_size[0]
            w_hat = conv.stride[1] * (w_out - 1) + conv.kernel_size[1]
            verdicts[names[id(conv)]] = h_line != h_hat or w_line != w_hat
    return verdicts


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"])
@pytest.mark.parametrize("size", [224, 225])
def test_same_verdict_as_the_report_on_every_strided_conv(name, size):
    model = torchvision.models.get_model(name, weights=None).eval()
    expected = report_verdicts(model, size)
    ours = {r.layer: r.uneven for r in trace_padding(model, (size, size))
            if r.op == "conv2d" and any(s > 1 for s in r.stride)}
    assert ours == expected
    assert any(expected.values()) == (size == 224)  # the paper's 224 vs 225
