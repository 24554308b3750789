"""Real natural photographs from ``skimage.data`` as a normalised batch.

The photographs ship inside scikit-image, so nothing is downloaded at run time.
"""
from __future__ import annotations

import numpy as np

#: skimage.data photographs of natural scenes that ship with the wheel (no pooch download).
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "camera",
    "coins",
    "moon",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_photos() -> list[np.ndarray]:
    """The bundled photographs as ``H x W x 3`` uint8 arrays (grey ones replicated)."""
    import skimage.data as data

    photos = []
    for name in PHOTO_NAMES:
        if name.startswith("motorcycle_"):
            left, right, _disparity = data.stereo_motorcycle()
            img = left if name.endswith("left") else right
        else:
            img = getattr(data, name)()
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[:, :, :3]).astype(np.uint8))
    return photos


def _crop_boxes(shape, n_crops, aspect, rng, first_full):
    """Seeded crop boxes (top, left, height, width) of the given aspect ratio (h / w)."""
    h, w = shape
    full_h = min(h, int(w * aspect))
    full_w = min(w, int(round(full_h / aspect)))
    boxes = []
    for i in range(n_crops):
        scale = 1.0 if (i == 0 and first_full) else rng.uniform(0.45, 0.95)
        ch, cw = max(8, int(full_h * scale)), max(8, int(full_w * scale))
        top = (h - ch) // 2 if scale == 1.0 else int(rng.integers(0, h - ch + 1))
        left = (w - cw) // 2 if scale == 1.0 else int(rng.integers(0, w - cw + 1))
        boxes.append((top, left, ch, cw))
    return boxes


def natural_images(
    n: int = 32,
    size: tuple[int, int] = (224, 224),
    seed: int = 0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    normalize: bool = True,
):
    """A float tensor ``[n, 3, H, W]`` of crops of the bundled photographs.

    The first crop of each photograph is its largest centred crop of the requested
    aspect ratio; further crops are random (seeded) sub-windows, so any ``n`` works and
    the same ``seed`` gives the same batch. Crops are resized with antialiasing and, if
    ``normalize``, normalised with ``mean``/``std`` as the weights expect.
    """
    import torch
    import torch.nn.functional as F

    if n < 1:
        raise ValueError(f"number of images must be at least 1, got {n}")
    h, w = size
    rng = np.random.default_rng(seed)
    photos = load_photos()
    per_photo = [n // len(photos) + (1 if i < n % len(photos) else 0) for i in range(len(photos))]
    batch = []
    for photo, count in zip(photos, per_photo):
        if count == 0:
            continue
        t = torch.from_numpy(photo).permute(2, 0, 1).float().div_(255.0)
        for top, left, ch, cw in _crop_boxes(photo.shape[:2], count, h / w, rng, first_full=True):
            crop = t[:, top : top + ch, left : left + cw].unsqueeze(0)
            batch.append(F.interpolate(crop, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
    out = torch.cat(batch).clamp_(0.0, 1.0)
    if normalize:
        m = torch.tensor(mean, dtype=out.dtype).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=out.dtype).view(1, 3, 1, 1)
        out = (out - m) / s
    return out
