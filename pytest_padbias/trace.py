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
paths from each input pixel to the last feature map (the foveation map). What a pass
records op by op is :class:`pytest_padbias.trace_recorder.Recorder`.
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

    from .trace_recorder import Recorder

    h, w = input_size
    recorder = Recorder((h, w), foveation=foveation, meter=meter)
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
