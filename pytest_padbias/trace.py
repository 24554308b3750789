"""Record the spatial ops of a model's forward pass on the meta device.

One meta forward (no real compute, any input size) under a ``TorchFunctionMode`` gives
every convolution, pooling and explicit padding op with its parameters, the qualified
name of the module that ran it, and which earlier op produced its input. That list is a
*size program*: :mod:`pytest_padbias.geometry` replays it with integer arithmetic for any
input size, so checking a thousand sizes costs one trace.

The same pass can also carry a one-channel "shadow" of the input through an all-ones,
linearised copy of the conv/pool stack; the gradient of its output sum is the number of
paths from each input pixel to the last feature map (the foveation map).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

from .result import PadbiasError

INPUT = -1  # parent index of ops that read the model input


@dataclass
class SpatialOp:
    """One size-changing op of the forward pass, per spatial axis (H, W) or (W,)."""

    index: int
    layer: str
    op: str  # conv1d, conv2d, max_pool2d, avg_pool2d, pad, fixed (output size independent of input), opaque
    parent: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()  # (before, after) per axis
    ceil_mode: bool = False
    mode: str = "zeros"
    traced_in: tuple[int, ...] = ()
    traced_out: tuple[int, ...] = ()


@dataclass
class Trace:
    ops: list[SpatialOp]
    input_size: tuple[int, int]
    foveation: object = None  # torch.Tensor [H, W] of path counts, when asked for
    layer_foveation: list = field(default_factory=list)  # [(conv layer, [H, W] counts)], foveation="layers"
    notes: list[str] = field(default_factory=list)
    steps: list | None = None  # geometry's flattened replay, built on first use


def _tuple(v, n):
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 else v


def _functions():
    import torch
    import torch.nn.functional as F

    conv = {torch.conv1d: 1, torch.conv2d: 2, F.conv1d: 1, F.conv2d: 2}
    conv3d = {torch.conv3d, F.conv3d}
    pool = {
        F.max_pool1d: ("max_pool1d", 1), F.max_pool2d: ("max_pool2d", 2),
        F.max_pool1d_with_indices: ("max_pool1d", 1), F.max_pool2d_with_indices: ("max_pool2d", 2),
        torch.max_pool1d: ("max_pool1d", 1), torch.max_pool2d: ("max_pool2d", 2),
        F.avg_pool1d: ("avg_pool1d", 1), F.avg_pool2d: ("avg_pool2d", 2),
        torch.avg_pool1d: ("avg_pool1d", 1),
    }
    pad = {F.pad, torch._C._nn.pad}
    adds = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__,
            torch.Tensor.__radd__, torch.cat, torch.concat}
    return conv, conv3d, pool, pad, adds


def _bind(args, kwargs, names, defaults):
    """Positional + keyword arguments of a functional op as a dict (F.* signatures)."""
    out = dict(defaults)
    out.update(zip(names, args))
    out.update(kwargs)
    return out


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
_PAD_ARGS = ("input", "pad", "mode", "value")


def _flat_tensors(obj, out):
    import torch

    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flat_tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat_tensors(o, out)
    return out


def trace_spatial_ops(model, input_size, in_channels=None, foveation=False, device="meta") -> Trace:
    """Run ``model`` once on a meta input of ``input_size`` and record its spatial ops.

    ``foveation=True`` also computes the path counts to the last feature map;
    ``foveation="layers"`` adds those to every conv layer's output (``layer_foveation``).
    """
    import torch
    from torch.overrides import TorchFunctionMode

    conv_fns, conv3d_fns, pool_fns, pad_fns, add_fns = _functions()
    h, w = input_size
    if in_channels is None:
        in_channels = _first_in_channels(model)
    ops: list[SpatialOp] = []
    tags: dict[int, int] = {}  # id(tensor) -> index of the op that produced its spatial size
    keep_alive: list = []
    shadows: dict[int, object] = {}
    last_shadow = [None]
    conv_shadows: list = []
    stack: list[str] = []

    def spatial(t, n):
        return tuple(t.shape[-n:])

    def tag(t, index):
        tags[id(t)] = index
        keep_alive.append(t)

    def set_shadow(t, s):
        shadows[id(t)] = s
        last_shadow[0] = s

    class Tracer(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            layer = stack[-1] if stack else ""
            try:
                result = func(*args, **kwargs)
            except RuntimeError as exc:
                if func in conv_fns or func in pool_fns:
                    x = args[0] if args else kwargs.get("input")
                    raise PadbiasError(
                        f"input size {h}x{w} is too small for the model: layer {layer or '<model>'} gets a "
                        f"{'x'.join(map(str, x.shape[2:]))} input ({str(exc).splitlines()[0][:160]})"
                    ) from None
                raise
            if func in conv3d_fns:
                raise PadbiasError(f"layer {layer or '<model>'} uses a 3-D convolution; pytest-padbias analyses 1-D and 2-D convolutions only")
            if func in conv_fns:
                n = conv_fns[func]
                a = _bind(args, kwargs, _CONV_ARGS, _CONV_DEFAULTS)
                x, wt = a["input"], a["weight"]
                k, s, d = tuple(wt.shape[-n:]), _tuple(a["stride"], n), _tuple(a["dilation"], n)
                p = a["padding"]
                if isinstance(p, str):
                    # PyTorch puts the odd extra row/column of 'same' padding after the input.
                    totals = [0] * n if p == "valid" else [dd * (kk - 1) for kk, dd in zip(k, d)]
                    pads = tuple((t // 2, t - t // 2) for t in totals)
                else:
                    pads = tuple((pp, pp) for pp in _tuple(p, n))
                self._record(f"conv{n}d", layer, x, result, n, k=k, s=s, d=d, pads=pads)
                if foveation and id(x) in shadows:
                    ones = torch.ones((1, 1) + k, device="cpu")
                    fn = torch.conv2d if n == 2 else torch.conv1d
                    set_shadow(result, fn(shadows[id(x)], ones, None, s, p if isinstance(p, str) else _tuple(p, n), d))
                    if foveation == "layers":
                        conv_shadows.append((layer, last_shadow[0]))
                return result
            if func in pool_fns:
                name, n = pool_fns[func]
                a = _bind(args, kwargs, _AVG_ARGS if name.startswith("avg") else _POOL_ARGS, _POOL_DEFAULTS)
                x = a["input"]
                k = _tuple(a["kernel_size"], n)
                s = _tuple(a["stride"] if a["stride"] not in (None, [], ()) else k, n)
                d = _tuple(a.get("dilation", 1), n)
                pads = tuple((pp, pp) for pp in _tuple(a["padding"], n))
                out = result[0] if isinstance(result, tuple) else result
                self._record(name, layer, x, out, n, k=k, s=s, d=d, pads=pads, ceil=bool(a["ceil_mode"]))
                if foveation and id(x) in shadows:
                    sh = shadows[id(x)]
                    # Sum pooling: every input pixel under the window is one path.
                    pooled = torch.nn.functional.avg_pool2d(
                        sh if n == 2 else sh.unsqueeze(-2), (k if n == 2 else (1,) + k),
                        (s if n == 2 else (1,) + s), (_tuple(a["padding"], n) if n == 2 else (0,) + _tuple(a["padding"], n)),
                        ceil_mode=bool(a["ceil_mode"]), count_include_pad=True, divisor_override=1,
                    ) if d == (1,) * n else sh
                    set_shadow(out, pooled if n == 2 else pooled.squeeze(-2))
                return result
            if func in pad_fns:
                a = _bind(args, kwargs, _PAD_ARGS, {"mode": "constant", "value": None})
                x, pad = a["input"], list(a["pad"])
                n = min(2, len(pad) // 2)
                # F.pad lists (left, right, top, bottom): last axis first.
                pads = tuple((pad[2 * i], pad[2 * i + 1]) for i in range(n))[::-1]
                mode = "zeros" if a["mode"] == "constant" else a["mode"]
                self._record("pad", layer, x, result, n, pads=pads, mode=mode)
                if foveation and id(x) in shadows:
                    set_shadow(result, torch.nn.functional.pad(shadows[id(x)], pad[: 2 * n], mode=a["mode"]))
                return result
            self._propagate(func, args, kwargs, result, layer)
            return result

        def _record(self, op, layer, x, out, n, k=(), s=(), d=(), pads=(), ceil=False, mode="zeros"):
            parent = tags.get(id(x))
            if parent is None:
                parent = self._unknown_parent(x, n)
            ops.append(SpatialOp(
                index=len(ops), layer=layer, op=op, parent=parent, kernel=k, stride=s, dilation=d,
                padding=pads, ceil_mode=ceil, mode=mode, traced_in=spatial(x, n), traced_out=spatial(out, n),
            ))
            tag(out, len(ops) - 1)

        def _unknown_parent(self, x, n):
            # A tensor we did not see being made (e.g. created by a constructor with a
            # size computed in Python): its size does not follow from the input by
            # arithmetic we know, so replaying another size needs a fresh trace.
            ops.append(SpatialOp(index=len(ops), layer=stack[-1] if stack else "", op="opaque",
                                 parent=INPUT, traced_in=(), traced_out=spatial(x, n)))
            tag(x, len(ops) - 1)
            return len(ops) - 1

        def _propagate(self, func, args, kwargs, result, layer):
            outs = _flat_tensors(result, [])
            if not outs:
                return
            ins = [t for t in _flat_tensors((args, kwargs), []) if id(t) in tags]
            if not ins:
                return
            for out in outs:
                if out.dim() < 3 and all(t.dim() >= 3 for t in ins):
                    continue  # flattened: no spatial layout left
                same = [t for t in ins if t.dim() >= 2 and out.dim() >= 2 and t.shape[-2:] == out.shape[-2:]]
                if same:
                    tag(out, tags[id(same[0])])
                    if foveation:
                        tracked = [shadows[id(t)] for t in same if id(t) in shadows]
                        if tracked:
                            # Paths add where branches merge (residual sums, dense concatenation).
                            set_shadow(out, sum(tracked[1:], tracked[0]) if func in add_fns else tracked[0])
                    continue
                if out.dim() >= 3:
                    n = 2 if out.dim() >= 4 else 1
                    size = spatial(out, n)
                    kind = "fixed" if all(v == 1 for v in size) or "adaptive" in getattr(func, "__name__", "") else "opaque"
                    ops.append(SpatialOp(index=len(ops), layer=layer, op=kind, parent=tags[id(ins[0])],
                                         traced_in=spatial(ins[0], n), traced_out=size))
                    tag(out, len(ops) - 1)

    names = {m: name for name, m in model.named_modules()}
    handles = []
    for module, name in names.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, _n=name: stack.append(_n) and None))
        # A forward hook that returns a value replaces the module's output: return None.
        handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))
    # A model that starts with Conv1d takes [N, C, L]: the width is its length.
    dims = _first_conv_dims(model)
    if dims not in (1, 2):
        raise PadbiasError(f"the model's first convolution is a {dims}-D convolution; pytest-padbias analyses the padding of 1-D and 2-D convolutions only")
    shape = (1, in_channels, w) if dims == 1 else (1, in_channels, h, w)
    x = torch.empty(shape, device=device)
    tag(x, INPUT)
    fov_input = None
    if foveation:
        fov_input = torch.ones((1, 1) + shape[2:], requires_grad=True)
        set_shadow(x, fov_input)
    try:
        with torch.no_grad() if not foveation else contextlib.nullcontext():
            state = {k: torch.empty_like(v, device=device) for k, v in _named_tensors(model)}
            # The model's own warnings (e.g. torch on even-kernel 'same' padding) say
            # nothing about this analysis; keep them out of the user's warning filters.
            with warnings.catch_warnings(), Tracer():
                warnings.simplefilter("ignore")
                torch.func.functional_call(model, state, (x,))
    except PadbiasError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        why = ""
        if device == "meta" and "meta" in str(exc):
            why = ("; the padding trace runs the model on the meta device, without values, so a forward pass that "
                   "depends on tensor values (e.g. .item(), boxes, NMS) cannot be traced: gate its convolutional part "
                   "(e.g. a padbias_model fixture returning the backbone)")
        raise PadbiasError(f"the model cannot run on a {h}x{w} input ({type(exc).__name__}: {first}){why}") from None
    finally:
        for hd in handles:
            hd.remove()
    trace = Trace(ops=ops, input_size=(h, w))
    if foveation and last_shadow[0] is not None and last_shadow[0] is not fov_input:
        for layer, shadow in conv_shadows:
            # Each conv output's own map: the foveation of the network up to that layer.
            (grad,) = torch.autograd.grad(shadow.sum(), fov_input, retain_graph=True)
            trace.layer_foveation.append((layer, grad[0, 0].detach()))
        last_shadow[0].sum().backward()
        trace.foveation = fov_input.grad[0, 0].detach()
    return trace


def _named_tensors(model):
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def first_conv(model):
    """``(name, module)`` of the model's first convolution (any dimension), or None."""
    import torch.nn as nn

    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def _first_conv_dims(model) -> int:
    conv = first_conv(model)
    return len(conv[1].kernel_size) if conv is not None else 2


def _first_in_channels(model) -> int:
    conv = first_conv(model)
    if conv is None:
        raise PadbiasError("the model has no convolution layer (nn.Conv1d/Conv2d), so it has no padding to analyse")
    return conv[1].in_channels


def axis_read(n_in, before, after, k, s, d, ceil, own_after=None):
    """What a sliding window op reads along one axis.

    Returns ``(n_out, pad_read_before, pad_read_after, dropped)``: output length, padding
    positions inside the span the windows cover on each side (ceil_mode may read past
    the declared padding), and input positions after the last window (never read).
    ``own_after`` is the op's own padding after the input when ``before``/``after`` also
    hold an explicit pad folded into it: PyTorch's ceil_mode rule counts the explicit
    pad as input.
    """
    length = before + n_in + after
    span = d * (k - 1) + 1
    if ceil:
        # PyTorch: ceil((length - span) / s) + 1 windows, even when the span is longer than
        # the padded input (the one window then reads past it)
        n_out = -((span - length) // s) + 1
        if (n_out - 1) * s >= length - (after if own_after is None else own_after):  # PyTorch: the last window must start inside the input
            n_out -= 1
        if n_out < 1:
            return None
    else:
        if length < span:
            return None
        n_out = (length - span) // s + 1
    end = (n_out - 1) * s + span - 1
    last_input = before + n_in - 1
    return n_out, min(before, end + 1), max(0, end - last_input), max(0, last_input - end)
