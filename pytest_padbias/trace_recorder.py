"""What one replay of :mod:`pytest_padbias.trace` records, op by op, under a
``TorchFunctionMode``: each convolution, pooling and explicit padding op with its
parameters and the op that produced its input, the foveation shadows (path counts through
an all-ones copy of the conv/pool stack), and with ``meter`` the bytes of every tensor made.
"""
from __future__ import annotations

import weakref

from .result import PadbiasError
from .trace import INPUT, Activations, SpatialOp


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


class Recorder:
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
