"""Stimulus detectability maps: where in the input a model fails to see an object.

Mind the Pad ("Stimulus Detectability at Different Locations") moves a small
traffic light over every location of an image and plots the detector's confidence: zero
padding left SSD a blind spot near one border, and mirror padding removed it. Here the
stimulus is pasted on a background at every cell of a grid, all placements go through
the model in batches (sized for the device), and each placement's score is recorded:

* classifiers: the softmax probability of the class the model gives the stimulus when
  it is centred (so the map asks "is it still the same object here?");
* other models: ``score_fn(images) -> [N]``, e.g. a detector's confidence.

A *blind spot* is a connected region (4-neighbour, :func:`scipy.ndimage.label`) of at
least ``min_area`` grid cells whose score is below ``ratio`` × the map's median. The
mitigation view recomputes the map with the convolutions switched to ``reflect``,
``replicate`` or ``circular`` padding.

Stimuli, backgrounds and user images are *pixel* values (uint8 0-255 or float 0-1,
``HxWxC`` or ``CxHxW``, see :mod:`pytest_padbias.blindspot_stimuli`); they are normalised
with the weights' ``mean``/``std`` after the stimulus is placed. Only
:func:`no_blind_spot_arguments` runs without torch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .blindspot_stimuli import input_channels, load_stimulus, make_background, normalisation
from .result import PadbiasError

#: Default placements per axis: 16 x 16 = 256 forward passes, about 8 s for
#: MobileNetV2 at 224 on two idle CPU cores (stride 10 px for its 75 px stimulus).
DEFAULT_GRID_STEPS = 16
#: Images per forward pass, as a pixel budget: 4 images of 224x224 on CPU, where
#: MobileNetV2 runs fastest per image at batches of 2-4 (its activations stay in
#: cache; at 32 it is 2-3x slower per image), and 16x that on a GPU.
CPU_BATCH_PIXELS = 4 * 224 * 224
GPU_BATCH_PIXELS = 64 * 224 * 224
MITIGATION_MODES = ("reflect", "replicate", "circular")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- results


@dataclass
class BlindSpot:
    """One connected region of low detectability.

    ``box`` is (top, left, bottom, right), bottom/right exclusive, in input pixels: the
    union of the stimulus footprints of the region's placements. ``borders`` names the
    input borders the region lies along (empty for a region in the interior).
    """

    box: tuple[int, int, int, int]
    cells: int
    min_ratio: float  # lowest score / median inside the region
    borders: tuple[str, ...]
    cell_index: list[tuple[int, int]] = field(repr=False, default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [int(v) for v in self.box],
            "cells": int(self.cells),
            "min_ratio": float(self.min_ratio),
            "borders": list(self.borders),
        }

    def describe(self) -> str:
        top, left, bottom, right = self.box
        where = ", ".join(self.borders) + " border" if self.borders else "interior"
        return f"rows {top}-{bottom}, cols {left}-{right} ({where}; {self.cells} cells, down to {self.min_ratio:.2f} of the median)"


@dataclass
class DetectabilityMap:
    """Scores of one stimulus swept over a grid; ``scores[i, j]`` has the stimulus's
    top-left corner at ``(tops[i], lefts[j])``."""

    scores: np.ndarray
    tops: np.ndarray
    lefts: np.ndarray
    stimulus_size: tuple[int, int]
    input_size: tuple[int, int]
    stride: int
    padding_mode: str  # "model" when the model's own padding was used
    ratio: float
    min_area: int
    regions: list[BlindSpot]
    target_class: int | None = None
    target_name: str | None = None
    centred_score: float = float("nan")
    preview: np.ndarray | None = field(default=None, repr=False)  # centred input, HxWx3 float 0-1

    @property
    def median(self) -> float:
        return float(np.median(self.scores))

    @property
    def min_median_ratio(self) -> float:
        return float(self.scores.min() / self.median)

    def to_json(self) -> dict[str, Any]:
        return {
            "padding_mode": self.padding_mode,
            "min": float(self.scores.min()),
            "median": self.median,
            "min_median_ratio": self.min_median_ratio,
            "centred_score": float(self.centred_score),
            "target_class": None if self.target_class is None else int(self.target_class),
            "target_name": self.target_name,
            "grid": [int(len(self.tops)), int(len(self.lefts))],
            "stride": int(self.stride),
            "stimulus_size": [int(v) for v in self.stimulus_size],
            "regions": [r.to_json() for r in self.regions],
        }


# --------------------------------------------------------------------------- argument checks (no torch)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def no_blind_spot_arguments(ratio=0.5, stride=None, stimulus=None, min_area=1) -> dict:
    """Validate the gate's arguments without torch; return them normalised.

    Raises :class:`PadbiasError` with one sentence naming the argument, its value and
    what is accepted. Checks that need the model (stimulus channels, size against the
    input) happen in :func:`detectability_map`.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)) or not 0 < ratio < 1:  # no float(): 10**400 overflows
        raise PadbiasError(f"no_blind_spot: ratio={ratio!r} is not accepted; give a number strictly between 0 and 1 (default 0.5)")
    if stride is not None and (not _is_int(stride) or stride < 1):
        raise PadbiasError(f"no_blind_spot: stride={stride!r} is not accepted; give a positive integer number of pixels or None for the default")
    if not _is_int(min_area) or min_area < 1:
        raise PadbiasError(f"no_blind_spot: min_area={min_area!r} is not accepted; give a positive integer number of grid cells (default 1)")
    if isinstance(stimulus, (str, os.PathLike)):
        path = Path(stimulus)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise PadbiasError(
                f"no_blind_spot: stimulus={str(stimulus)!r} is not an image file name; accepted: None, a path ending in "
                f"{', '.join(IMAGE_SUFFIXES)}, or an array/tensor of pixels"
            )
        if not path.is_file():
            raise PadbiasError(f"no_blind_spot: stimulus file {str(stimulus)!r} does not exist")
        stimulus = str(path)
    elif stimulus is not None:
        try:
            shape = tuple(np.shape(stimulus))
        except Exception:
            shape = None
        if shape is None or len(shape) not in (2, 3) or min(shape) < 1:
            raise PadbiasError(
                f"no_blind_spot: stimulus of type {type(stimulus).__name__} with shape {shape} is not accepted; give None, "
                "an image file path, or a 2-D/3-D array or tensor of pixels (HxW, HxWxC or CxHxW)"
            )
    return {"ratio": float(ratio), "stride": None if stride is None else int(stride), "stimulus": stimulus, "min_area": int(min_area)}


# --------------------------------------------------------------------------- the sweep


def placements(extent: int, size: int, stride: int) -> np.ndarray:
    """Top (or left) offsets 0, stride, ... and always the last one, so the stimulus
    touches both borders of the axis."""
    last = extent - size
    offsets = list(range(0, last + 1, stride))
    if offsets[-1] != last:
        offsets.append(last)
    return np.asarray(offsets, dtype=np.int64)


def default_stride(input_size, stimulus_size, steps: int = DEFAULT_GRID_STEPS) -> int:
    span = max(input_size[0] - stimulus_size[0], input_size[1] - stimulus_size[1])
    return max(1, math.ceil(span / (steps - 1)))


def _model_device_dtype(model):
    import torch

    param = next(iter(model.parameters()), None)
    return (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)


def _make_scorer(model, score_fn, target_class):
    """A function ``batch -> np.ndarray[N]`` of scores: ``score_fn``'s, or the softmax
    probability of ``target_class`` (a slice gives all classes)."""
    import torch

    if score_fn is not None:
        def score(batch):
            out = score_fn(batch)
            values = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float64)
            values = values.reshape(-1)
            if values.shape[0] != batch.shape[0]:
                raise PadbiasError(f"score_fn returned {values.shape[0]} scores for {batch.shape[0]} images; it must return one score per image")
            return values

        return score

    def score(batch):
        logits = model(batch)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch.shape[0] or logits.shape[1] < 2:
            from .model_checks import not_logits

            raise PadbiasError(not_logits(logits))
        finite = torch.isfinite(logits).all(dim=1)
        if not bool(finite.all()):
            raise PadbiasError(f"the model returned NaN or infinite logits for {int((~finite).sum())} of {batch.shape[0]} "
                               "stimulus placements; detectability needs finite outputs (check the weights and the input normalisation)")
        if not isinstance(target_class, slice) and not 0 <= target_class < logits.shape[1]:
            raise PadbiasError(f"target class {target_class} is not among the model's {logits.shape[1]} classes")
        return logits.float().softmax(dim=1)[:, target_class].cpu().numpy()

    return score


def place_stimulus(background, stimulus, positions):
    """A batch of the background with the stimulus pasted at each (top, left)."""
    h, w = stimulus.shape[-2:]
    batch = background.unsqueeze(0).repeat(len(positions), 1, 1, 1)
    for i, (top, left) in enumerate(positions):
        batch[i, :, top : top + h, left : left + w] = stimulus
    return batch


def default_batch_size(input_size, device="cpu") -> int:
    """Placements per forward pass: the pixel budget of the device, 1 to 1024 images."""
    budget = GPU_BATCH_PIXELS if str(device).startswith("cuda") else CPU_BATCH_PIXELS
    return int(min(1024, max(1, budget // (input_size[0] * input_size[1]))))


def sweep_scores(score, background, stimulus, tops, lefts, batch_size: int) -> np.ndarray:
    """``scores[len(tops), len(lefts)]`` of ``score(batch)`` with the stimulus at each cell.

    ``background`` and ``stimulus`` are already normalised and on the model's device.
    """
    import torch

    positions = [(int(t), int(l)) for t in tops for l in lefts]
    scores = np.empty(len(positions), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            scores[start : start + len(chunk)] = score(place_stimulus(background, stimulus, chunk))
    return scores.reshape(len(tops), len(lefts))


def _borders_of(rows, cols, grid_shape) -> tuple[str, ...]:
    """The input borders a region lies along.

    A side counts when the region covers at least half of the placements touching it
    (a band along the bottom is "bottom", not also "left" and "right"); a region that
    covers no side that far (a corner) is named by every side it touches.
    """
    n_rows, n_cols = grid_shape
    lines = {
        "top": (rows == 0, n_cols), "bottom": (rows == n_rows - 1, n_cols),
        "left": (cols == 0, n_rows), "right": (cols == n_cols - 1, n_rows),
    }
    along = tuple(side for side, (on, length) in lines.items() if on.sum() >= length / 2)
    return along or tuple(side for side, (on, _length) in lines.items() if on.any())


def find_blind_spots(scores, tops, lefts, stimulus_size, ratio=0.5, min_area=1) -> list[BlindSpot]:
    """Connected regions of >= ``min_area`` cells scoring below ``ratio`` × median."""
    from scipy import ndimage

    median = float(np.median(scores))
    labels, count = ndimage.label(scores < ratio * median)
    h, w = stimulus_size
    regions = []
    for index in range(1, count + 1):
        rows, cols = np.nonzero(labels == index)
        if len(rows) < min_area:
            continue
        box = (int(tops[rows].min()), int(lefts[cols].min()), int(tops[rows].max()) + h, int(lefts[cols].max()) + w)
        borders = _borders_of(rows, cols, labels.shape)
        regions.append(BlindSpot(box, len(rows), float(scores[rows, cols].min() / median), borders, list(zip(rows.tolist(), cols.tolist()))))
    regions.sort(key=lambda r: r.min_ratio)
    return regions


def detectability_map(
    model,
    input_size=(224, 224),
    *,
    stimulus=None,
    stimulus_size=None,
    background="grey",
    stride: int | None = None,
    ratio: float = 0.5,
    min_area: int = 1,
    score_fn: Callable | None = None,
    target_class: int | None = None,
    categories: Sequence[str] | None = None,
    padding_mode: str | None = None,
    mean=None,
    std=None,
    batch_size: int | None = None,
    seed: int = 0,
) -> DetectabilityMap:
    """Sweep the stimulus over the input and find the blind spots.

    ``padding_mode`` (zeros/reflect/replicate/circular) switches every padded conv for
    the sweep and restores it after. The classifier's target class is taken under the
    model's *own* padding, so maps under several modes score the same class.
    """
    import torch

    input_size = _checked_sweep(input_size, ratio, stride, min_area, batch_size)
    channels = input_channels(model)
    device, dtype = _model_device_dtype(model)
    batch_size = batch_size or default_batch_size(input_size, device.type)
    mean_t, std_t = normalisation(channels, mean, std)
    stim_pixels = load_stimulus(stimulus, input_size, channels, stimulus_size)
    back_pixels = make_background(background, input_size, channels, seed)
    stim = ((stim_pixels - mean_t) / std_t).to(device, dtype)
    back = ((back_pixels - mean_t) / std_t).to(device, dtype)
    h, w = stim.shape[-2:]
    stride = stride or default_stride(input_size, (h, w))
    tops, lefts = placements(input_size[0], h, stride), placements(input_size[1], w, stride)

    centre = ((input_size[0] - h) // 2, (input_size[1] - w) // 2)
    centred = place_stimulus(back, stim, [centre])
    centred_probabilities = None
    if score_fn is None and target_class is None:
        # The class the model gives the centred stimulus under its own padding.
        with torch.inference_mode():
            centred_probabilities = _make_scorer(model, None, slice(None))(centred)[0]
        target_class = int(np.argmax(centred_probabilities))
    score = _make_scorer(model, score_fn, target_class)
    known = float(centred_probabilities[target_class]) if centred_probabilities is not None and not padding_mode else None
    centred_score, scores = _sweep_under(model, padding_mode, score, centred, known, (back, stim, tops, lefts, batch_size),
                                         input_size)
    preview = _preview(back_pixels, stim_pixels, centre, channels)
    return DetectabilityMap(
        scores=scores, tops=tops, lefts=lefts, stimulus_size=(int(h), int(w)), input_size=input_size, stride=int(stride),
        padding_mode=padding_mode or "model", ratio=float(ratio), min_area=int(min_area),
        regions=find_blind_spots(scores, tops, lefts, (h, w), ratio, min_area),
        target_class=target_class if score_fn is None else None,
        target_name=(list(categories)[target_class] if categories and score_fn is None and target_class < len(categories) else None),
        centred_score=centred_score,
        preview=preview,
    )


def _checked_sweep(input_size, ratio, stride, min_area, batch_size) -> tuple[int, int]:
    """The sweep's arguments checked (a usage error naming the bad one); the input size as ints."""
    no_blind_spot_arguments(ratio=ratio, stride=stride, min_area=min_area)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise PadbiasError(f"batch_size={batch_size!r} is not accepted; give a positive integer or None for the default")
    input_size = (int(input_size[0]), int(input_size[1]))
    if stride is not None and stride > max(input_size):
        raise PadbiasError(f"no_blind_spot: stride={stride} is larger than the {input_size[0]}x{input_size[1]} input; "
                           f"give a stride of at most {max(input_size)} pixels")
    return input_size


def _sweep_under(model, padding_mode, score, centred, centred_score, sweep, input_size):
    """``(centred score, scores of every placement)`` with every padded conv switched to
    ``padding_mode`` (None: the model's own) for the sweep and restored after;
    ``centred_score`` is reused when already known. ``sweep`` is ``sweep_scores``'s
    ``(back, stim, tops, lefts, batch_size)``."""
    import torch

    from .padding import restore_padding, switch_padding

    previous = switch_padding(model, padding_mode) if padding_mode else {}
    try:
        with torch.inference_mode():
            if centred_score is None:
                centred_score = float(score(centred)[0])
        scores = sweep_scores(score, *sweep)
    except RuntimeError as exc:
        raise PadbiasError(f"the model cannot run with {padding_mode or 'its own'} padding at {input_size[0]}x{input_size[1]} "
                           f"({str(exc).splitlines()[0][:200]})") from None
    finally:
        restore_padding(model, previous)
    if not np.all(np.isfinite(scores)) or scores.min() < 0:
        raise PadbiasError("the scores are negative or not finite; detectability needs non-negative scores such as "
                           "probabilities or confidences")
    if np.median(scores) <= 0:
        raise PadbiasError("the stimulus scores 0 at most locations, so its detectability is undefined; give a stimulus "
                           "the model recognises")
    return centred_score, scores


def _preview(back_pixels, stim_pixels, centre, channels):
    """The centred stimulus on its background as an RGB array ``[H, W, 3]`` for the figure."""
    h, w = stim_pixels.shape[-2:]
    preview = back_pixels.clone()
    preview[:, centre[0] : centre[0] + h, centre[1] : centre[1] + w] = stim_pixels
    preview = preview.permute(1, 2, 0).numpy()
    return preview if channels == 3 else np.repeat(preview[..., :1], 3, axis=2)


def mitigation_maps(model, input_size=(224, 224), modes=("zeros",) + MITIGATION_MODES, **kwargs) -> dict[str, DetectabilityMap]:
    """The same sweep under each padding mode (the paper's zero vs mirror comparison).

    A mode the model cannot run with (reflect needs feature maps larger than the pad)
    maps to the :class:`PadbiasError` explaining why instead of a map.
    """
    maps: dict[str, Any] = {}
    target = kwargs.pop("target_class", None)
    for mode in modes:
        try:
            maps[mode] = detectability_map(model, input_size, padding_mode=mode, target_class=target, **kwargs)
        except PadbiasError as exc:
            if not maps:  # the first failure is about the arguments, not the mode
                raise
            maps[mode] = exc
            continue
        target = maps[mode].target_class
    return maps
