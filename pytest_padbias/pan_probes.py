"""The safety note of *Padding Aware Neurons* (Sec. 5): "adding a one-row/column of zeros
anywhere in the input will cause PANs to fire".

:func:`zero_line_probe` inserts a line of zeros in the middle of each PAN layer's own
input and asks, with the census's two-sample KS test, whether the neuron now separates
the output line next to it from the centre as it does its padded border. A top-border
PAN (T) is read on the output row whose kernel's top row covers the zero row (as the top
padding row is covered at row 0); B, L and R likewise. PANs are read on their own
borders; a random sample of the other neurons of the same layers is read on all four,
which is the more lenient test for them.

:func:`zero_line_predictions` inserts the zero row (and column) in the image itself and
counts how often the top-1 class changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .result import PadbiasError

#: Centre activations drawn per neuron for the KS test (exactness is not needed here).
CENTRE_SAMPLE = 4000


def _ks(a, b) -> float:
    """Two-sided two-sample KS statistic (same value as scipy.stats.ks_2samp)."""
    a, b = np.sort(a), np.sort(b)
    values = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, values, side="right") / len(a)
                               - np.searchsorted(b, values, side="right") / len(b))))


@dataclass
class LineProbe:
    theta: float
    pans: int
    pans_detecting: int
    others: int
    others_detecting: int
    per_layer: list[dict] = field(default_factory=list)

    @property
    def pan_rate(self) -> float:
        return self.pans_detecting / self.pans if self.pans else float("nan")

    @property
    def other_rate(self) -> float:
        return self.others_detecting / self.others if self.others else float("nan")


def _line_rows(conv, size, axis):
    """The zeroed input line and the output lines reading it like a (near, far) border."""
    k, s, p = conv.kernel_size[axis], conv.stride[axis], conv.padding[axis]
    line = size // 2
    line -= (line + p) % s  # an output line's kernel starts exactly on it
    near = (line + p) // s  # kernel's first row on the zeros: like the top/left border
    far_start = line + p - k + 1
    far = far_start // s if far_start % s == 0 and far_start >= 0 else None  # kernel's last row on it
    return line, near, far


def _conv_inputs(model, convs: dict, images) -> dict:
    """The input of each conv of ``convs`` (name -> module) in one forward pass of ``images``."""
    import torch

    inputs = {}
    hooks = [conv.register_forward_pre_hook(lambda mod, a, _n=n: inputs.__setitem__(_n, a[0].detach()))
             for n, conv in convs.items()]
    try:
        with torch.inference_mode():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _zero_line_outputs(conv, x) -> dict:
    """Per border (T, B, L, R): ``conv``'s output row/column where it reads a line of zeros
    set inside ``x`` as it reads its padding on that side (None where there is none)."""
    import torch

    lines = {}
    with torch.inference_mode():
        for axis, (near_b, far_b) in ((0, ("T", "B")), (1, ("L", "R"))):
            line, near, far = _line_rows(conv, x.shape[2 + axis], axis)
            z = x.clone()
            (z[:, :, line, :] if axis == 0 else z[:, :, :, line]).zero_()
            out = conv(z)
            pick = (lambda o, i: o[:, :, i, 1:-1]) if axis == 0 else (lambda o, i: o[:, :, 1:-1, i])
            lines[near_b] = pick(out, near) if near < out.shape[2 + axis] else None
            lines[far_b] = pick(out, far) if far is not None and far < out.shape[2 + axis] else None
    return lines


def zero_line_probe(model, images, census, theta: float = 0.5, others_per_layer: int = 20, seed: int = 0) -> LineProbe:
    """How many PANs (and sampled other neurons) detect a zero line inside their input."""
    import torch

    from .pans import eligible_convs

    pan = census.is_pan(theta)
    if not pan.any():
        raise PadbiasError(f"the model has no PAN at theta {theta:g} to probe")
    types = census.types(theta)
    convs = dict(eligible_convs(model))
    rng = np.random.default_rng(seed)
    layers = sorted({int(li) for li in census.layer_index[pan]})
    names = [census.layers[li].name for li in layers]
    inputs = _conv_inputs(model, {n: convs[n] for n in names}, images)
    result = LineProbe(theta, 0, 0, 0, 0)
    for li, name in zip(layers, names):
        conv, x = convs[name], inputs[name]
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        rows = np.nonzero(census.layer_index == li)[0]
        pan_rows = [int(r) for r in rows if pan[r]]
        other = [int(r) for r in rows if not pan[r]]
        other_rows = [int(r) for r in rng.choice(other, min(others_per_layer, len(other)), replace=False)] if other else []
        with torch.inference_mode():
            centre = conv(x)[:, :, 1:-1, 1:-1]
        lines = _zero_line_outputs(conv, x)

        def detects(row, borders):
            ch = int(census.channel[row])
            cen = centre[:, ch].flatten().numpy()
            cen = cen[rng.choice(len(cen), min(CENTRE_SAMPLE, len(cen)), replace=False)]
            return any(lines.get(b) is not None and _ks(lines[b][:, ch].flatten().numpy(), cen) >= theta for b in borders)

        hit_pans = sum(detects(r, types[r]) for r in pan_rows)
        hit_others = sum(detects(r, "TBLR") for r in other_rows)
        result.pans += len(pan_rows)
        result.pans_detecting += hit_pans
        result.others += len(other_rows)
        result.others_detecting += hit_others
        result.per_layer.append({"layer": name, "pans": len(pan_rows), "pans_detecting": hit_pans,
                                 "others": len(other_rows), "others_detecting": hit_others})
    return result


def zero_line_predictions(model, images) -> dict[str, float]:
    """Fraction of images whose top-1 class changes when the middle row, or column, of the
    (normalised) input is set to zero, the value zero padding puts around it."""
    import torch

    h, w = images.shape[-2:]
    with torch.inference_mode():
        before = model(images).argmax(dim=1)
        out = {}
        for name, index in (("row", (slice(None), slice(None), h // 2, slice(None))),
                            ("column", (slice(None), slice(None), slice(None), w // 2))):
            probed = images.clone()
            probed[index] = 0
            out[name] = float((model(probed).argmax(dim=1) != before).float().mean())
    return out
