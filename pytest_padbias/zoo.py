"""The trained zoo: small models trained here on the CPU, deterministically from a seed.

So far one member, ``"letters"``: the reproducibility report's letters classifier
(``shared/papers/000_873c4a5f441dd0f4.txt``, section 3.1) on the letters of
:mod:`pytest_padbias.letters_data` (a synthetic, offline stand-in for EMNIST letters, or
EMNIST itself when the user has it).

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
from dataclasses import dataclass, replace
from pathlib import Path

from .letters_data import DATA_SEED, LETTERS, SIZES, _check_size, data_name, letters, test_batch  # (re-exported: the zoo's data)
from .padding import PADDING_MODES
from .training import cpu_threads, fit_until_converged
from .result import PadbiasError

#: Bumped whenever the data, the architecture or the training changes: old files are ignored.
ZOO_VERSION = "letters-v6"
STRIDES = (1, 2, 1, 2, 1)
LETTERS_MEAN, LETTERS_STD = 0.2, 0.35
#: Threads while training: fixed, so that a seed gives the same weights in every process.
TRAIN_THREADS = 1


@dataclass(frozen=True)
class LettersBudget:
    """How the letters classifiers of one profile are trained and tested: ``seeds`` per
    cell, training / validation / test images, and the early-stopping schedule of
    :func:`pytest_padbias.training.fit_until_converged` (Adam at ``lr``)."""

    seeds: int
    n_train: int
    n_val: int
    n_test: int
    max_epochs: int
    patience: int = 1
    lr_drops: int = 2
    width: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    #: Seeds of Table 3's zero-padded cells (with and without batch norm): the cheap models
    #: of the one claim whose interval needs a few more pairs than the 3 seeds give; never
    #: fewer than ``seeds``.
    batch_norm_seeds: int = 0

    def __post_init__(self):
        if self.batch_norm_seeds < self.seeds:
            object.__setattr__(self, "batch_norm_seeds", self.seeds)

    def train_kwargs(self) -> dict:
        """The keyword arguments of :func:`trained_model` (everything in the cache key)."""
        return {"n_train": self.n_train, "n_val": self.n_val, "epochs": self.max_epochs, "patience": self.patience,
                "lr_drops": self.lr_drops, "width": self.width, "batch_size": self.batch_size, "lr": self.lr}


#: ``quick``: a cold main job in minutes on 2 CPU cores; patience 2, because models without
#: batch norm stopped at the first epoch without progress (patience 1) were 1-5 points short
#: of where they converge, which made the batch-norm comparison and the seed-to-seed spread
#: measure that shortfall. ``report``: the reproducibility
#: report's protocol (section 3.1: 60 000 training and 10 000 test images, 3 seeds per
#: cell, Adam at 1e-3 until the validation loss stops falling).
PROFILES = {
    "quick": LettersBudget(seeds=3, n_train=6000, n_val=1500, n_test=10000, max_epochs=60, patience=2, batch_norm_seeds=5),
    "report": LettersBudget(seeds=3, n_train=60000, n_val=10000, n_test=10000, max_epochs=100, patience=2),
}
DEFAULT_TRAIN = PROFILES["quick"].n_train
DEFAULT_EPOCHS = PROFILES["quick"].max_epochs
DEFAULT_PATIENCE = PROFILES["quick"].patience
DEFAULT_WIDTH = PROFILES["quick"].width
DEFAULT_BATCH = PROFILES["quick"].batch_size
DEFAULT_LR = PROFILES["quick"].lr


def letters_budget(profile: str = "quick", *, seeds=None, epochs=None, train_images=None) -> LettersBudget:
    """The budget of ``profile``, with single knobs overridden (``--padbias-zoo-seeds``,
    ``-epochs``, ``-train-images``); the validation split scales with the training set."""
    if profile not in PROFILES:
        raise PadbiasError(f"zoo profile {profile!r} is not accepted; use one of {', '.join(PROFILES)}")
    b = PROFILES[profile]
    changes = {}
    if seeds is not None:  # --padbias-zoo-seeds sets every cell's seeds
        changes["seeds"] = changes["batch_norm_seeds"] = int(seeds)
    if epochs is not None:
        changes["max_epochs"] = int(epochs)
    if train_images is not None:
        changes["n_train"] = int(train_images)
        changes["n_val"] = max(len(LETTERS), round(b.n_val * int(train_images) / b.n_train))
    return replace(b, **changes)


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
    when asked), global average pooling (the report's choice: it keeps shift equivariance)
    and two fully connected layers, 26 logits, He-initialised (the report does not say how it
    initialises; PyTorch's default starts this average-pooled ReLU stack with near-zero
    logits and it then needs twice the epochs)."""
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
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], 64), nn.ReLU(inplace=True), nn.Linear(64, len(LETTERS))]
    model = nn.Sequential(nn.Sequential(*layers), nn.Sequential(*head))
    for m in model.modules():  # He initialisation: without it the averaged signal of 5 ReLU convs starts near zero
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


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


def train_letters(size, padding_mode, seed, batch_norm=False, *, n_train=DEFAULT_TRAIN, n_val=None, epochs=DEFAULT_EPOCHS,
                  patience=DEFAULT_PATIENCE, lr_drops=2, width=DEFAULT_WIDTH, batch_size=DEFAULT_BATCH, lr=DEFAULT_LR, data=None,
                  device="cpu", progress=None):
    """Train a :func:`letters_cnn` from scratch until its validation loss stops falling
    (:func:`pytest_padbias.training.fit_until_converged`), deterministic for ``seed``.
    Returns the model (eval mode) with ``train_info``: epochs used, best epoch, final
    validation loss. ``progress(done, total)`` is called after every batch when given."""
    import torch
    import torch.nn.functional as F

    n_val = _default_val(n_train) if n_val is None else n_val
    train = letters("train", size, n_train, data=data)
    val = letters("val", size, n_val, data=data)
    with cpu_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        model = letters_cnn(padding_mode, batch_norm, width)
        model, info = fit_until_converged(model, train, val, F.cross_entropy, seed=seed, max_epochs=epochs, patience=patience,
                                          lr_drops=lr_drops, batch_size=batch_size, lr=lr, device=device, progress=progress)
    model.train_info = info
    return model


def _default_val(n_train: int) -> int:
    return max(len(LETTERS), n_train // 4)


# --------------------------------------------------------------------------- cache
def zoo_dir(cache_dir=None) -> Path:
    """Where trained weights live: ``cache_dir``, else ``$PADBIAS_ZOO_DIR``, else
    ``~/.cache/pytest-padbias/zoo``."""
    d = cache_dir or os.environ.get("PADBIAS_ZOO_DIR") or Path.home() / ".cache" / "pytest-padbias" / "zoo"
    return Path(d).expanduser()


def _config(name, size, padding_mode, seed, batch_norm, n_train, epochs, width, batch_size, lr, *, n_val=None,
            patience=1, lr_drops=2, data="synthetic") -> dict:
    import torch

    return {"zoo": ZOO_VERSION, "name": name, "size": int(size), "padding_mode": padding_mode, "seed": int(seed),
            "batch_norm": bool(batch_norm), "n_train": int(n_train),
            "n_val": int(_default_val(n_train) if n_val is None else n_val), "epochs": int(epochs),
            "patience": int(patience), "lr_drops": int(lr_drops), "width": int(width), "batch_size": int(batch_size),
            "lr": float(lr), "data": data, "data_seed": DATA_SEED, "threads": TRAIN_THREADS,
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
    zoo member (letters, :mod:`pytest_padbias.detector`) goes through here. A trained model's
    ``train_info`` (epochs used, final validation loss...) goes into the file's metadata,
    read back by :func:`train_info`."""
    path = cache_path(config, cache_dir)
    state, origin = load_verified(path, config), "cached"
    if state is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            state = load_verified(path, config)  # another process may have trained it meanwhile
            if state is None:
                start, start_cpu = time.perf_counter(), time.process_time()
                trained = train(_bar(label))
                state = {k: v.detach().clone().contiguous() for k, v in trained.state_dict().items()}
                meta = {"config": json.dumps(config, sort_keys=True), "sha256": _digest(state),
                        "train_seconds": f"{time.perf_counter() - start:.1f}",
                        # CPU time too: the wall time includes pauses and other processes' turns
                        "train_cpu_seconds": f"{time.process_time() - start_cpu:.1f}"}
                # a member's training record (e.g. epochs, validation loss), as str -> str
                meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in getattr(trained, "train_info", {}).items()})
                _save_atomic(path, state, meta)
                origin = "trained"
    return state, path, origin


#: The fields of a model's training record that the claims repeat in their details.
TRAINING_RECORD = ("epochs", "best_epoch", "val_loss", "stopped", "train_seconds", "train_cpu_seconds")


def train_info(path) -> dict:
    """The training record of a cached model (what its ``train_info`` held, e.g. epochs,
    best epoch, final validation loss, ``train_seconds`` and ``train_cpu_seconds``), from its
    file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    out = {}
    for key, text in meta.items():
        if key in ("config", "sha256"):
            continue
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _call(job):
    job()
    return None


def train_in_parallel(jobs, workers: int | None = None) -> None:
    """Run ``jobs`` (picklable callables, e.g. ``functools.partial(trained_model, ...)``)
    in ``workers`` processes (default: one per core, at most one per job), so the cores that
    one small model's single-threaded training leaves idle train the others. Each job goes
    through :func:`load_or_train`, whose file lock makes a model wanted by two processes
    train once; its weights depend on its own seed only (one thread per model, whatever
    trains beside it). Afterwards the same calls read the models from the cache."""
    import multiprocessing

    jobs = list(jobs)
    workers = min(len(jobs), workers or len(os.sched_getaffinity(0)))
    if workers <= 1:
        for job in jobs:
            job()
        return
    # spawn, not fork: torch's thread pools do not survive a fork of a process that used them
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_call, jobs, chunksize=1)


def letters_config(name, size, padding_mode, seed, batch_norm=False, *, n_train=DEFAULT_TRAIN, n_val=None,
                   epochs=DEFAULT_EPOCHS, patience=DEFAULT_PATIENCE, lr_drops=2, width=DEFAULT_WIDTH, batch_size=DEFAULT_BATCH,
                   lr=DEFAULT_LR, data=None) -> dict:
    """The cache key of a letters model (what :func:`trained_model` trains for these arguments)."""
    if name != "letters":
        raise PadbiasError(f"no zoo model named {name!r}; the zoo has: letters "
                          "(and the small-object detector: pytest_padbias.detector.trained_detector)")
    return _config(name, _check_size(size), padding_mode, seed, batch_norm, n_train, epochs, width, batch_size, lr,
                   n_val=n_val, patience=patience, lr_drops=lr_drops, data=data_name(data))


def is_cached(config: dict, cache_dir=None) -> bool:
    """Whether the cache holds a whole weights file of ``config``."""
    return load_verified(cache_path(config, cache_dir), config) is not None


def trained_model(name: str, size: int, padding_mode: str = "zeros", seed: int = 0, batch_norm: bool = False, *,
                  cache_dir=None, n_train: int = DEFAULT_TRAIN, n_val: int | None = None, epochs: int = DEFAULT_EPOCHS,
                  patience: int = DEFAULT_PATIENCE, lr_drops: int = 2, width: int = DEFAULT_WIDTH, batch_size: int = DEFAULT_BATCH,
                  lr: float = DEFAULT_LR, data=None, device: str = "cpu", progress=None):
    """A zoo model in eval mode on ``device``, trained once and then read from the cache.

    ``name`` is ``"letters"``; ``size`` 28 or 29; ``padding_mode`` zeros, reflect,
    replicate or circular; ``data`` None (synthetic letters) or the root of an EMNIST
    folder. The budget arguments (``n_train``, ``epochs`` = most epochs, ``width``...) and
    the data's digest are part of the cache key (the device is not: a seed's weights are
    meant to be the same on every device). The model's ``zoo_info`` attribute holds its
    config, the weights file, whether it was trained now (``"trained"``) or read
    (``"cached"``), and its training record (``train``: epochs used, validation loss...).
    """
    size = _check_size(size)
    config = letters_config(name, size, padding_mode, seed, batch_norm, n_train=n_train, n_val=n_val, epochs=epochs,
                            patience=patience, lr_drops=lr_drops, width=width, batch_size=batch_size, lr=lr, data=data)
    model = letters_cnn(padding_mode, batch_norm, width)
    label = f"{name} {size}x{size} {padding_mode}{' bn' if batch_norm else ''} seed {seed}"
    state, path, origin = load_or_train(config, lambda bar: train_letters(
        size, padding_mode, seed, batch_norm, n_train=n_train, n_val=config["n_val"], epochs=epochs, patience=patience,
        lr_drops=lr_drops, width=width, batch_size=batch_size, lr=lr, data=data, device=device, progress=progress or bar),
        label, cache_dir)
    model.load_state_dict(state)
    model.eval().to(device)
    model.zoo_info = {"config": config, "path": str(path), "origin": origin, "train": train_info(path)}
    return model
