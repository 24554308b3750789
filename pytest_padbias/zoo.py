"""The trained zoo: small models trained here on the CPU, deterministically from a seed.

So far one member, ``"letters"``: the reproducibility report's letters classifier
(``shared/papers/000_873c4a5f441dd0f4.txt``, section 3.1) on a synthetic, offline stand-in
for EMNIST letters. The 26 capital letters are rendered from matplotlib's bundled DejaVu
fonts (sans, sans bold, serif, serif bold) with seeded random rotation, shear, scale,
translation and stroke width, white on black, at 28x28. The 29x29 image is the same 28x28
image with one background row below and one column to the right, so the content is
identical pixel for pixel; only the geometry the strided layers see differs.

The network (:func:`letters_cnn`) has "same" padding and downsamples every two conv layers
(stride 2, kernel 3, padding 1), then global pooling and two fully connected layers, as in
the report (max instead of average pooling: see :func:`letters_cnn`).
At 28x28 both strided convs read padding on the top/left only
(28 -> 14 -> 7: even inputs); at 29x29 they read it on all sides (29 -> 15 -> 8).

:func:`trained_model` trains a model once and caches its weights as a safetensors file
(default ``~/.cache/pytest-padbias/zoo``; ``$PADBIAS_ZOO_DIR`` or ``cache_dir=``), keyed by
everything that affects them. The file is written atomically (a temporary file in the same
folder, then ``os.replace``) under an exclusive ``fcntl.flock`` on a ``.lock`` file, so
two processes wanting the same model train it once and never see half a file; its metadata
carries the SHA-256 of the tensors, checked on every load (a corrupt file is retrained).
:func:`load_or_train` is that cache for any member: the small-object detector of
:mod:`pytest_padbias.detector` goes through it too.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from .padding import PADDING_MODES
from .result import PadbiasError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SIZES = (28, 29)
#: Bumped whenever the data, the architecture or the training changes: old files are ignored.
ZOO_VERSION = "letters-v2"
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf")
#: Default budget: seconds per model on 2 busy CPU cores.
DEFAULT_TRAIN = 4800
DEFAULT_EPOCHS = 3
DEFAULT_WIDTH = 8
DEFAULT_BATCH = 64
DEFAULT_LR = 6e-3
STRIDES = (1, 2, 1, 2, 1)
LETTERS_MEAN, LETTERS_STD = 0.2, 0.35
#: Threads while training: fixed, so that a seed gives the same weights in every process.
TRAIN_THREADS = 1
DATA_SEED = 20210501


# --------------------------------------------------------------------------- data
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
    """One 28x28 image of ``letter``: the glyph in a 20-px box (as EMNIST), jittered."""
    from PIL import Image

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


@lru_cache(maxsize=8)
def _letters_split(split: str, n: int, data_seed: int):
    if split not in ("train", "test"):
        raise PadbiasError(f"split={split!r} is not accepted; use train or test")
    rng = np.random.default_rng([data_seed, 0 if split == "train" else 1, n])
    fonts = _font_paths()
    labels = np.arange(n) % len(LETTERS)
    rng.shuffle(labels)
    images = np.stack([_render(rng, LETTERS[k], fonts) for k in labels])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_size(size) -> int:
    if size not in SIZES:
        raise PadbiasError(f"size={size!r} is not accepted; the letters zoo has sizes {SIZES}")
    return int(size)


def letters(split: str, size: int, n: int, data_seed: int = DATA_SEED):
    """``(images, labels)``: float tensor ``[n, 1, size, size]`` in [0, 1] (background 0)
    and int64 labels 0..25 (A..Z), classes balanced. The same ``(split, n, data_seed)``
    gives the same letters at 28 and 29; 29 adds a background row and column at the
    bottom/right."""
    import torch
    import torch.nn.functional as F

    size = _check_size(size)
    images, labels = _letters_split(split, int(n), int(data_seed))
    x = torch.from_numpy(images.copy())[:, None]
    if size == 29:
        x = F.pad(x, (0, 1, 0, 1))
    return x, torch.from_numpy(labels.astype(np.int64))


def test_batch(size: int, n: int = 1040, data_seed: int = DATA_SEED):
    """A labelled test batch ``(images, labels)`` of the letters data (held-out split)."""
    return letters("test", size, n, data_seed)


# --------------------------------------------------------------------------- model
def _standardize_module():
    import torch.nn as nn

    class Standardize(nn.Module):
        """(x - mean) / std with the letters data's statistics: inputs stay in [0, 1]
        with a black background (so a shift's zero fill is background), while the
        convolutions' zero padding is a grey the images never show, as with EMNIST's
        usual normalisation."""

        def forward(self, x):
            return (x - LETTERS_MEAN) / LETTERS_STD

    return Standardize()


def letters_cnn(padding_mode: str = "zeros", batch_norm: bool = False, width: int = DEFAULT_WIDTH):
    """The report's letters classifier (section 3.1, Figure 5): five 3x3 convs with "same"
    padding in ``padding_mode``, the 2nd and 4th with stride 2 (batch norm after every conv
    when asked), global pooling and two fully connected layers, 26 logits.

    Deviation from the report: global *max* pooling instead of average pooling. With
    global average pooling this small network learns far slower on the CPU budget (about
    30-55% test accuracy after 4 epochs, against 94% with max pooling); both are
    shift-invariant heads that accept 28x28 and 29x29 inputs alike.
    """
    import torch.nn as nn

    if padding_mode not in PADDING_MODES:
        raise PadbiasError(f"padding_mode={padding_mode!r} is not accepted; use one of {', '.join(PADDING_MODES)}")
    chans = [1, width, 2 * width, 2 * width, 4 * width, 4 * width]
    layers = [_standardize_module()]
    for i, stride in enumerate(STRIDES):
        layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1, padding_mode=padding_mode, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(chans[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    head = [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(chans[-1], 64), nn.ReLU(inplace=True), nn.Linear(64, len(LETTERS))]
    return nn.Sequential(nn.Sequential(*layers), nn.Sequential(*head))


def accuracy(model, images, labels, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``images``/``labels``."""
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(1, len(images))


def predictions(model, images, batch_size: int = 512):
    import torch

    model.eval()
    with torch.inference_mode():
        return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


@contextlib.contextmanager
def cpu_threads(n: int = 1):
    """Run the block with ``n`` torch CPU threads (restored after). On a shared, busy CPU one
    thread is far faster for these small models: 0.7 ms per training image against 8.7 ms
    with 2 threads on 2 cores loaded by other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_letters(size, padding_mode, seed, batch_norm=False, *, n_train=DEFAULT_TRAIN, epochs=DEFAULT_EPOCHS,
                  width=DEFAULT_WIDTH, batch_size=DEFAULT_BATCH, lr=DEFAULT_LR, progress=None):
    """Train a :func:`letters_cnn` from scratch (Adam, one-cycle learning rate), deterministic
    for ``seed``. ``progress(done, total)`` is called after every batch when given."""
    import torch
    import torch.nn.functional as F

    x, y = letters("train", size, n_train)
    with cpu_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        model = letters_cnn(padding_mode, batch_norm, width)
        return fit(model, x, y, F.cross_entropy, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, progress=progress)


def fit(model, x, y, loss_fn, *, seed, epochs, batch_size, lr, progress=None):
    """The zoo's training loop: Adam with a one-cycle learning rate over seeded shuffles of
    ``(x, y)``; ``progress(done, total)`` after every batch. Returns the model in eval mode."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
    model.train()
    done = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if progress is not None:
                progress(done, steps)
    return model.eval()


# --------------------------------------------------------------------------- cache
def zoo_dir(cache_dir=None) -> Path:
    """Where trained weights live: ``cache_dir``, else ``$PADBIAS_ZOO_DIR``, else
    ``~/.cache/pytest-padbias/zoo``."""
    d = cache_dir or os.environ.get("PADBIAS_ZOO_DIR") or Path.home() / ".cache" / "pytest-padbias" / "zoo"
    return Path(d).expanduser()


def _config(name, size, padding_mode, seed, batch_norm, n_train, epochs, width, batch_size, lr) -> dict:
    import torch

    return {"zoo": ZOO_VERSION, "name": name, "size": int(size), "padding_mode": padding_mode, "seed": int(seed),
            "batch_norm": bool(batch_norm), "n_train": int(n_train), "epochs": int(epochs), "width": int(width),
            "batch_size": int(batch_size), "lr": float(lr), "data_seed": DATA_SEED, "threads": TRAIN_THREADS,
            "torch": torch.__version__.split("+")[0]}


def cache_path(config: dict, cache_dir=None) -> Path:
    """The weights file of ``config``: readable name, then a hash of the whole config."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    c = config
    stem = f"{c['name']}-{c['size']}-{c['padding_mode']}-{'bn' if c['batch_norm'] else 'nobn'}-s{c['seed']}-{key}"
    return zoo_dir(cache_dir) / f"{stem}.safetensors"


def _digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_verified(path: Path, config: dict | None = None):
    """The state dict in ``path`` if the file is whole (its tensors' SHA-256 matches its
    metadata, and its config ``config`` when given), else None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # missing, truncated or garbled: treated alike, as "not cached"
        return None
    if meta.get("sha256") != _digest(tensors):
        return None
    if config is not None and meta.get("config") != json.dumps(config, sort_keys=True):
        return None
    return tensors


def _save_atomic(path: Path, tensors: dict, metadata: dict) -> None:
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    # Called under the file's lock, so any temporary file of this path is a killed writer's.
    for stale in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path):
    lock = path.with_suffix(".lock")
    with open(lock, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _bar(label):
    """A one-line progress bar on stderr (only when stderr is a terminal)."""
    if not sys.stderr.isatty():
        return None

    def show(done, total):
        if done == total or done % 10 == 0:
            filled = int(30 * done / total)
            sys.stderr.write(f"\r[padbias zoo] training {label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return show


def load_or_train(config: dict, train, label: str, cache_dir=None):
    """``(state_dict, path, origin)`` of the model ``config`` describes: read from its cache
    file (``origin`` ``"cached"``) or, when there is no whole file of that config, trained
    with ``train(progress) -> nn.Module`` under the file's lock and saved atomically
    (``"trained"``). ``config`` needs the keys :func:`cache_path` names files by; every
    zoo member (letters, :mod:`pytest_padbias.detector`) goes through here."""
    path = cache_path(config, cache_dir)
    state, origin = load_verified(path, config), "cached"
    if state is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            state = load_verified(path, config)  # another process may have trained it meanwhile
            if state is None:
                start = time.perf_counter()
                trained = train(_bar(label))
                state = {k: v.detach().clone().contiguous() for k, v in trained.state_dict().items()}
                meta = {"config": json.dumps(config, sort_keys=True), "sha256": _digest(state),
                        "train_seconds": f"{time.perf_counter() - start:.1f}"}
                _save_atomic(path, state, meta)
                origin = "trained"
    return state, path, origin


def trained_model(name: str, size: int, padding_mode: str = "zeros", seed: int = 0, batch_norm: bool = False, *,
                  cache_dir=None, n_train: int = DEFAULT_TRAIN, epochs: int = DEFAULT_EPOCHS, width: int = DEFAULT_WIDTH,
                  batch_size: int = DEFAULT_BATCH, lr: float = DEFAULT_LR, progress=None):
    """A zoo model in eval mode, trained once and then read from the cache.

    ``name`` is ``"letters"``; ``size`` 28 or 29; ``padding_mode`` zeros, reflect,
    replicate or circular. The budget arguments (``n_train``, ``epochs``, ``width``...)
    are part of the cache key. The model's ``zoo_info`` attribute holds its config, the
    weights file and whether it was trained now (``"trained"``) or read (``"cached"``).
    """
    if name != "letters":
        raise PadbiasError(f"no zoo model named {name!r}; the zoo has: letters "
                          "(and the small-object detector: pytest_padbias.detector.trained_detector)")
    size = _check_size(size)
    config = _config(name, size, padding_mode, seed, batch_norm, n_train, epochs, width, batch_size, lr)
    model = letters_cnn(padding_mode, batch_norm, width)
    label = f"{name} {size}x{size} {padding_mode}{' bn' if batch_norm else ''} seed {seed}"
    state, path, origin = load_or_train(config, lambda bar: train_letters(
        size, padding_mode, seed, batch_norm, n_train=n_train, epochs=epochs, width=width, batch_size=batch_size, lr=lr,
        progress=progress or bar), label, cache_dir)
    model.load_state_dict(state)
    model.eval()
    model.zoo_info = {"config": config, "path": str(path), "origin": origin}
    return model
