"""Switch the padding mode of a model's convolutions, or of chosen output channels of chosen layers."""
from __future__ import annotations

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def switch_padding(model, mode: str):
    """Set ``padding_mode`` of every padded ``nn.Conv1d/2d/3d`` in ``model`` to ``mode``.

    Returns a dict ``{qualified_name: previous_mode}`` that :func:`restore_padding`
    takes to undo the change. The model is changed in place.
    """
    import torch.nn as nn

    if mode not in PADDING_MODES:
        raise ValueError(f"padding mode must be one of {', '.join(PADDING_MODES)}; got {mode!r}")
    previous = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and any(
            p > 0 for p in (module._reversed_padding_repeated_twice or ())
        ):
            previous[name] = module.padding_mode
            module.padding_mode = mode
    return previous


def restore_padding(model, previous: dict) -> None:
    """Undo :func:`switch_padding`."""
    modules = dict(model.named_modules())
    for name, mode in previous.items():
        modules[name].padding_mode = mode


def _conv_with_padding(conv, x, mode: str, channels):
    """Output channels ``channels`` of ``conv`` applied to ``x`` padded with ``mode``.

    Computes only what the chosen channels need: their filters (and, for depthwise
    convolutions, their input channels), as ``nn.Conv2d`` does for a non-zeros mode.
    """
    import torch.nn.functional as F

    pad = tuple(conv._reversed_padding_repeated_twice)
    padded = F.pad(x, pad, mode="constant", value=0.0) if mode == "zeros" else F.pad(x, pad, mode=mode)
    weight = conv.weight[channels]
    bias = None if conv.bias is None else conv.bias[channels]
    if conv.groups == 1:
        return F.conv2d(padded, weight, bias, conv.stride, 0, conv.dilation, 1)
    if conv.groups == conv.in_channels == conv.out_channels:  # depthwise: channel c reads input c
        return F.conv2d(padded[:, channels], weight, bias, conv.stride, 0, conv.dilation, len(channels))
    full = F.conv2d(padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    return full[:, channels]


def switch_channel_padding(model, channels: dict, mode: str) -> dict:
    """Pad only the chosen output channels of chosen ``nn.Conv2d`` layers with ``mode``.

    ``channels`` maps a layer's qualified name to the output channel indices to switch.
    A forward hook recomputes those channels from the layer's input with the new padding
    and writes them into the layer's output; every other channel is the layer's own
    output, untouched, so it stays bit-identical. Returns a handle for
    :func:`restore_channel_padding`. Raises :class:`PadbiasError` for an unknown layer, a
    layer that is not a 2D convolution, a channel out of range, or an unknown mode.
    """
    import torch
    import torch.nn as nn

    from .result import PadbiasError

    if mode not in PADDING_MODES:
        raise PadbiasError(f"padding mode must be one of {', '.join(PADDING_MODES)}; got {mode!r}")
    modules = dict(model.named_modules())
    plan = {}
    for name, chosen in channels.items():
        conv = modules.get(name)
        if conv is None:
            raise PadbiasError(f"the model has no layer named {name!r} (names as in model.named_modules())")
        if not isinstance(conv, nn.Conv2d):
            raise PadbiasError(f"layer {name!r} is a {type(conv).__name__}, not a Conv2d; only Conv2d output channels can be switched")
        chosen = sorted({int(c) for c in chosen})
        bad = [c for c in chosen if not 0 <= c < conv.out_channels]
        if bad:
            raise PadbiasError(f"layer {name!r} has {conv.out_channels} output channels; channel {bad[0]} does not exist")
        if chosen:
            plan[name] = (conv, chosen)

    def hook_for(conv, chosen):
        index = torch.tensor(chosen, dtype=torch.long)

        def hook(module, args, out):
            if mode == module.padding_mode:
                return None
            x = args[0]
            if mode == "reflect" and any(p >= size for p, size in zip(module._reversed_padding_repeated_twice[::2], x.shape[:1:-1])):
                raise PadbiasError(f"reflect padding of {module.padding} needs input maps larger than the padding; got {tuple(x.shape[2:])}")
            replaced = _conv_with_padding(module, x, mode, index.to(x.device))
            out = out.clone()
            out[:, index.to(out.device)] = replaced
            return out
        return hook

    return {"handles": {name: conv.register_forward_hook(hook_for(conv, chosen)) for name, (conv, chosen) in plan.items()},
            "channels": {name: chosen for name, (conv, chosen) in plan.items()},
            "mode": mode}


def restore_channel_padding(model, previous: dict) -> None:
    """Undo :func:`switch_channel_padding` (``model`` is accepted for symmetry with :func:`restore_padding`)."""
    for handle in previous["handles"].values():
        handle.remove()
    previous["handles"] = {}
