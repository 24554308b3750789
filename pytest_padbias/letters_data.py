"""The letters data of the zoo: a synthetic, offline stand-in for EMNIST letters, or EMNIST.

The 26 letters, half of them capitals and half small letters under their capital's class
(EMNIST's letters split merges the cases), are rendered from matplotlib's bundled DejaVu
fonts (sans, sans bold, serif, serif bold) with seeded random rotation, shear, scale,
translation and stroke width, white on black, at 28x28. The 29x29 image is the same 28x28
image with one background row below and one column to the right, so the content is
identical pixel for pixel; only the geometry the strided layers see differs. With
``data=`` the root of torchvision's EMNIST folder, the same splits come from EMNIST's
files (:mod:`pytest_padbias.emnist`).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .result import PadbiasError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SIZES = (28, 29)
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf")
DATA_SEED = 20210501
#: Share of the letters drawn in small letters, under their capital's class: EMNIST's
#: letters split merges the two cases into 26 classes, and its look-alike pairs (l and I,
#: q and g...) are much of why the report's models stop near 93%, where capitals alone
#: are solved to 99% by the converged models.
LOWERCASE_SHARE = 0.5


def _font_paths() -> list[str]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [str(folder / f) for f in FONTS if (folder / f).exists()]
    if not paths:
        raise PadbiasError(f"no DejaVu font found in {folder}; the letters data set needs matplotlib's bundled fonts")
    return paths


@lru_cache(maxsize=None)
def _glyph(font_path: str, letter: str, stroke: int):
    """The glyph, white on black, cropped to its ink, as a float array (rendered at 4x)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, 72)
    img = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(img).text((80, 80), letter, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    return img.crop(img.getbbox())


def _render(rng, letter: str, fonts: list[str]) -> np.ndarray:
    """One 28x28 image of ``letter``, in capitals or small letters (``LOWERCASE_SHARE``):
    the glyph in a 20-px box (as EMNIST), jittered."""
    from PIL import Image

    if rng.random() < LOWERCASE_SHARE:
        letter = letter.lower()
    glyph = _glyph(fonts[int(rng.integers(len(fonts)))], letter, int(rng.integers(0, 5)))
    angle = float(rng.uniform(-15, 15))
    shear = float(rng.uniform(-0.25, 0.25))
    scale = float(rng.uniform(0.75, 1.1))
    aspect = float(rng.uniform(0.8, 1.2))
    dy, dx = rng.uniform(-2.0, 2.0, size=2)
    big = 112  # render at 4x, then box-filter down to 28
    gw, gh = glyph.size
    s = 80.0 * scale / max(gw, gh)  # 20 px of 28 -> 80 of 112
    sx, sy = s * np.sqrt(aspect), s / np.sqrt(aspect)
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    fwd = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])  # glyph (x, y) -> canvas
    inv = np.linalg.inv(fwd)
    centre = np.array([big / 2 + 4 * dx, big / 2 + 4 * dy])
    offset = np.array([gw / 2, gh / 2]) - inv @ centre
    coeffs = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    img = glyph.transform((big, big), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=0)
    small = img.resize((28, 28), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


SPLITS = ("train", "val", "test")


@lru_cache(maxsize=8)
def _letters_split(split: str, n: int, data_seed: int):
    if split not in SPLITS:
        raise PadbiasError(f"split={split!r} is not accepted; use one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([data_seed, SPLITS.index(split), n])
    fonts = _font_paths()
    labels = np.arange(n) % len(LETTERS)
    rng.shuffle(labels)
    images = np.stack([_render(rng, LETTERS[k], fonts) for k in labels])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=8)
def _emnist_split(root: str, split: str, n: int, data_seed: int):
    """``n`` EMNIST letters of ``split``: train and val are disjoint draws from EMNIST's
    training file (val from its end of one seeded permutation), test from its test file."""
    from .emnist import load_letters

    if split not in SPLITS:
        raise PadbiasError(f"split={split!r} is not accepted; use one of {', '.join(SPLITS)}")
    # upright (transposed back), as the synthetic letters are drawn; torchvision itself returns them transposed
    images, labels = load_letters(root, "test" if split == "test" else "train", upright=True)
    order = np.random.default_rng([data_seed, 0 if split == "test" else 1]).permutation(len(images))
    if split == "val":
        order = order[::-1]
    if n > len(order) or (split != "test" and n > len(order) // 2):
        raise PadbiasError(f"{n} {split} images asked of EMNIST letters in {root}, which has {len(order)} "
                           f"{'test' if split == 'test' else 'training'} images"
                           + ("" if split == "test" else " (train and validation each take at most half)"))
    pick = np.sort(order[:n])
    out = images[pick].astype(np.float32) / 255.0, labels[pick].astype(np.int64)
    for arr in out:
        arr.setflags(write=False)
    return out


def data_name(data=None) -> str:
    """What a model was trained on, for cache keys and reports: ``synthetic`` or
    ``emnist:<SHA-256 of the files' contents>``."""
    if data is None:
        return "synthetic"
    from .emnist import data_digest

    return f"emnist:{data_digest(data)}"


def _check_size(size) -> int:
    if size not in SIZES:
        raise PadbiasError(f"size={size!r} is not accepted; the letters zoo has sizes {SIZES}")
    return int(size)


def letters(split: str, size: int, n: int, data_seed: int = DATA_SEED, data=None):
    """``(images, labels)``: float tensor ``[n, 1, size, size]`` in [0, 1] (background 0)
    and int64 labels 0..25 (A..Z). ``data`` None renders synthetic letters (classes
    balanced); else it is the root of torchvision's EMNIST folder. The same ``(split, n,
    data_seed)`` gives the same letters at 28 and 29; 29 adds a background row and column
    at the bottom/right."""
    import torch
    import torch.nn.functional as F

    size = _check_size(size)
    if data is None:
        images, labels = _letters_split(split, int(n), int(data_seed))
    else:
        images, labels = _emnist_split(str(Path(data).expanduser().resolve()), split, int(n), int(data_seed))
    x = torch.from_numpy(images.copy())[:, None]
    if size == 29:
        x = F.pad(x, (0, 1, 0, 1))
    return x, torch.from_numpy(labels.astype(np.int64))


def test_batch(size: int, n: int = 1040, data_seed: int = DATA_SEED, data=None):
    """A labelled test batch ``(images, labels)`` of the letters data (held-out split)."""
    return letters("test", size, n, data_seed, data)
