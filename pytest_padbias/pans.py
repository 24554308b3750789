"""Padding Aware Neurons (PANs): an exact, streaming census and the ``max_pans`` gate.

The method is that of *Padding Aware Neurons* (shared/papers/002, §3): for every output
channel ("neuron") of every conv layer with a kernel larger than 1x1, compare its conv
outputs on the top row, bottom row, left column and right column of the output map
(corners overlap) with those on the centre (rows and columns 1..size-2) over a batch of
images. Per border: KS = two-sided Kolmogorov-Smirnov(border, centre); KS+ = one-sided KS
(alternative 'less') of the border against the k highest centre values; KS- = one-sided
KS ('greater') against the k lowest; k = number of values in that border. The neuron is
a PAN for the border when KS >= theta and (KS+ >= theta or KS- >= theta).

How it is computed, exactly and fast. Every statistic is a function of two counts per
border value b: lt(b) = #(centre < b) and le(b) = #(centre <= b), since the k highest
centre values hold max(0, lt(b) - (M - k)) values below b and the k lowest min(k, le(b))
(M = centre size). Each KS statistic is then a maximum over the sorted border values,
rounded exactly as scipy.stats.ks_2samp rounds it (``ks_from_counts``), so the values are
scipy's bit for bit. The counts come from a histogram of each channel's centre, made
exact by a search among the values of a bin only where a maximum can be (``pans_counts``;
small maps and the chunked mode sort the centre and count everything); blocks of channels run
on the CPU's threads. Each layer is analysed in its forward hook and its activations are
dropped with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from .pans_counts import WorkerPool, ks_from_counts  # noqa: F401  (ks_from_counts: part of this module's API)
from .pans_scan import LayerScan, chunked_hook_step, finish_chunked, prepare_chunked, single_pass_step
from .result import PadbiasError

BORDERS = ("T", "B", "L", "R")
BORDER_NAMES = {"T": "top row", "B": "bottom row", "L": "left column", "R": "right column"}
#: The 15 non-empty border sets in the paper's Table 2 order, then "none".
PAN_TYPES = ("T", "B", "L", "R", "TB", "TL", "TR", "BL", "BR", "LR",
             "TBL", "TBR", "TLR", "BLR", "TBLR", "none")

def check_theta(theta) -> tuple[float, ...]:
    """theta (a number or a sequence of numbers) as a sorted tuple, each in (0, 1]."""
    values = [theta] if isinstance(theta, Real) else list(theta) if isinstance(theta, (list, tuple)) else None
    if not values or not all(isinstance(t, Real) and not isinstance(t, bool) for t in values):
        raise PadbiasError(f"theta must be a number in (0, 1] or a list of such numbers; got {theta!r}")
    for t in values:
        if not (0.0 < float(t) <= 1.0):
            raise PadbiasError(f"theta must lie in (0, 1] (a KS statistic threshold); got {t!r}")
    return tuple(sorted({float(t) for t in values}))


# --------------------------------------------------------------------------- results


@dataclass
class LayerInfo:
    name: str
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # left, right, top, bottom as applied
    padding_mode: str
    out_size: tuple[int, int]
    border_counts: tuple[int, int, int, int]  # values per border T, B, L, R (N*W, N*W, N*H, N*H)
    centre_count: int
    analysis_seconds: float = 0.0  # thread time (all threads) spent on this layer's statistics, not its forward


@dataclass
class PanCensus:
    """Per-neuron KS statistics of every analysed layer; thresholds are applied on demand.

    ``ks``, ``ks_plus``, ``ks_minus`` are float64 arrays ``[neurons, 4]`` (columns T, B, L, R);
    ``layer_index``/``channel`` say which layer (index into ``layers``) and channel a row is.
    """

    thetas: tuple[float, ...]
    layers: list[LayerInfo]
    layer_index: Any
    channel: Any
    ks: Any
    ks_plus: Any
    ks_minus: Any
    n_images: int
    skipped: list[dict] = field(default_factory=list)

    @property
    def n_neurons(self) -> int:
        return int(self.ks.shape[0])

    def border_scores(self):
        """min(KS, max(KS+, KS-)) per neuron and border: the border is a PAN iff score >= theta."""
        import numpy as np

        return np.minimum(self.ks, np.maximum(self.ks_plus, self.ks_minus))

    def pan_mask(self, theta: float = 0.5):
        """Boolean ``[neurons, 4]``: KS >= theta and (KS+ >= theta or KS- >= theta)."""
        return (self.ks >= theta) & ((self.ks_plus >= theta) | (self.ks_minus >= theta))

    def types(self, theta: float = 0.5) -> list[str]:
        """Border set of every neuron at ``theta``: 'T', 'TB', ..., 'TBLR' or 'none'."""
        cache = self.__dict__.setdefault("_types", {})
        if theta not in cache:
            mask = self.pan_mask(theta)
            cache[theta] = ["".join(b for b, hit in zip(BORDERS, row) if hit) or "none" for row in mask.tolist()]
        return cache[theta]

    def is_pan(self, theta: float = 0.5):
        return self.pan_mask(theta).any(axis=1)

    def fraction(self, theta: float = 0.5) -> float:
        return float(self.is_pan(theta).mean()) if self.n_neurons else 0.0

    def layer_counts(self, theta: float = 0.5) -> list[dict]:
        """The paper's Table 1: PANs per layer, absolute and as a percentage, with their types."""
        per_layer: list[dict[str, int]] = [{} for _ in self.layers]
        for kind, li in zip(self.types(theta), self.layer_index.tolist()):
            if kind != "none":
                per_layer[li][kind] = per_layer[li].get(kind, 0) + 1
        return [{"layer": layer.name, "channels": layer.out_channels, "pans": sum(kinds.values()),
                 "percent": 100.0 * sum(kinds.values()) / layer.out_channels,
                 "types": {t: kinds[t] for t in PAN_TYPES if t in kinds}}
                for layer, kinds in zip(self.layers, per_layer)]

    def type_counts(self, theta: float = 0.5) -> dict[str, int]:
        """The paper's Table 2: how many neurons have each border set (and 'none')."""
        types = self.types(theta)
        return {t: types.count(t) for t in PAN_TYPES}

    def neuron(self, row: int, theta: float = 0.5) -> dict:
        """One neuron's record: layer, channel, KS/KS+/KS- per border, score, type per theta."""
        layer = self.layers[int(self.layer_index[row])]
        ks, plus, minus = (dict(zip(BORDERS, map(float, a[row]))) for a in (self.ks, self.ks_plus, self.ks_minus))
        return {
            "layer": layer.name,
            "channel": int(self.channel[row]),
            "ks": ks,
            "ks_plus": plus,
            "ks_minus": minus,
            "score": max(min(k, max(p, m)) for k, p, m in zip(ks.values(), plus.values(), minus.values())),
            "type": {str(t): self.types(t)[row] for t in sorted(set(self.thetas) | {theta})},
        }

    def top_pans(self, theta: float = 0.5, n: int = 10) -> list[dict]:
        """The ``n`` PANs with the highest score (strongest border), strongest first."""
        import numpy as np

        score = self.border_scores().max(axis=1)
        is_pan = self.is_pan(theta)
        rows = [r for r in np.argsort(-score, kind="stable").tolist() if is_pan[r]]
        return [self.neuron(r, theta) for r in rows[:n]]

    def find(self, layer: str, channel: int) -> int:
        names = [layer_info.name for layer_info in self.layers]
        if layer not in names:
            raise PadbiasError(f"layer {layer!r} is not in the census; analysed layers: {', '.join(names)}")
        hits = ((self.layer_index == names.index(layer)) & (self.channel == channel)).nonzero()[0]
        if len(hits) == 0:
            raise PadbiasError(f"layer {layer!r} has no channel {channel}")
        return int(hits[0])

    def to_json(self, neurons: str = "pans") -> dict:
        """Plain-JSON summary: per-theta fractions, Table 1 and 2, layers, and neuron records
        (``neurons`` = 'pans' for PANs at any theta, 'all', or 'none')."""
        out = {
            "n_images": self.n_images,
            "n_layers": len(self.layers),
            "n_neurons": self.n_neurons,
            "layers": [{**vars(layer), "kernel": list(layer.kernel), "stride": list(layer.stride),
                        "padding": list(layer.padding), "out_size": list(layer.out_size),
                        "border_counts": list(layer.border_counts)} for layer in self.layers],
            "skipped": self.skipped,
            "by_theta": {
                str(t): {"pans": int(self.is_pan(t).sum()), "fraction": self.fraction(t),
                         "layer_counts": self.layer_counts(t), "type_counts": self.type_counts(t)}
                for t in self.thetas
            },
        }
        if neurons != "none":
            rows = self.is_pan(min(self.thetas)).nonzero()[0] if neurons == "pans" else range(self.n_neurons)
            out["neurons"] = [self.neuron(int(r), self.thetas[-1]) for r in rows]
        return out


# ---------------------------------------------------------------------------- census


def eligible_convs(model, min_kernel: int = 2) -> list[tuple[str, Any]]:
    """``(name, module)`` of every ``nn.Conv2d`` whose kernel is at least ``min_kernel`` on a side."""
    import torch.nn as nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) >= min_kernel]


def _check_images(model, images):
    import torch

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise PadbiasError(f"images must be a float tensor [N, C, H, W]; got {shape}")
    if images.shape[0] < 2:
        raise PadbiasError(f"the PAN census needs at least 2 images to compare border and centre activations; got {images.shape[0]}")
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is not None and images.shape[1] != first.in_channels:
        raise PadbiasError(f"images have {images.shape[1]} channels but the model's first conv expects {first.in_channels}")


def _layer_info(scan) -> LayerInfo:
    h, w = scan.out_size
    c = scan.conv
    pad = tuple(c._reversed_padding_repeated_twice) if c._reversed_padding_repeated_twice else (0, 0, 0, 0)
    return LayerInfo(scan.name, c.out_channels, tuple(c.kernel_size), tuple(c.stride), tuple(int(p) for p in pad),
                     c.padding_mode, (h, w), (scan.n_images * w,) * 2 + (scan.n_images * h,) * 2,
                     scan.n_images * (h - 2) * (w - 2), scan.seconds)


def _check_arguments(theta, min_kernel, chunk_size) -> tuple[float, ...]:
    thetas = check_theta(theta)
    if isinstance(min_kernel, bool) or not isinstance(min_kernel, int) or min_kernel < 1:
        raise PadbiasError(f"min_kernel must be a positive integer (pixels on a kernel side); got {min_kernel!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise PadbiasError(f"chunk_size must be None or a positive number of images; got {chunk_size!r}")
    return thetas


def pan_census(model, images, theta=(0.4, 0.5), min_kernel: int = 2, chunk_size: int | None = None) -> PanCensus:
    """KS, KS+ and KS- of every neuron of every conv layer with a kernel >= ``min_kernel``.

    ``images`` is a normalised float batch ``[N, C, H, W]`` (N >= 2) on the model's device.
    Each layer is analysed in its forward hook, on as many worker threads as torch uses,
    so peak memory is the forward pass's plus one layer's borders and the workers' scratch
    (with numba, a few MB; without, about 21 bytes per centre value in a block of
    ``pans_counts.ELEM_BUDGET``). ``chunk_size`` runs the
    batch through the model that many images at a time, twice: the first pass keeps the
    border values, the second adds up each chunk's exact centre counts, so the result is
    the one of a single pass (as long as the model gives an image the same activations
    whatever the batch size); the border values and their counts (20 bytes per border
    activation) are then kept across chunks, the centre never is.
    The model runs in eval mode under ``torch.no_grad`` and is left in its previous mode.
    """
    import torch

    thetas = _check_arguments(theta, min_kernel, chunk_size)
    _check_images(model, images)
    convs = eligible_convs(model, min_kernel)
    if not convs:
        raise PadbiasError(f"the model has no Conv2d layer with a kernel of at least {min_kernel} pixels on a side, "
                           "so it has no neurons a PAN census can analyse")
    n = images.shape[0]
    chunks = list(torch.split(images, chunk_size or n))
    scans = {name: LayerScan(name, conv, n) for name, conv in convs}
    threads = torch.get_num_threads()
    pool = WorkerPool(threads)
    results: dict[str, list] = {}
    stage = {"step": "single" if len(chunks) == 1 else "collect"}
    handles = [conv.register_forward_hook(_hook(scans[name], stage, pool, results)) for name, conv in convs]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if stage["step"] == "single":
                _run(model, chunks, scans, stage, "single")
            else:
                _run(model, chunks, scans, stage, "collect")
                collected = prepare_chunked(scans.values(), pool)
                _run(model, chunks, scans, stage, "count")
                finish_chunked(collected, pool, results)
    finally:
        for handle in handles:
            handle.remove()
        pool.close()
        model.train(was_training)
    return _assemble(thetas, convs, scans, results, n)


def _hook(scan, stage: dict, pool, results: dict):
    def hook(module, args, out):
        scan.calls += 1
        if scan.calls > 1:
            raise PadbiasError(f"layer {scan.name} runs more than once per forward pass; the PAN census needs one output map per layer")
        if out.shape[-1] < 3 or out.shape[-2] < 3:
            return  # no centre: recorded as skipped
        out = out.detach().float().cpu().numpy()  # a view for float32 CPU outputs
        if stage["step"] == "single":
            single_pass_step(scan, out, pool, results)
        else:
            chunked_hook_step(scan, out, stage["step"], pool)
    return hook


def _run(model, chunks, scans, stage: dict, step: str) -> None:
    stage["step"] = step
    for chunk in chunks:
        for scan in scans.values():
            scan.calls = 0
        try:
            model(chunk)
        except PadbiasError:
            raise
        except RuntimeError as exc:
            raise PadbiasError(f"the model failed on images of shape {tuple(chunk.shape)} ({type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0][:200]})") from None


def _assemble(thetas, convs, scans, results, n: int) -> PanCensus:
    import numpy as np

    layers, skipped, index, channel, parts = [], [], [], [], []
    for name, conv in convs:
        if name not in results:
            skipped.append({"layer": name, "reason": "output map smaller than 3x3 (no centre)" if scans[name].calls else "not run by the forward pass"})
            continue
        index.append(np.full(conv.out_channels, len(layers)))
        channel.append(np.arange(conv.out_channels))
        layers.append(_layer_info(scans[name]))
        parts.append(results[name])
    if not layers:
        raise PadbiasError("no conv layer with a kernel larger than 1x1 gave an output map of at least 3x3 on these images; "
                           "use larger images for the PAN census")
    ks, ks_plus, ks_minus = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return PanCensus(thetas, layers, np.concatenate(index), np.concatenate(channel), ks, ks_plus, ks_minus, n, skipped)
