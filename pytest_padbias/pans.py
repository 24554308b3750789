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
scipy's bit for bit. The counts come from one numpy sort of each channel's centre and
binary searches of the border values into it, only where a maximum can be
(``pans_counts``); blocks of channels run on the CPU's threads. Each layer is analysed
in its forward hook and its activations are dropped with it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from .pans_counts import ELEM_BUDGET, SortPool, exact_counts, pruned_counts, search_step, sorted_centre
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
    analysis_seconds: float = 0.0  # wall time spent on this layer's statistics (not its forward)


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


# ------------------------------------------------------------------------ exact kernel


#: scipy.stats.ks_2samp's method='auto' computes the exact p-value, and with it rounds the
#: statistic once from its exact lattice value h / lcm(n1, n2), up to this sample size
AUTO_EXACT_MAX = 10000


def _sup(a, n_a: int, b, n_b: int):
    """Per row, max over j of a_j / n_a - b_j / n_b, at least 0, rounded as ks_2samp rounds it.

    One of ``a``, ``b`` is a count array ``[rows, n]``, the other a vector over j. In
    ks_2samp's exact mode the statistic is h / lcm rounded once (the integer numerator
    over n_a * n_b here); in its asymptotic mode it is the float64 difference of the two
    ECDF values, each rounded, as its ``cdf1 - cdf2`` (rounding is monotone and symmetric,
    so the maximum of the rounded differences is at the exact maximum's j)."""
    import numpy as np

    array, vector = (a, b) if a.ndim == 2 else (b, a)
    if max(n_a, n_b) <= AUTO_EXACT_MAX:
        work = np.multiply(array, n_b if array is a else -n_a)
        work += vector * n_b if vector is a else -vector * n_a
        return np.maximum(work.max(axis=1), 0) / float(n_a * n_b)
    if array is a:
        work = np.divide(array, n_a)
        work -= vector / n_b
    else:
        work = np.divide(array, n_b)
        np.subtract(vector / n_a, work, out=work)
    return np.maximum(work.max(axis=1), 0.0)


def _exact_ks(lt, le, n: int, m: int):
    """``ks_from_counts`` in ks_2samp's exact mode (n, m <= 10000): ``_sup``'s numerators and
    denominators (so its floats), with lt * n and le * n formed once for all three statistics
    in reused buffers (on small maps these passes cost about as much as the counting)."""
    import numpy as np

    k = min(n, m)
    j = np.arange(1, n + 1, dtype=np.int64)
    lt_n, le_n = np.multiply(lt, n), np.multiply(le, n)
    work = np.empty_like(lt_n)

    def top(numerator_out, denominator):
        return np.maximum(numerator_out.max(axis=1), 0) / float(denominator)

    ks = np.maximum(top(np.subtract(j * m, le_n, out=work), n * m),
                    top(np.subtract(lt_n, (j - 1) * m, out=work), n * m))
    np.maximum(lt_n, (m - k) * n, out=lt_n)  # the k highest: max(0, lt - (m - k)) * n, shifted by (m - k) * n
    ks_plus = top(np.subtract(lt_n, (j - 1) * k + (m - k) * n, out=work), k * n)
    np.minimum(le_n, k * n, out=le_n)  # the k lowest: min(k, le) * n
    ks_minus = top(np.subtract(j * k, le_n, out=work), n * k)
    return ks, ks_plus, ks_minus


def ks_from_counts(lt, le, n: int, m: int):
    """KS, KS+ and KS- per row from exact counts of the centre below sorted border values,
    equal to scipy.stats.ks_2samp's statistics (method 'auto', what a plain call uses).

    ``lt``/``le`` are int64 arrays ``[rows, n]``: #(centre < b_j) and #(centre <= b_j) for
    the border values b_1 <= ... <= b_n of each row; ``m`` is the centre size. An ECDF
    difference F_border - F_centre can only rise at a border value, F_centre - F_border
    only just before one, so both sups are maxima over j (a tie group's last j gives
    #(border <= b_j) = j, its first gives #(border < b_j) = j - 1; the other j's of the
    group give smaller values).
    """
    import numpy as np

    if max(n, m) <= AUTO_EXACT_MAX:
        return _exact_ks(lt, le, n, m)
    j = np.arange(1, n + 1, dtype=np.int64)
    ks = np.maximum(_sup(j, n, le, m), _sup(lt, m, j - 1, n))
    k = min(n, m)
    # the k highest centre values hold max(0, lt - (m - k)) values below b: 'less' = sup(F_top - F_border)
    ks_plus = _sup(np.maximum(lt - (m - k), 0), k, j - 1, n)
    # the k lowest hold min(k, le) values at or below b: 'greater' = sup(F_border - F_bottom)
    ks_minus = _sup(j, n, np.minimum(le, k), k)
    return ks, ks_plus, ks_minus


class _LayerScan:
    """Border values and exact centre counts of one conv layer, accumulated over chunks.

    The counts lt/le of every border value are sums over chunks of counts in each
    chunk's centre, so a chunked run is exact once all border values are known (pass 1).
    The work on the border and centre values runs in blocks of channels (rows).
    """

    def __init__(self, name: str, conv, n_images: int):
        self.name, self.conv, self.n_images = name, conv, n_images
        self.border_chunks: list[list] = []
        self.out_size = None
        self.calls = 0
        self.seconds = 0.0

    # pass 1: the border values (T, B, L, R: rows 0 and H-1, columns 0 and W-1)
    @staticmethod
    def borders(out, r0: int, r1: int) -> list:
        """The four borders of channels r0:r1 as [rows, n*length] copies (out is freed later)."""
        import numpy as np

        n, c, h, w = out.shape
        sides = (out[:, r0:r1, 0, :], out[:, r0:r1, h - 1, :], out[:, r0:r1, :, 0], out[:, r0:r1, :, w - 1])
        return [np.array(b.transpose(1, 0, 2), dtype=np.float32).reshape(r1 - r0, -1) for b in sides]

    def collect(self, out, keep: bool) -> None:
        """Note the map size; with ``keep`` (chunked runs) keep this chunk's borders for pass 2."""
        n, c, h, w = out.shape
        if self.out_size is not None and self.out_size != (h, w):
            raise PadbiasError(f"layer {self.name} gave output maps of different sizes across chunks")
        self.out_size = (h, w)
        if keep:
            self.border_chunks.append(self.borders(out, 0, c))

    # between the passes: the accumulators, then sorted border values block by block
    def prepare(self, channels: int) -> None:
        import numpy as np

        h, w = self.out_size
        self.sizes = [self.n_images * w, self.n_images * w, self.n_images * h, self.n_images * h]
        self.queries = np.empty((channels, sum(self.sizes)), dtype=np.float32)  # T | B | L | R, each sorted
        self.lt = np.zeros(self.queries.shape, dtype=np.int64)
        self.le = np.zeros(self.queries.shape, dtype=np.int64)
        self.stats = np.empty((3, channels, 4))

    def _segments(self):
        start = 0
        for size in self.sizes:
            yield slice(start, start + size)
            start += size

    def prepare_rows(self, r0: int, r1: int, out=None) -> None:
        """Sort the border values of channels r0:r1 (taken from ``out`` in a single pass)."""
        import numpy as np

        parts = self.borders(out, r0, r1) if out is not None else None
        for i, seg in enumerate(self._segments()):
            values = parts[i] if parts else np.concatenate([chunk[i][r0:r1] for chunk in self.border_chunks], axis=1)
            values.sort(axis=1)
            self.queries[r0:r1, seg] = values
        if not np.isfinite(self.queries[r0:r1]).all():
            raise PadbiasError(f"layer {self.name} produced NaN or infinite activations; the PAN census needs finite conv outputs")

    # pass 2: exact counts of the centre below every border value
    def count_rows(self, out, r0: int, r1: int, pool: SortPool, whole: bool) -> None:
        """Counts of channels r0:r1 in this pass's centre. With ``whole`` (one pass over all
        images) they are final, so only the ones a maximum can depend on are searched."""
        n, c, h, w = out.shape
        m = n * (h - 2) * (w - 2)
        centre = sorted_centre(out, r0, r1, pool.buffer((r1 - r0) * m), self.name)
        step = search_step(m, min(self.sizes)) if whole else None
        if step is None:
            lt, le = exact_counts(centre, self.queries[r0:r1])
            self.lt[r0:r1] += lt
            self.le[r0:r1] += le
        else:
            self.lt[r0:r1], self.le[r0:r1] = pruned_counts(centre, self.queries[r0:r1], self.sizes, step)

    def finish_rows(self, r0: int, r1: int) -> None:
        h, w = self.out_size
        m = self.n_images * (h - 2) * (w - 2)
        for b, seg in enumerate(self._segments()):
            ks = ks_from_counts(self.lt[r0:r1, seg], self.le[r0:r1, seg], seg.stop - seg.start, m)
            for i in range(3):
                self.stats[i, r0:r1, b] = ks[i]

    def blocks(self, workers: int, per_row: int):
        """Row blocks: at most ELEM_BUDGET centre values each, at least one per worker."""
        channels = self.queries.shape[0]
        rows = max(1, min(ELEM_BUDGET // max(per_row, 1), -(-channels // workers)))
        return [(r0, min(r0 + rows, channels)) for r0 in range(0, channels, rows)]

    def result(self):
        stats = self.stats
        self.border_chunks = self.queries = self.lt = self.le = self.stats = None
        return list(stats)

    def info(self) -> LayerInfo:
        h, w = self.out_size
        c = self.conv
        pad = tuple(c._reversed_padding_repeated_twice) if c._reversed_padding_repeated_twice else (0, 0, 0, 0)
        return LayerInfo(self.name, c.out_channels, tuple(c.kernel_size), tuple(c.stride), tuple(int(p) for p in pad),
                         c.padding_mode, (h, w), (self.n_images * w,) * 2 + (self.n_images * h,) * 2,
                         self.n_images * (h - 2) * (w - 2), self.seconds)


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


def pan_census(model, images, theta=(0.4, 0.5), min_kernel: int = 2, chunk_size: int | None = None) -> PanCensus:
    """KS, KS+ and KS- of every neuron of every conv layer with a kernel >= ``min_kernel``.

    ``images`` is a normalised float batch ``[N, C, H, W]`` (N >= 2) on the model's device.
    Peak memory is one layer's output plus a few sorting buffers. ``chunk_size`` runs the
    batch through the model that many images at a time, twice: the first pass keeps the
    border values, the second adds up each chunk's exact centre counts, so the result is
    the one of a single pass (as long as the model gives an image the same activations
    whatever the batch size); the border values and their counts (20 bytes per border
    activation) are then kept across chunks, the centre never is.
    The model runs in eval mode under ``torch.no_grad`` and is left in its previous mode.
    """
    import numpy as np
    import torch

    thetas = check_theta(theta)
    _check_images(model, images)
    if isinstance(min_kernel, bool) or not isinstance(min_kernel, int) or min_kernel < 1:
        raise PadbiasError(f"min_kernel must be a positive integer (pixels on a kernel side); got {min_kernel!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise PadbiasError(f"chunk_size must be None or a positive number of images; got {chunk_size!r}")
    convs = eligible_convs(model, min_kernel)
    if not convs:
        raise PadbiasError(f"the model has no Conv2d layer with a kernel of at least {min_kernel} pixels on a side, "
                           "so it has no neurons a PAN census can analyse")
    n = images.shape[0]
    chunks = list(torch.split(images, chunk_size or n))
    pool = SortPool(torch.get_num_threads())
    scans = {name: _LayerScan(name, conv, n) for name, conv in convs}
    results: dict[str, list] = {}
    stage = {"step": "collect"}

    def hook_for(scan):
        def hook(module, args, out):
            scan.calls += 1
            if scan.calls > 1:
                raise PadbiasError(f"layer {scan.name} runs more than once per forward pass; the PAN census needs one output map per layer")
            if out.shape[-1] < 3 or out.shape[-2] < 3:
                return  # no centre: recorded as skipped
            started = time.perf_counter()
            out = out.detach().float().cpu().numpy()  # a view for float32 CPU outputs
            if stage["step"] == "single":  # everything at once, block by block
                scan.collect(out, keep=False)
                scan.prepare(out.shape[1])
                blocks = scan.blocks(pool.workers, out.shape[0] * (out.shape[2] - 2) * (out.shape[3] - 2))
                pool.run(lambda r0, r1: (scan.prepare_rows(r0, r1, out), scan.count_rows(out, r0, r1, pool, True),
                                         scan.finish_rows(r0, r1)), blocks)
                results[scan.name] = scan.result()
            elif stage["step"] == "collect":
                scan.collect(out, keep=True)
            else:
                blocks = scan.blocks(pool.workers, out.shape[0] * (out.shape[2] - 2) * (out.shape[3] - 2))
                pool.run(lambda r0, r1: scan.count_rows(out, r0, r1, pool, False), blocks)
            scan.seconds += time.perf_counter() - started
        return hook

    def run(step):
        stage["step"] = step
        for chunk in chunks:
            for scan in scans.values():
                scan.calls = 0
            try:
                model(chunk)
            except PadbiasError:
                raise
            except RuntimeError as exc:
                raise PadbiasError(f"the model failed on images of shape {tuple(chunk.shape)} ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})") from None

    handles = [conv.register_forward_hook(hook_for(scans[name])) for name, conv in convs]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if len(chunks) == 1:
                run("single")
            else:
                run("collect")
                collected = [s for s in scans.values() if s.out_size is not None]
                for scan in collected:
                    started = time.perf_counter()
                    scan.prepare(scan.border_chunks[0][0].shape[0])
                    pool.run(scan.prepare_rows, scan.blocks(pool.workers, 1))
                    scan.seconds += time.perf_counter() - started
                run("count")
                for scan in collected:
                    started = time.perf_counter()
                    pool.run(scan.finish_rows, scan.blocks(pool.workers, 1))
                    results[scan.name] = scan.result()
                    scan.seconds += time.perf_counter() - started
    finally:
        for handle in handles:
            handle.remove()
        pool.close()
        model.train(was_training)

    layers, skipped, index, channel, parts = [], [], [], [], []
    for name, conv in convs:
        if name not in results:
            skipped.append({"layer": name, "reason": "output map smaller than 3x3 (no centre)" if scans[name].calls else "not run by the forward pass"})
            continue
        index.append(np.full(conv.out_channels, len(layers)))
        channel.append(np.arange(conv.out_channels))
        layers.append(scans[name].info())
        parts.append(results[name])
    if not layers:
        raise PadbiasError("no conv layer with a kernel larger than 1x1 gave an output map of at least 3x3 on these images; "
                           "use larger images for the PAN census")
    ks, ks_plus, ks_minus = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return PanCensus(thetas, layers, np.concatenate(index), np.concatenate(channel), ks, ks_plus, ks_minus, n, skipped)
