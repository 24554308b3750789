"""Stimuli and backgrounds for the detectability maps of :mod:`pytest_padbias.blindspots`.

Everything here is *pixel* values (uint8 0-255 or float 0-1, ``HxWxC`` or ``CxHxW``)
turned into float tensors ``[C, h, w]`` in [0, 1] with the channel count the model
takes; normalisation with the weights' mean/std happens once the stimulus is placed.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .result import PadbiasError

#: The default stimulus: the cat's face in skimage's "chelsea" (top, left, height, width).
#: MobileNetV2 calls it an Egyptian cat (p = 0.62) at a third of a 224 input on grey.
DEFAULT_STIMULUS_PHOTO = "chelsea"
DEFAULT_STIMULUS_BOX = (0, 80, 300, 300)
#: Default stimulus side as a fraction of the input's shorter side.
DEFAULT_STIMULUS_FRACTION = 1 / 3


def input_channels(model) -> int:
    """Channels the model's first convolution expects (3 when there is none)."""
    from .trace import first_conv

    conv = first_conv(model)
    return int(conv[1].in_channels) if conv is not None else 3


def pixels_to_chw(pixels, what: str, channels: int, from_file: bool = False):
    """Any pixel array/tensor -> float tensor ``[C, h, w]`` in [0, 1], channels checked."""
    import torch

    is_tensor = isinstance(pixels, torch.Tensor)
    array = pixels.detach().cpu().numpy() if is_tensor else np.asarray(pixels)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        # Tensors are CxHxW by torch convention, arrays and files HxWxC; when only the
        # other reading has a plausible channel count, take that one.
        chw_plausible = array.shape[0] in (1, 3, 4) or array.shape[0] == channels
        hwc_plausible = array.shape[2] in (1, 3, 4) or array.shape[2] == channels
        hwc = (hwc_plausible and not chw_plausible) if is_tensor else not (chw_plausible and not hwc_plausible)
        if hwc:
            array = np.moveaxis(array, 2, 0)
    else:
        raise PadbiasError(f"{what} must be a 2-D or 3-D array of pixels, got shape {tuple(array.shape)}")
    if from_file:
        if array.shape[0] == 4:  # RGBA: drop alpha
            array = array[:3]
        if array.shape[0] == 1 and channels == 3:  # a grey file for a colour model
            array = np.repeat(array, 3, axis=0)
    if array.shape[0] != channels:
        raise PadbiasError(f"{what} has {array.shape[0]} channels but the model takes {channels}; give a {channels}-channel image")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
        values = array.astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise PadbiasError(
                f"{what} has values in [{lo:.3g}, {hi:.3g}]; give pixel values (uint8 0-255 or float 0-1), "
                "not normalised ones — the model's mean/std are applied afterwards"
            )
    else:
        raise PadbiasError(f"{what} has dtype {array.dtype}; give uint8 or float pixels")
    return torch.from_numpy(np.ascontiguousarray(values)).clamp_(0.0, 1.0)


def _resize(chw, size: tuple[int, int]):
    import torch.nn.functional as F

    if tuple(chw.shape[-2:]) == tuple(size):
        return chw
    return F.interpolate(chw[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0, 1)


@functools.lru_cache(maxsize=1)
def _default_crop():
    import skimage.data  # the photograph of images.PHOTO_NAMES, read alone (not all ten)

    photo = getattr(skimage.data, DEFAULT_STIMULUS_PHOTO)()
    top, left, h, w = DEFAULT_STIMULUS_BOX
    return pixels_to_chw(photo[top : top + h, left : left + w], "default stimulus", 3)


def default_stimulus(side: int, channels: int = 3):
    """The cat's face from the bundled photographs, ``side`` x ``side`` pixels, ``[C, h, w]``."""
    crop = _default_crop().clone()
    if channels == 1:
        crop = crop.mean(0, keepdim=True)
    elif channels != 3:
        raise PadbiasError(f"the default stimulus is a colour photograph but the model takes {channels} channels; give a stimulus")
    return _resize(crop, (side, side))


def load_stimulus(stimulus, input_size, channels: int = 3, size=None):
    """The stimulus as a pixel tensor ``[C, h, w]`` that fits in ``input_size``.

    ``stimulus``: None (the default crop, a third of the input's shorter side), a path
    to an image file, or an array/tensor of pixels. ``size`` (int or (h, w)) resizes it.
    """
    h_in, w_in = input_size
    if stimulus is None:
        side = size if isinstance(size, int) else max(4, round(min(h_in, w_in) * DEFAULT_STIMULUS_FRACTION))
        chw = default_stimulus(side, channels)
    elif isinstance(stimulus, (str, os.PathLike)):
        path = Path(stimulus)
        if not path.is_file():
            raise PadbiasError(f"stimulus file {str(stimulus)!r} does not exist")
        try:
            from PIL import Image  # matplotlib's own image reader, so always installed

            with Image.open(path) as image:
                pixels = np.asarray(image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB"))
        except Exception as exc:
            raise PadbiasError(f"stimulus file {str(stimulus)!r} is not a readable image ({type(exc).__name__}: {exc})") from None
        chw = pixels_to_chw(pixels, f"stimulus file {path.name}", channels, from_file=True)
    else:
        chw = pixels_to_chw(stimulus, "the stimulus", channels)
    if size is not None and stimulus is not None:
        chw = _resize(chw, (size, size) if isinstance(size, int) else tuple(size))
    h, w = chw.shape[-2:]
    if h > h_in or w > w_in:
        raise PadbiasError(f"the stimulus is {h}x{w} pixels, larger than the {h_in}x{w_in} input; give a smaller stimulus")
    return chw


def make_background(background, input_size, channels: int = 3, seed: int = 0):
    """``"grey"`` (0.5 everywhere), ``"natural"`` (a bundled photograph chosen by
    ``seed``) or pixels of exactly ``input_size`` -> pixel tensor ``[C, H, W]``."""
    import torch

    h, w = input_size
    if isinstance(background, str) and background == "grey":
        return torch.full((channels, h, w), 0.5)
    if isinstance(background, str) and background == "natural":
        from .images import PHOTO_NAMES, natural_images

        photos = natural_images(len(PHOTO_NAMES), size=(h, w), normalize=False)
        # Never the photograph the default stimulus comes from.
        choices = [i for i, name in enumerate(PHOTO_NAMES) if name != DEFAULT_STIMULUS_PHOTO]
        chw = photos[choices[seed % len(choices)]]
        return chw.mean(0, keepdim=True) if channels == 1 else chw
    if isinstance(background, str):
        raise PadbiasError(f"background={background!r} is not accepted; give 'grey', 'natural' or an array of pixels of the input size")
    chw = pixels_to_chw(background, "the background", channels)
    if tuple(chw.shape[-2:]) != (h, w):
        raise PadbiasError(f"the background is {chw.shape[-2]}x{chw.shape[-1]} pixels but the input size is {h}x{w}; give a background of the input size")
    return chw


def normalisation(channels, mean, std):
    """``mean``/``std`` as ``[C, 1, 1]`` tensors; ImageNet's for 3 channels when not given,
    none (0 and 1) for other channel counts."""
    import torch

    if mean is None or std is None:
        from .images import IMAGENET_MEAN, IMAGENET_STD

        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.0,) * channels, (1.0,) * channels)
    if len(mean) != channels or len(std) != channels:
        raise PadbiasError(f"mean/std have {len(mean)}/{len(std)} values but the model takes {channels} channels")
    return torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
