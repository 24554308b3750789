"""Shift robustness: consistency under shifts, the border-shift protocol, and the
``shift_robust`` gate.

Three measurements, usable without pytest:

* :func:`shift_consistency` -- the metric of the shift-invariance literature (Zhang 2019,
  *Making Convolutional Networks Shift-Invariant Again*): the probability that two views of
  the same image, displaced differently, get the same top-1 class. ImageNet reference
  values from that paper: ResNet-50 89.2%, MobileNetV2 about 86.5%.
* :func:`~pytest_padbias.border_shifts.border_shift_map` -- the protocol of the reproducibility report
  (``000_873c4a5f441dd0f4.txt``, section 4.2): push the content toward the 9 positions
  {north, centre, south} x {west, centre, east} by a fraction of its free margin and compare
  each view with the centred one; plus an offset map over a grid of (dy, dx).
* :func:`~pytest_padbias.shift_gate.search_flipping_shift` -- a hypothesis search for the
  worst shift (``target()`` on the probability drop) that then shrinks to the smallest shift
  that still flips the prediction.

And the gate's plain argument validation, :func:`shift_robust_arguments`; the gate itself is in :mod:`pytest_padbias.shift_gate`.

Conventions. A displacement ``(dy, dx)`` moves the content down/right for positive values
(north and west are negative). Views are made on the normalised tensor the model sees, so
``fill="zeros"`` shows the same value as the model's own zero padding. Classifiers are
judged by their top-1 class and the softmax probability of the centred view's top-1 class.
A model that is not a classifier is judged through ``score_fn(images) -> tensor[N]`` of
non-negative confidences (e.g. a detector's best box score): a view's "prediction" is
whether its score keeps at least half the centred view's score, so "the prediction
changes" means the score fell below half of the centred score, and the "drop" is the
centred score minus the view's score.

This module imports torch lazily: the plugin validates gate arguments at collection time.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .images import IMAGENET_MEAN, IMAGENET_STD
from .result import PadbiasError

#: Fills of the gate (issue 4). The measurement functions also take "circular" (wrap-around),
#: under which a circularly padded, stride-1, globally pooled net is exactly invariant.
FILLS = ("zeros", "reflect", "edge")
MEASURE_FILLS = FILLS + ("circular",)
POSITIONS = (
    ("north-west", "north", "north-east"),
    ("west", "centre", "east"),
    ("south-west", "south", "south-east"),
)
#: Views per image for the gate's consistency (15 pairs each) and its offset-map grid (5 x 5,
#: whose corners, edge midpoints and centre are the 3 x 3 border map).
GATE_VIEWS_PER_IMAGE = 6
GATE_GRID = 5


def default_max_shift(view_size: Sequence[int]) -> int:
    """1/14 of the view's shorter side: 16 px at 224, antialiased-cnns' range (256 -> 224 crops)."""
    return max(1, round(min(view_size) / 14))


# --------------------------------------------------------------------------- validation
def _check_fill(fill, accepted=MEASURE_FILLS, who="fill"):
    if fill not in accepted:
        raise PadbiasError(f"{who}={fill!r} is not a fill mode; accepted: {', '.join(accepted)}")


def _is_whole(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_max_shift(max_shift, image_size, who="max_shift") -> int:
    if not _is_whole(max_shift) or max_shift < 1:
        raise PadbiasError(f"{who}={max_shift!r} is not accepted; give a positive whole number of pixels")
    if max_shift >= min(image_size):
        raise PadbiasError(
            f"{who}={max_shift} is too large for {image_size[0]}x{image_size[1]} images; "
            f"a shift must be smaller than the image (at most {min(image_size) - 1} pixels)"
        )
    return int(max_shift)


def _as_source(photos_or_images, size, mean, std):
    """A normalised float tensor [N, C, H, W]: tensors pass through; photographs (H x W x 3
    uint8 arrays, a list of them, or an N x H x W x 3 array) are rendered at ``size``."""
    import torch

    if isinstance(photos_or_images, torch.Tensor):
        x = photos_or_images
        if x.dim() != 4 or not x.is_floating_point():
            raise PadbiasError(f"images must be a normalised float tensor [N, C, H, W]; got {x.dtype} of shape {tuple(x.shape)}")
        return x
    photos = photos_or_images
    if isinstance(photos, np.ndarray):
        photos = [photos] if photos.ndim in (2, 3) else list(photos)
    if not isinstance(photos, (list, tuple)) or not photos or not all(isinstance(p, np.ndarray) for p in photos):
        raise PadbiasError(
            "images must be a normalised tensor [N, C, H, W] or photographs as H x W x 3 uint8 arrays; "
            f"got {type(photos_or_images).__name__}"
        )
    return _render_photos(photos, size, mean, std)


def _render_photos(photos, size, mean, std):
    """Largest centred crop of each photo with the view's aspect ratio, resized with antialiasing."""
    import torch
    import torch.nn.functional as F

    h, w = size
    out = []
    for p in photos:
        p = np.repeat(p[:, :, None], 3, axis=2) if p.ndim == 2 else p
        if p.ndim != 3 or p.shape[2] < 3:
            raise PadbiasError(f"a photograph must be H x W x 3 (or H x W grey); got shape {p.shape}")
        ph, pw = p.shape[:2]
        ch = min(ph, round(pw * h / w))
        cw = min(pw, round(ch * w / h))
        top, left = (ph - ch) // 2, (pw - cw) // 2
        crop = np.ascontiguousarray(p[top : top + ch, left : left + cw, :3])
        t = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
        t = t / 255.0 if p.dtype == np.uint8 else t
        out.append(F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
    x = torch.cat(out).clamp_(0.0, 1.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- making views
def _source_coords(coords, n, fill):
    """Map canvas coordinates to source coordinates under ``fill``; also the inside mask."""
    import torch

    inside = (coords >= 0) & (coords < n)
    if fill == "circular":
        return coords % n, inside
    if fill == "reflect" and n > 1:  # torch's "reflect": ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        period = 2 * (n - 1)
        c = coords % period
        return torch.where(c >= n, period - c, c), inside
    return coords.clamp(0, n - 1), inside  # "edge" repeats the border; "zeros" masks it later


def shifted_views(sources, offsets, fill="reflect", index=None, size=None):
    """Views of ``sources[index[v]]`` ([N, C, H, W]) with the content moved by ``offsets[v] =
    (dy, dx)`` on a canvas of ``size`` (default: the sources' size).

    Canvas pixel (y, x) shows source pixel (y - dy, x - dx); where that falls outside the
    source it shows ``fill``. A canvas smaller than the source with negative offsets is a
    crop (no artificial border at all). One vectorised gather for all views.
    """
    import torch

    _check_fill(fill)
    dev = sources.device
    off = torch.as_tensor(offsets, dtype=torch.long, device=dev).reshape(-1, 2)
    idx = torch.arange(len(off), device=dev) if index is None else torch.as_tensor(index, dtype=torch.long, device=dev)
    h, w = size or sources.shape[-2:]
    ys, y_in = _source_coords(torch.arange(h, device=dev)[None, :] - off[:, :1], sources.shape[-2], fill)
    xs, x_in = _source_coords(torch.arange(w, device=dev)[None, :] - off[:, 1:], sources.shape[-1], fill)
    # Advanced indices on dims 0, 2, 3 around a slice: the result is [V, H, W, C].
    views = sources[idx[:, None, None], :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2).contiguous()
    if fill == "zeros":
        views.mul_((y_in[:, None, :, None] & x_in[:, None, None, :]).to(views.dtype))
    return views


# --------------------------------------------------------------------------- evaluating views
def _forward(model, score_fn, views):
    """Probabilities [B, classes] of a classifier, or scores [B] of ``score_fn``, checked."""
    import torch

    b, _, h, w = views.shape
    who = "the score function" if score_fn is not None else "the model"
    try:
        with torch.inference_mode():
            out = score_fn(views) if score_fn is not None else model(views)
            out = out.detach() if isinstance(out, torch.Tensor) else out
    except (RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PadbiasError(
            f"{who} cannot evaluate {h}x{w} views ({type(exc).__name__}: {first}); if the images are smaller than the model "
            "accepts, give larger images or a smaller max_shift"
        ) from None
    if score_fn is not None:
        out = torch.as_tensor(out).detach()
        out = out[:, 0] if out.dim() == 2 and out.shape[1] == 1 else out
        if tuple(out.shape) != (b,):
            raise PadbiasError(f"the score function returned shape {tuple(out.shape)}; it must return one score per image, shape ({b},)")
        if not bool(torch.isfinite(out).all()):
            raise PadbiasError(f"the score function returned NaN or infinite scores for {int((~torch.isfinite(out)).sum())} of {b} "
                               f"{h}x{w} views; shift robustness needs finite scores")
        if bool((out < 0).any()):
            raise PadbiasError(f"the score function returned a negative score ({float(out.min()):.4g}); it must return non-negative confidences such as probabilities")
        return out.float()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != b or out.shape[1] < 2:
        from .model_checks import not_logits

        if not isinstance(out, torch.Tensor):
            raise PadbiasError(not_logits(out))
        raise PadbiasError(
            f"the model returned shape {tuple(out.shape)}, not (N, classes) logits; for a model that is not a classifier "
            "give a score function (the padbias_score fixture) that returns one score per image"
        )
    finite = torch.isfinite(out).all(dim=1)
    if not bool(finite.all()):
        raise PadbiasError(
            f"the model returned NaN or infinite logits for {int((~finite).sum())} of {b} {h}x{w} views; "
            "shift robustness needs finite outputs (check the weights and the input normalisation)"
        )
    return out.float().softmax(dim=1)


def auto_batch_size(size, device) -> int:
    """Views per forward pass when none is given: about 2**18 input pixels per batch on CPU
    (5 views at 224 x 224, 28 at 96), 2**22 on GPU. On CPU large batches of large images
    are slower per view, their activations no longer fitting the caches: MobileNetV2 on one
    EPYC core takes 47-65 ms/view at 224 in batches of 1 to 10 but 118 in batches of 40,
    and at 96 px 24 ms/view alone but 11 in batches of 5 to 10."""
    budget = 2**22 if str(device).startswith("cuda") else 2**18
    return max(1, budget // (size[0] * size[1]))


def _evaluate(model, score_fn, sources, index, offsets, size, fill, batch_size):
    """Model outputs for all views, each batch of views made just before it is evaluated."""
    import torch

    batch_size = batch_size or auto_batch_size(size, sources.device)
    outs = []
    for start in range(0, len(index), batch_size):
        stop = start + batch_size
        views = shifted_views(sources, offsets[start:stop], fill, index=index[start:stop], size=size)
        outs.append(_forward(model, score_fn, views))
    return torch.cat(outs)


def _judge(out, ref_out, is_score):
    """Per view, against its image's centred view: (label, changed, drop of the reference score)."""
    if is_score:
        label = (out >= 0.5 * ref_out).long()  # 1 = still "detected" at half the centred score
        return label, label == 0, ref_out - out
    ref_label = ref_out.argmax(dim=1)
    label = out.argmax(dim=1)
    drop = ref_out.gather(1, ref_label[:, None])[:, 0] - out.gather(1, ref_label[:, None])[:, 0]
    return label, label != ref_label, drop


# --------------------------------------------------------------------------- consistency
@dataclass
class ShiftConsistency:
    """P(two differently displaced views of an image agree on the top-1 class)."""

    value: float
    per_image: list[float]
    pairs: int
    mode: str
    fill: str | None
    max_shift: int
    views_per_image: int

    def __float__(self) -> float:
        return self.value

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("value", "per_image", "pairs", "mode", "fill", "max_shift", "views_per_image")}


def _displacements(rng, n: int, k: int, max_shift: int):
    """``k`` distinct displacements in ``[-max_shift, max_shift]^2`` for each of ``n``
    images, as rows ``(dy, dx)`` image by image: a sample without replacement from the grid."""
    side = 2 * max_shift + 1
    cells = np.stack([rng.choice(side * side, size=k, replace=False) for _ in range(n)])
    return np.stack([cells // side - max_shift, cells % side - max_shift], axis=-1).reshape(-1, 2)


def _pair_agreement(labels):
    """For labels ``[n, k]`` (k views per image), 1.0 where a pair of an image's views has
    the same label: ``[n, k(k-1)/2]``."""
    import torch

    k = labels.shape[1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    return (labels[:, :, None] == labels[:, None, :])[:, upper].float()


def _view_source(photos_or_images, max_shift, mode, view_size, mean, std):
    """The batch views are taken from, the views' size and the resolved ``max_shift`` of
    :func:`shift_consistency` (crop mode: views inside a larger source; translate mode:
    views of the source's own size)."""
    import torch

    is_tensor = isinstance(photos_or_images, torch.Tensor)
    if max_shift is None:
        base = photos_or_images.shape[-2:] if is_tensor else view_size
        max_shift = default_max_shift(base) if (mode == "translate" or not is_tensor) else max(1, round(min(base) / 16))
    if mode == "crop":
        if is_tensor:
            h, w = photos_or_images.shape[-2:]
            _check_max_shift(max_shift, (h, w))
            if 2 * max_shift >= min(h, w):
                raise PadbiasError(
                    f"max_shift={max_shift} leaves no crop of {h}x{w} images (crops are {h - 2 * max_shift}x{w - 2 * max_shift}); "
                    f"in crop mode give at most {(min(h, w) - 1) // 2} pixels"
                )
            size = (h - 2 * max_shift, w - 2 * max_shift)
        else:
            _check_max_shift(max_shift, view_size)
            size = tuple(view_size)
        source = _as_source(photos_or_images, (size[0] + 2 * max_shift, size[1] + 2 * max_shift), mean, std)
        return source, size, max_shift
    source = _as_source(photos_or_images, view_size, mean, std)
    size = tuple(source.shape[-2:])
    _check_max_shift(max_shift, size)
    return source, size, max_shift


def shift_consistency(
    model,
    photos_or_images,
    *,
    max_shift: int | None = None,
    mode: str = "crop",
    fill: str = "reflect",
    views_per_image: int = 8,
    view_size: tuple[int, int] = (224, 224),
    score_fn: Callable | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> ShiftConsistency:
    """Consistency under shifts of up to ``max_shift`` pixels (Zhang 2019).

    ``mode="crop"``: views are crops of a larger image, so no artificial border appears.
    Photographs are rendered at ``view_size + 2 * max_shift`` and cropped at ``view_size``;
    a tensor [N, C, H, W] is cropped at ``(H - 2 * max_shift, W - 2 * max_shift)``. With
    224 views and ``max_shift=16`` this is antialiased-cnns' protocol (256 -> 224 crops;
    it uses corners 0..31, we the symmetric -16..16 around the centre).
    ``mode="translate"``: views keep the image size and the content moves on a canvas
    filled by ``fill`` (zeros, reflect, edge or circular), for moves toward the border.

    Each image gets ``views_per_image`` distinct random displacements in ``[-max_shift,
    max_shift]^2`` (seeded), and every pair of its views is compared (an unbiased estimate
    of the two-view probability that uses k(k-1)/2 pairs for k forward passes). All views
    are evaluated in batches of ``batch_size`` (default: :func:`auto_batch_size`).
    """
    if mode not in ("crop", "translate"):
        raise PadbiasError(f"mode={mode!r} is not a view mode; accepted: crop, translate")
    _check_fill(fill)
    if not _is_whole(views_per_image) or views_per_image < 2:
        raise PadbiasError(f"views_per_image={views_per_image!r} is not accepted; give a whole number of at least 2")
    source, size, max_shift = _view_source(photos_or_images, max_shift, mode, view_size, mean, std)
    n = source.shape[0]
    k = min(views_per_image, (2 * max_shift + 1) ** 2)
    disp = _displacements(np.random.default_rng(seed), n, k, max_shift)
    index = np.repeat(np.arange(n), k)
    offsets = disp if mode == "translate" else -(disp + max_shift)  # crop corner at S + d
    if score_fn is not None:  # the centred view is the reference of "kept its score"
        index = np.concatenate([np.arange(n), index])
        offsets = np.concatenate([np.zeros((n, 2), int) if mode == "translate" else np.full((n, 2), -max_shift), offsets])
    out = _evaluate(model, score_fn, source, index, offsets, size, fill, batch_size)
    if score_fn is not None:
        ref, out = out[:n], out[n:]
        labels = _judge(out, ref.repeat_interleave(k), True)[0].view(n, k)
    else:
        labels = out.argmax(dim=1).view(n, k)
    agree = _pair_agreement(labels)
    per_image = agree.mean(dim=1)
    return ShiftConsistency(
        value=float(per_image.mean()),
        per_image=[round(float(v), 6) for v in per_image],
        pairs=int(agree.numel()),
        mode=mode,
        fill=fill if mode == "translate" else None,
        max_shift=int(max_shift),
        views_per_image=int(k),
    )


# --------------------------------------------------------------------------- the gate
def shift_robust_arguments(threshold, max_shift=None, fill="reflect") -> dict:
    """Validate the arguments of ``@padbias.shift_robust`` without torch; the normalised kwargs."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:  # no float(): 10**400 overflows
        raise PadbiasError(
            f"shift_robust threshold={threshold!r} is not accepted; give the minimum consistency as a number in (0, 1], e.g. 0.85"
        )
    if max_shift is not None and (not _is_whole(max_shift) or max_shift < 1):
        raise PadbiasError(
            f"shift_robust max_shift={max_shift!r} is not accepted; give a positive whole number of pixels, "
            "or None for 1/14 of the input's shorter side"
        )
    if fill not in FILLS:
        raise PadbiasError(f"shift_robust fill={fill!r} is not accepted; the fills are {', '.join(FILLS)}")
    return {"threshold": float(threshold), "max_shift": None if max_shift is None else int(max_shift), "fill": fill}
