"""Replay a model's forward pass once on the meta device and record what it does.

One meta forward (no real compute, any input size) under a ``TorchFunctionMode`` gives
every convolution, pooling and explicit padding op with its parameters, the qualified
name of the module that ran it, and which earlier op produced its input. That list is a
*size program*: :mod:`pytest_padbias.geometry` replays it with integer arithmetic for any
input size, so checking a thousand sizes costs one trace.

The same pass can also meter the activations (``meter=True``): every tensor an op returns
is counted from that op until Python frees it, which is what
:func:`pytest_padbias.resources.activation_profile` plans memory with. :func:`shared_replay`
makes that metered pass once per model and input size, so the padding check and the
memory estimate of one model read the same replay.

The pass can also carry a one-channel "shadow" of the input through an all-ones,
linearised copy of the conv/pool stack; the gradient of its output sum is the number of
paths from each input pixel to the last feature map (the foveation map).
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
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


@dataclass
class Activations:
    """Activation bytes of one image's forward pass (batch 1), from a metered replay.

    ``peak``: most bytes alive at once (views and in-place results are not counted
    twice); ``total``: bytes of every tensor made; ``largest``: the largest single tensor;
    ``input_bytes``: the input's; ``conv_outputs``: (layer, channels, height, width) of
    every 2-D conv output.
    """

    peak: int
    total: int
    largest: int
    input_bytes: int
    conv_outputs: list[tuple[str, int, int, int]]


@dataclass
class Replay:
    """What one meta-device forward pass recorded.

    ``refused`` is why the spatial ops cannot be analysed (e.g. a 3-D convolution) when a
    metered pass went on past it for the meter's sake; :meth:`spatial_trace` raises it.
    """

    trace: Trace
    activations: Activations | None = None
    refused: str | None = None

    def spatial_trace(self) -> Trace:
        """The spatial ops as a fresh :class:`Trace` of the caller's own (notes, steps)."""
        if self.refused is not None:
            raise PadbiasError(self.refused)
        return Trace(ops=list(self.trace.ops), input_size=self.trace.input_size)


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


class _ByIdentity:
    """Values keyed by the identity of live tensors, holding none of them alive (so the
    meter sees when each is freed): an entry whose tensor was freed never matches a new
    tensor that reuses its ``id``."""

    __slots__ = ("_items",)

    def __init__(self):
        self._items = {}

    def __setitem__(self, tensor, value):
        self._items[id(tensor)] = (weakref.ref(tensor), value)

    def get(self, tensor, default=None):
        item = self._items.get(id(tensor))
        return item[1] if item is not None and item[0]() is tensor else default


class _Recorder:
    """What one replay records, op by op: the spatial ops (with the op that produced each
    input), the foveation shadows, and with ``meter`` the bytes of every tensor made."""

    def __init__(self, input_size, foveation=False, meter=False):
        import torch

        self.size = input_size
        self.foveation = foveation
        self.meter = meter
        self.conv, self.conv3d, self.pool, self.pad, self.adds = _functions()
        self.tensor_type = torch.Tensor
        self.stack: list[str] = []  # qualified names of the modules running
        self.ops: list[SpatialOp] = []
        self.tags = _ByIdentity()  # tensor -> index of the op that produced its spatial size
        self.refused: str | None = None
        self.shadows = _ByIdentity()
        self.last_shadow = None
        self.conv_shadows: list = []
        self.live = self.peak = self.total = self.largest = 0
        self.tracked: dict[int, int] = {}  # id(tensor) -> bytes, while alive
        self.conv_outputs: list[tuple[str, int, int, int]] = []

    def begin(self, x):
        """Take ``x`` as the model input; with foveation, return the input of its shadow."""
        import torch

        self.tag(x, INPUT)
        if not self.foveation:
            return None
        # float64: path counts grow geometrically with depth and overflow float32 in DenseNets,
        # ResNet-152 and EfficientNet-B5+ (and are exact integers only up to 2**24 there)
        fov_input = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=torch.float64, requires_grad=True)
        self._set_shadow(x, fov_input)
        return fov_input

    def mode(self):
        """A ``TorchFunctionMode`` that hands every torch call to :meth:`handle`."""
        from torch.overrides import TorchFunctionMode

        recorder = self

        class Recording(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return recorder.handle(func, args, kwargs or {})

        return Recording()

    def handle(self, func, args, kwargs):
        """Run one torch call, meter its outputs and record what it does to spatial sizes."""
        layer = self.stack[-1] if self.stack else ""
        result = self._call(func, args, kwargs, layer)
        if self.meter:
            self._measure(func, result, layer)
        if self.refused is not None:
            return result  # metered on for the memory estimate; the spatial record stops here
        if func in self.conv3d:
            self.refuse(f"layer {layer or '<model>'} uses a 3-D convolution; pytest-padbias analyses 1-D and 2-D convolutions only")
        elif func in self.conv:
            self._conv(self.conv[func], args, kwargs, result, layer)
        elif func in self.pool:
            self._pool(*self.pool[func], args, kwargs, result, layer)
        elif func in self.pad:
            self._pad(args, kwargs, result, layer)
        else:
            self._propagate(func, args, kwargs, result, layer)
        return result

    def refuse(self, why: str):
        """A model this analysis cannot trace: raise, or with the meter note it and go on."""
        if not self.meter:
            raise PadbiasError(why)
        self.refused = self.refused or why

    def _call(self, func, args, kwargs, layer):
        try:
            return func(*args, **kwargs)
        except RuntimeError as exc:
            if func in self.conv or func in self.pool:
                x = args[0] if args else kwargs.get("input")
                h, w = self.size
                raise PadbiasError(
                    f"input size {h}x{w} is too small for the model: layer {layer or '<model>'} gets a "
                    f"{'x'.join(map(str, x.shape[2:]))} input ({str(exc).splitlines()[0][:160]})"
                ) from None
            raise

    # ----------------------------------------------------------------- spatial ops

    def _conv(self, n, args, kwargs, result, layer):
        a = _bind(args, kwargs, _CONV_ARGS, _CONV_DEFAULTS)
        x, p = a["input"], a["padding"]
        k, s, d = tuple(a["weight"].shape[-n:]), _tuple(a["stride"], n), _tuple(a["dilation"], n)
        self._record(f"conv{n}d", layer, x, result, n, k=k, s=s, d=d, pads=_conv_padding(p, k, d, n))
        shadow = self._shadow(x)
        if shadow is not None:
            self._set_shadow(result, _conv_shadow(shadow, n, k, s, p, d))
            if self.foveation == "layers":
                self.conv_shadows.append((layer, self.last_shadow))

    def _pool(self, name, n, args, kwargs, result, layer):
        a = _bind(args, kwargs, _AVG_ARGS if name.startswith("avg") else _POOL_ARGS, _POOL_DEFAULTS)
        x = a["input"]
        k = _tuple(a["kernel_size"], n)
        s = _tuple(a["stride"] if a["stride"] not in (None, [], ()) else k, n)
        d = _tuple(a.get("dilation", 1), n)
        p, ceil = _tuple(a["padding"], n), bool(a["ceil_mode"])
        out = result[0] if isinstance(result, tuple) else result
        self._record(name, layer, x, out, n, k=k, s=s, d=d, pads=tuple((pp, pp) for pp in p), ceil=ceil)
        shadow = self._shadow(x)
        if shadow is not None:
            self._set_shadow(out, _pool_shadow(shadow, n, k, s, p, d, ceil))

    def _pad(self, args, kwargs, result, layer):
        import torch.nn.functional as F

        a = _bind(args, kwargs, _PAD_ARGS, {"mode": "constant", "value": None})
        x, pad = a["input"], list(a["pad"])
        n = min(2, len(pad) // 2)
        # F.pad lists (left, right, top, bottom): last axis first.
        pads = tuple((pad[2 * i], pad[2 * i + 1]) for i in range(n))[::-1]
        mode = "zeros" if a["mode"] == "constant" else a["mode"]
        self._record("pad", layer, x, result, n, pads=pads, mode=mode)
        shadow = self._shadow(x)
        if shadow is not None:
            self._set_shadow(result, F.pad(shadow, pad[: 2 * n], mode=a["mode"]))

    def tag(self, t, index):
        self.tags[t] = index

    def _record(self, op, layer, x, out, n, k=(), s=(), d=(), pads=(), ceil=False, mode="zeros"):
        parent = self.tags.get(x)
        if parent is None:
            parent = self._unknown_parent(x, n)
        self.ops.append(SpatialOp(
            index=len(self.ops), layer=layer, op=op, parent=parent, kernel=k, stride=s, dilation=d,
            padding=pads, ceil_mode=ceil, mode=mode, traced_in=_spatial(x, n), traced_out=_spatial(out, n),
        ))
        self.tag(out, len(self.ops) - 1)

    def _unknown_parent(self, x, n):
        # A tensor we did not see being made (e.g. created by a constructor with a
        # size computed in Python): its size does not follow from the input by
        # arithmetic we know, so replaying another size needs a fresh trace.
        self.ops.append(SpatialOp(index=len(self.ops), layer=self.stack[-1] if self.stack else "", op="opaque",
                                  parent=INPUT, traced_in=(), traced_out=_spatial(x, n)))
        self.tag(x, len(self.ops) - 1)
        return len(self.ops) - 1

    def _propagate(self, func, args, kwargs, result, layer):
        """Tag the outputs of any other op: same spatial size as a traced input keeps its
        producer; a new size is a ``fixed`` or ``opaque`` op; flattened outputs drop out."""
        outs = _flat_tensors(result, [])
        if not outs:
            return
        ins = [t for t in _flat_tensors((args, kwargs), []) if self.tags.get(t) is not None]
        if not ins:
            return
        for out in outs:
            if out.dim() < 3 and all(t.dim() >= 3 for t in ins):
                continue  # flattened: no spatial layout left
            same = [t for t in ins if t.dim() >= 2 and out.dim() >= 2 and t.shape[-2:] == out.shape[-2:]]
            if same:
                self.tag(out, self.tags.get(same[0]))
                if self.foveation:
                    self._merge_shadows(func, same, out)
                continue
            if out.dim() >= 3:
                n = 2 if out.dim() >= 4 else 1
                size = _spatial(out, n)
                kind = "fixed" if all(v == 1 for v in size) or "adaptive" in getattr(func, "__name__", "") else "opaque"
                self.ops.append(SpatialOp(index=len(self.ops), layer=layer, op=kind, parent=self.tags.get(ins[0]),
                                          traced_in=_spatial(ins[0], n), traced_out=size))
                self.tag(out, len(self.ops) - 1)

    # ----------------------------------------------------------------- foveation shadows

    def _shadow(self, t):
        return self.shadows.get(t) if self.foveation else None

    def _set_shadow(self, t, shadow):
        self.shadows[t] = shadow
        self.last_shadow = shadow

    def _merge_shadows(self, func, same, out):
        tracked = [s for s in map(self.shadows.get, same) if s is not None]
        if tracked:
            # Paths add where branches merge (residual sums, dense concatenation).
            self._set_shadow(out, sum(tracked[1:], tracked[0]) if func in self.adds else tracked[0])

    # ----------------------------------------------------------------- the meter

    def _measure(self, func, result, layer):
        for t in result if isinstance(result, (tuple, list)) else (result,):
            self._track(t)
        if self.conv.get(func) == 2 and isinstance(result, self.tensor_type) and result.dim() == 4:
            self.conv_outputs.append((layer, *map(int, result.shape[1:])))

    def _track(self, t):
        if not isinstance(t, self.tensor_type) or id(t) in self.tracked or t._base is not None:
            return
        nbytes = t.numel() * t.element_size()
        self.tracked[id(t)] = nbytes
        weakref.finalize(t, self._release, id(t), nbytes)
        self.live += nbytes
        self.total += nbytes
        self.largest = max(self.largest, nbytes)
        self.peak = max(self.peak, self.live)

    def _release(self, key, nbytes):
        if self.tracked.pop(key, None) is not None:
            self.live -= nbytes

    def activations(self, x) -> Activations:
        return Activations(self.peak, self.total, self.largest, x.numel() * x.element_size(), self.conv_outputs)


def _spatial(t, n):
    return tuple(t.shape[-n:])


def _conv_padding(p, k, d, n):
    """(before, after) per axis of a conv's ``padding`` argument (ints or a string)."""
    if isinstance(p, str):
        # PyTorch puts the odd extra row/column of 'same' padding after the input.
        totals = [0] * n if p == "valid" else [dd * (kk - 1) for kk, dd in zip(k, d)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((pp, pp) for pp in _tuple(p, n))


def _conv_shadow(shadow, n, k, s, p, d):
    """The shadow through an all-ones conv: the paths to each output position."""
    import torch

    ones = torch.ones((1, 1) + k, dtype=shadow.dtype, device="cpu")
    fn = torch.conv2d if n == 2 else torch.conv1d
    return fn(shadow, ones, None, s, p if isinstance(p, str) else _tuple(p, n), d)


def _pool_shadow(shadow, n, k, s, p, d, ceil):
    """The shadow through sum pooling: every input pixel under the window is one path
    (a 1-D pool as a 2-D one over one row; dilated pools pass the shadow on)."""
    import torch.nn.functional as F

    pooled = F.avg_pool2d(
        shadow if n == 2 else shadow.unsqueeze(-2), (k if n == 2 else (1,) + k),
        (s if n == 2 else (1,) + s), (p if n == 2 else (0,) + p),
        ceil_mode=ceil, count_include_pad=True, divisor_override=1,
    ) if d == (1,) * n else shadow
    return pooled if n == 2 else pooled.squeeze(-2)


# --------------------------------------------------------------------------- the replay


def replay(model, input_size, *, in_channels=None, foveation=False, meter=False, device="meta") -> Replay:
    """Run ``model`` once on a batch-1 ``input_size`` input on ``device`` and record its
    spatial ops; ``meter=True`` also measures its activations (:class:`Activations`).

    ``foveation=True`` also computes the path counts to the last feature map;
    ``foveation="layers"`` adds those to every conv layer's output (``layer_foveation``).
    A model the spatial analysis refuses (a 3-D convolution) raises PadbiasError, or with
    ``meter`` is replayed to the end and noted in :attr:`Replay.refused`.
    """
    import torch

    h, w = input_size
    recorder = _Recorder((h, w), foveation=foveation, meter=meter)
    shape = _input_shape(model, (h, w), in_channels, recorder)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.empty(shape, device=device, dtype=dtype)
    fov_input = recorder.begin(x)
    _run_forward(model, x, recorder, device)
    trace = Trace(ops=recorder.ops, input_size=(h, w))
    if foveation and recorder.last_shadow is not None and recorder.last_shadow is not fov_input:
        _foveation(trace, recorder, fov_input)
    return Replay(trace, recorder.activations(x) if meter else None, recorder.refused)


def trace_spatial_ops(model, input_size, in_channels=None, foveation=False, device="meta") -> Trace:
    """Run ``model`` once on a meta input of ``input_size`` and record its spatial ops
    (a fresh :func:`replay` without the meter; see there for ``foveation``)."""
    return replay(model, input_size, in_channels=in_channels, foveation=foveation, device=device).trace


def _input_shape(model, input_size, in_channels, recorder):
    """The batch-1 input: ``[1, C, L]`` for a model that starts with Conv1d (the width is
    its length), ``[1, C, H, W]`` otherwise."""
    h, w = input_size
    if in_channels is None:
        in_channels = _first_in_channels(model)
    dims = _first_conv_dims(model)
    if dims not in (1, 2):
        recorder.refuse(f"the model's first convolution is a {dims}-D convolution; pytest-padbias analyses the padding of 1-D and 2-D convolutions only")
    return (1, in_channels, w) if dims == 1 else (1, in_channels, h, w)


@contextlib.contextmanager
def _layer_names(model, stack):
    """Keep ``stack[-1]`` the qualified name of the module running, while inside."""
    handles = []
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(lambda m, a, _n=name: stack.append(_n) and None))
            # A forward hook that returns a value replaces the module's output: return None.
            handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _run_forward(model, x, recorder, device):
    """One forward pass of ``model`` on ``x`` (its parameters as empty ``device`` tensors)
    under ``recorder``; any failure as one PadbiasError (a refusal noted first wins)."""
    import torch

    h, w = recorder.size
    try:
        with _layer_names(model, recorder.stack), torch.no_grad() if not recorder.foveation else contextlib.nullcontext():
            state = {k: torch.empty_like(v, device=device) for k, v in _named_tensors(model)}
            # The model's own warnings (e.g. torch on even-kernel 'same' padding) say
            # nothing about this analysis; keep them out of the user's warning filters.
            with warnings.catch_warnings(), recorder.mode():
                warnings.simplefilter("ignore")
                torch.func.functional_call(model, state, (x,))
    except Exception as exc:
        if recorder.refused is not None:
            raise PadbiasError(recorder.refused) from None
        if isinstance(exc, PadbiasError):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        why = ""
        if device == "meta" and "meta" in str(exc):
            why = ("; the padding trace runs the model on the meta device, without values, so a forward pass that "
                   "depends on tensor values (e.g. .item(), boxes, NMS) cannot be traced: gate its convolutional part "
                   "(e.g. a padbias_model fixture returning the backbone)")
        raise PadbiasError(f"the model cannot run on a {h}x{w} input ({type(exc).__name__}: {first}){why}") from None


def _foveation(trace, recorder, fov_input):
    """Path counts from the shadows: of the last feature map, and of each conv output."""
    import torch

    for layer, shadow in recorder.conv_shadows:
        # Each conv output's own map: the foveation of the network up to that layer.
        (grad,) = torch.autograd.grad(shadow.sum(), fov_input, retain_graph=True)
        trace.layer_foveation.append((layer, grad[0, 0].detach()))
    recorder.last_shadow.sum().backward()
    trace.foveation = fov_input.grad[0, 0].detach()


_REPLAYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def module_signature(model) -> tuple:
    """What a cached replay of ``model`` depends on: its modules' names, types and padding modes."""
    return tuple((name, type(m).__name__, getattr(m, "padding_mode", None)) for name, m in model.named_modules())


def shared_replay(model, input_size) -> Replay:
    """The metered :func:`replay` of ``model`` at ``input_size``, made once per model,
    structure and size and shared by the padding check
    (:func:`pytest_padbias.geometry.size_program`) and the memory estimate
    (:func:`pytest_padbias.resources.activation_profile`). Failures are raised each time,
    never cached."""
    h, w = input_size
    key = (h, w, module_signature(model))
    cached = _REPLAYS.get(model)
    if cached is not None and key in cached:
        return cached[key]
    result = replay(model, (h, w), meter=True)
    _REPLAYS.setdefault(model, {})[key] = result
    return result


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
