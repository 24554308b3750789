"""Switch the padding mode of a model's convolutions (zeros, reflect, replicate, circular)."""
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
