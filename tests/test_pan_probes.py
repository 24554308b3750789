"""The zero-line probe of the PAN safety note, on a layer whose neurons are known by construction."""
import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from pytest_padbias.pan_probes import _ks, _line_rows, zero_line_predictions, zero_line_probe
from pytest_padbias.pans import pan_census
from pytest_padbias.result import PadbiasError


def _border_layer():
    """Channel 0 weighs only the pixel above (a top-border PAN on a bright input), channel 1
    only the centre pixel (blind to padding and to a line it does not sit on)."""
    conv = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 1] = -1.0
        conv.weight[1, 0, 1, 1] = 1.0
    return torch.nn.Sequential(conv).eval()


def _bright(n=6, size=24):
    return 1.0 + 0.05 * torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def test_ks_equals_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.normal(size=rng.integers(5, 200)), rng.normal(0.3, 1.2, size=rng.integers(5, 300))
        assert _ks(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


def test_the_top_border_neuron_reads_a_zero_row_as_its_border():
    model, x = _border_layer(), _bright()
    census = pan_census(model, x, theta=(0.5,))
    assert census.types(0.5) == ["T", "none"]
    probe = zero_line_probe(model, x, census, theta=0.5)
    assert (probe.pans, probe.pans_detecting) == (1, 1)
    assert (probe.others, probe.others_detecting) == (1, 0)


@pytest.mark.parametrize("kernel, stride, padding, size", [(3, 1, 1, 24), (3, 2, 1, 24), (5, 2, 2, 31), (7, 2, 3, 224)])
def test_the_probed_output_lines_read_the_zero_line_with_their_first_and_last_kernel_row(kernel, stride, padding, size):
    conv = torch.nn.Conv2d(1, 1, kernel, stride=stride, padding=padding)
    line, near, far = _line_rows(conv, size, 0)
    assert near * stride - padding == line  # the kernel's first row sits on the zeros
    if far is not None:
        assert far * stride - padding + kernel - 1 == line


def test_a_model_without_pans_is_a_clear_error():
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    model, x = torch.nn.Sequential(conv).eval(), _bright()
    with pytest.raises(PadbiasError, match="no PAN at theta 0.5"):
        zero_line_probe(model, x, pan_census(model, x, theta=(0.5,)))


def test_zero_line_predictions_counts_changed_top1():
    class MiddleRowReader(torch.nn.Module):
        """Class 1 when the middle row is bright, else class 0: a zero row flips every image."""

        def forward(self, x):
            row = x[:, 0, x.shape[2] // 2, :].mean(dim=1)
            return torch.stack([torch.full_like(row, 0.5), row], dim=1)

    changed = zero_line_predictions(MiddleRowReader(), _bright(4, 8))
    assert changed["row"] == 1.0
    assert changed["column"] == 0.0
