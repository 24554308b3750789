"""Where a model applies padding unevenly, for any input size, and how it uses each pixel.

A strided conv or pool reads padding on both sides only when the padded length fits
its windows exactly; otherwise the last window stops short and the far side's padding
(or a row of input) is never read (Mind the Pad, Sec. 5; the reproducibility report's
``has_uneven_padding``). :func:`trace_padding` answers that per op, from one meta-device
trace replayed with integer arithmetic (see :mod:`pytest_padbias.trace`).
"""
from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass

from .result import PadbiasError
from .trace import INPUT, Trace, axis_read, shared_replay, trace_spatial_ops

WINDOW_OPS = ("conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d")


@dataclass
class PaddingRecord:
    """What one conv/pool/pad op reads at one input size.

    ``pad_read`` is (top, bottom, left, right) padding rows/columns inside the windows'
    span; ``dropped`` (rows, cols) input rows/columns after the last window.
    """

    layer: str
    op: str
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad_read: tuple[int, int, int, int]
    dropped: tuple[int, int]
    mode: str
    uneven: bool

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


_TRACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _signature(model):
    return tuple((name, type(m).__name__, getattr(m, "padding_mode", None)) for name, m in model.named_modules())


def size_program(model, input_size=(224, 224)) -> Trace:
    """The model's spatial ops, traced once per model structure and cached (from the
    replay the memory estimate of the same model and size reads too)."""
    sig = _signature(model)
    cached = _TRACES.get(model)
    if cached is not None and cached[0] == sig:
        return cached[1]
    trace = shared_replay(model, input_size).spatial_trace()
    if not any(op.op in WINDOW_OPS for op in trace.ops):
        raise PadbiasError("the model has no convolution or pooling op in its forward pass, so it has no padding to analyse")
    if _size_dependent(trace):
        # Explicit pads may be computed from the input size (TF-style 'same'): trace a
        # second size and keep the program only where it predicts that trace exactly.
        try:
            retrace = trace_spatial_ops(model, (input_size[0] + 1, input_size[1] + 1))
            static = _replays(trace, retrace)
        except PadbiasError:  # e.g. a model that asserts one input size
            static = False
        trace.notes.append("static" if static else "dynamic")
    _TRACES[model] = (sig, trace)
    return trace


def _size_dependent(trace: Trace) -> bool:
    """Whether a pad or an op of unknown arithmetic lies upstream of a window op."""
    suspect = set()
    for op in trace.ops:
        if op.op in ("pad", "opaque") or op.parent in suspect:
            suspect.add(op.index)
    return any(trace.ops[i].op in WINDOW_OPS or trace.ops[i].op == "pad" for i in suspect)


def _replays(trace: Trace, other: Trace) -> bool:
    if len(trace.ops) != len(other.ops) or any(a.op != b.op or a.padding != b.padding for a, b in zip(trace.ops, other.ops)):
        return False
    try:
        return [r.output_size for r in _replay(trace, other.input_size, keep_all=True)] == [o.traced_out for o in other.ops]
    except PadbiasError:
        return False


def _replay(trace: Trace, input_size, keep_all=False) -> list[PaddingRecord]:
    h, w = input_size
    sizes: dict[int, tuple[int, ...]] = {INPUT: (h, w)}
    folds = _pad_folds(trace)
    absorbed = {pad.index for pad in folds.values()}
    records = []
    for op in trace.ops:
        parent_size = sizes[op.parent]
        n = len(op.traced_out)
        in_size = tuple(parent_size[-n:])
        if op.op in ("fixed", "opaque"):
            sizes[op.index] = op.traced_out
            if keep_all:
                records.append(_record(op, in_size, op.traced_out, ((0, 0),) * n, (0,) * n, "zeros"))
            continue
        if op.op == "pad":
            out = tuple(s + b + a for s, (b, a) in zip(in_size, op.padding))
            if min(out) < 1:
                raise PadbiasError(f"input size {h}x{w} is too small: layer {op.layer or '<model>'} crops it away")
            sizes[op.index] = out
            if keep_all or op.index not in absorbed:
                reads = tuple((b, a) for b, a in op.padding)
                records.append(_record(op, in_size, out, reads, (0,) * n, op.mode))
            continue
        pads, mode, source_size = op.padding, op.mode, in_size
        parent = folds.get(op.index)
        if parent is not None:
            pads, mode = _folded_pads(parent, op), parent.mode
            source_size = tuple(sizes[parent.parent][-n:])
        out, reads, dropped = [], [], []
        for i in range(n):
            res = axis_read(source_size[i], pads[i][0], pads[i][1], op.kernel[i], op.stride[i], op.dilation[i], op.ceil_mode,
                            op.padding[i][1] if parent is not None else None)
            if res is None:
                raise PadbiasError(
                    f"input size {h}x{w} is too small for the model: layer {op.layer or '<model>'} ({op.op}, kernel "
                    f"{'x'.join(map(str, op.kernel))}) gets a {'x'.join(map(str, source_size))} input"
                )
            n_out, rb, ra, dr = res
            out.append(n_out)
            reads.append((rb, ra))
            dropped.append(dr)
        sizes[op.index] = tuple(out)
        records.append(_record(op, source_size, tuple(out), tuple(reads), tuple(dropped), mode))
    return records


def _pad_folds(trace: Trace) -> dict:
    """Window op index -> the explicit pad op it alone reads. Such a pad is folded into
    the op (padding_mode != zeros and TF-style 'same' both pad first, then run the op
    unpadded), so the op is judged on all the padding it reads."""
    consumers: dict[int, int] = {}
    for op in trace.ops:
        consumers[op.parent] = consumers.get(op.parent, 0) + 1
    return {op.index: trace.ops[op.parent] for op in trace.ops
            if op.op in WINDOW_OPS and op.parent != INPUT and trace.ops[op.parent].op == "pad"
            and consumers[op.parent] == 1}


def _folded_pads(pad, op):
    return tuple((pb + b, pa + a) for (pb, pa), (b, a) in zip(pad.padding, op.padding))


def _record(op, in_size, out_size, reads, dropped, mode) -> PaddingRecord:
    if len(reads) == 1:  # 1-D ops run along the width
        reads, dropped = ((0, 0),) + tuple(reads), (0,) + tuple(dropped)
    (t, b), (l, r) = reads
    uneven = t != b or l != r or any(dropped)
    return PaddingRecord(
        layer=op.layer or "<model>", op=op.op, input_size=tuple(in_size), output_size=tuple(out_size),
        kernel=op.kernel, stride=op.stride, pad_read=(t, b, l, r), dropped=tuple(dropped), mode=mode, uneven=uneven,
    )


def _parse_size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise PadbiasError(f"input size must be an int or (height, width), got {input_size!r}") from None
    if h < 1 or w < 1:
        raise PadbiasError(f"input size must be positive, got {h}x{w}")
    return h, w


def trace_padding(model, input_size) -> list[PaddingRecord]:
    """Every conv/pool/pad op of ``model`` at ``input_size`` with the padding it reads."""
    size = _parse_size(input_size)
    trace = size_program(model, size)
    if "dynamic" in trace.notes and trace.input_size != size:
        trace = trace_spatial_ops(model, size)
    return _replay(trace, size)


def uneven_layers(model, input_size) -> list[PaddingRecord]:
    """The ops of :func:`trace_padding` that read padding unevenly or drop input."""
    return [r for r in trace_padding(model, input_size) if r.uneven]


def is_even(model, input_size) -> bool:
    """True when no op of ``model`` pads unevenly or drops input at ``input_size``."""
    try:
        return not uneven_layers(model, input_size)
    except PadbiasError:
        return False


def _axis_even(model, axis: int, length: int, other: int) -> bool:
    size = (length, other) if axis == 0 else (other, length)
    try:
        records = trace_padding(model, size)
    except PadbiasError:
        return False
    return all((r.pad_read[0] == r.pad_read[1] and r.dropped[0] == 0) if axis == 0
               else (r.pad_read[2] == r.pad_read[3] and r.dropped[1] == 0) for r in records)


def even_sizes(model, low: int = 32, high: int = 1024) -> list[int]:
    """Square input sizes in [low, high] at which ``model`` pads evenly everywhere."""
    trace = size_program(model, (high, high))
    if "dynamic" in trace.notes:
        return [s for s in range(low, high + 1) if is_even(model, (s, s))]
    return [s for s in range(low, high + 1) if _replay_even(trace, (s, s))]


def _steps(trace):
    """The replay of :func:`_replay` flattened to tuples, built once per trace: for each
    op, (index, source, kind, per-axis (before, after, k, s, d, own_after), ceil)."""
    if trace.steps is None:
        folds = _pad_folds(trace)
        absorbed = {pad.index for pad in folds.values()}
        steps = []
        for op in trace.ops:
            if op.op in ("fixed", "opaque"):
                steps.append((op.index, op.parent, "fixed", op.traced_out, False))
            elif op.op == "pad":
                steps.append((op.index, op.parent, "pad_folded" if op.index in absorbed else "pad", op.padding, False))
            else:
                pads, source = op.padding, op.parent
                parent = folds.get(op.index)
                if parent is not None:
                    pads, source = _folded_pads(parent, op), parent.parent
                axes = tuple((pads[i][0], pads[i][1], op.kernel[i], op.stride[i], op.dilation[i],
                              op.padding[i][1] if parent is not None else None) for i in range(len(pads)))
                steps.append((op.index, source, "window", axes, op.ceil_mode))
        trace.steps = steps
    return trace.steps


def _replay_even(trace, size) -> bool:
    """:func:`_replay` reduced to 'is every op even?', stopping at the first uneven op."""
    sizes = {INPUT: tuple(size)}
    for index, source, kind, params, ceil in _steps(trace):
        if kind == "fixed":
            sizes[index] = params
            continue
        src = sizes[source]
        if kind.startswith("pad"):
            if kind == "pad" and any(b != a for b, a in params):
                return False
            sizes[index] = tuple(v + b + a for v, (b, a) in zip(src[-len(params):], params))
            continue
        src = src[-len(params):]
        out = []
        for n_in, (before, after, k, s, d, own_after) in zip(src, params):
            res = axis_read(n_in, before, after, k, s, d, ceil, own_after)
            if res is None or res[1] != res[2] or res[3]:
                return False
            out.append(res[0])
        sizes[index] = tuple(out)
    return True


def nearest_even_sizes(model, input_size, search: int = 512) -> dict:
    """The nearest sizes below and above ``input_size`` where the whole model is even.

    Height and width are independent (each axis's arithmetic involves only that axis),
    so each is searched on its own.
    """
    h, w = _parse_size(input_size)
    result = {}
    for key, axis, length, other in (("height", 0, h, w), ("width", 1, w, h)):
        below = next((s for s in range(length, max(0, length - search), -1) if _axis_even(model, axis, s, other)), None)
        above = next((s for s in range(length, length + search) if _axis_even(model, axis, s, other)), None)
        result[key] = {"below": below, "above": above}
    below = (result["height"]["below"], result["width"]["below"])
    above = (result["height"]["above"], result["width"]["above"])
    return {"below": list(below) if None not in below else None, "above": list(above) if None not in above else None}


def foveation_map(model, input_size):
    """Path counts ``[H, W]`` from each input pixel to the last feature map, and the
    periphery/centre ratio (mean count in the outer 10% band over the central half)."""
    h, w = _parse_size(input_size)
    trace = trace_spatial_ops(model, (h, w), foveation=True)
    if trace.foveation is None:
        raise PadbiasError("the model has no convolution or pooling op, so foveation is undefined")
    counts = trace.foveation
    counts = counts[None] if counts.dim() == 1 else counts  # a Conv1d model: one row [1, W]
    return counts, periphery_ratio(counts)


def periphery_ratio(counts) -> float:
    counts = counts[None] if counts.dim() == 1 else counts
    h, w = counts.shape
    bh, bw = (max(1, h // 10) if h > 1 else 0), max(1, w // 10)  # one row (1-D): only its two ends
    border = counts.clone()
    border[bh : h - bh, bw : w - bw] = float("nan")
    centre = counts[h // 4 : h - h // 4, w // 4 : w - w // 4]
    periphery = border[~border.isnan()]
    return float(periphery.mean() / centre.mean()) if centre.mean() > 0 else float("nan")
