"""The zoo's tiny small-object detector: procedural traffic-light scenes, a fully convolutional
heatmap detector trained here on the CPU, and its detectability by location.

Mind the Pad (``shared/papers/001_*``: SSD on traffic lights, AP 80.24% with zero padding
vs 83.20% with mirror padding) and its reproducibility report
(``shared/papers/000_873c4a5f441dd0f4.txt``, section 2: a blind spot near the right border
that reflect padding removes) claim that a small-object detector trained with zero padding
cannot see objects in part of the border region. This module reproduces the setting offline:

* **Scenes** (:func:`scenes`): 64x64 grey images of smooth noise, stripes and bright/dark
  blobs (distractors), with one 9x5 "traffic light" (a dark housing, three lamps, one lit)
  placed uniformly anywhere, touching the borders included. The target is the object's
  centre pixel; its heatmap cell is ``centre // STRIDE``.
* **Detector** (:func:`detector_cnn`): six 3x3 convs (two with stride 2, so the output
  stride is 4 and the strided convs read padding on the top/left only at 64x64), then a
  1x1 head giving a 16x16 map of logits; ``padding_mode`` zeros or reflect.
* **Training** (:func:`trained_detector`): BCE on the heatmap, Adam, one thread, seeded;
  cached through the zoo's atomic, locked, verified safetensors cache
  (:func:`pytest_padbias.zoo.load_or_train`), keyed by everything that affects the weights.
* **Location map** (:func:`location_map`): the eval traffic light is pasted
  (:func:`pytest_padbias.blindspots.place_stimulus`) on a grid of positions whose outer
  rows and columns touch the borders, over held-out backgrounds; per
  placement the score is the detector's highest probability within one cell of the true
  one, and it is detected when that is the map's peak and above 0.5. Regions come from
  :func:`pytest_padbias.blindspots.find_blind_spots`, figures from
  :func:`~pytest_padbias.blindspots.detectability_figure`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import zoo
from .result import PadbiasError

#: Bumped whenever the data, the architecture or the training changes: old files are ignored.
DETECTOR_VERSION = "detector-v1"
SIZE = 64
STRIDE = 4  # output stride of the heatmap
OBJECT = (9, 5)  # traffic light, height x width
MODES = ("zeros", "reflect")
SIDES = ("top", "bottom", "left", "right")
DATA_SEED = 20210503
DEFAULT_TRAIN = 2048
DEFAULT_EPOCHS = 3
DEFAULT_WIDTH = 6
DEFAULT_BATCH = 32
DEFAULT_LR = 3e-3
POS_WEIGHT = 10.0  # one positive cell among 256
HEAD_BIAS = -4.0
MEAN, STD = 0.5, 0.25


# --------------------------------------------------------------------------- data
def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 256 or size % STRIDE:
        raise PadbiasError(f"size={size!r} is not accepted; give an integer multiple of {STRIDE} from 32 to 256 (default {SIZE})")
    return int(size)


def _check_mode(padding_mode) -> str:
    if padding_mode not in MODES:
        raise PadbiasError(f"padding_mode={padding_mode!r} is not accepted; the detector has {', '.join(MODES)}")
    return padding_mode


def traffic_light(lit: int = 0) -> np.ndarray:
    """The 9x5 object in [0, 1]: a dark housing with three lamps (centres at rows 2, 4, 6),
    lamp ``lit`` (0 top .. 2 bottom) a bright plus, the others dim dots."""
    if lit not in (0, 1, 2):
        raise PadbiasError(f"lit={lit!r} is not accepted; give the lamp 0, 1 or 2")
    obj = np.full(OBJECT, 0.06, dtype=np.float32)
    for row in (2, 4, 6):
        obj[row, 2] = 0.35
    row = 2 + 2 * lit
    obj[row - 1 : row + 2, 2] = 1.0
    obj[row, 1:4] = 1.0
    return obj


def background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A textured grey background ``[size, size]`` in [0, 1]: smooth noise at two scales,
    sometimes stripes, and up to five bright or dark blobs."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size), dtype=np.float32)
    for sigma, amp in ((rng.uniform(0.8, 2.0), rng.uniform(0.03, 0.12)), (rng.uniform(4.0, 10.0), rng.uniform(0.08, 0.25))):
        noise = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
        img += amp * noise / (noise.std() + 1e-6)
    if rng.random() < 0.5:
        theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.8)
        img += rng.uniform(0.04, 0.15) * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
    for _ in range(int(rng.integers(0, 6))):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.2, 3.5)
        img += rng.uniform(-0.4, 0.45) * (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)
    img += rng.uniform(0.3, 0.65)
    return np.clip(img, 0.0, 1.0)


@lru_cache(maxsize=8)
def _split(split: str, n: int, size: int, data_seed: int):
    if split not in ("train", "test"):
        raise PadbiasError(f"split={split!r} is not accepted; use train or test")
    rng = np.random.default_rng([data_seed, 0 if split == "train" else 1, n, size])
    h, w = OBJECT
    images = np.empty((n, size, size), dtype=np.float32)
    centres = np.empty((n, 2), dtype=np.int64)
    for i in range(n):
        img = background(rng, size)
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        img[top : top + h, left : left + w] = traffic_light(int(rng.integers(3)))
        images[i], centres[i] = img, (top + h // 2, left + w // 2)
    images.setflags(write=False)
    centres.setflags(write=False)
    return images, centres


def scenes(split: str, n: int, size: int = SIZE, data_seed: int = DATA_SEED):
    """``(images, centres)``: float tensor ``[n, 1, size, size]`` in [0, 1] with one traffic
    light each, placed uniformly (touching the borders included), and int64 ``[n, 2]``
    (row, col) of its centre pixel. Deterministic in ``(split, n, size, data_seed)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PadbiasError(f"n={n!r} is not accepted; give a positive number of scenes")
    images, centres = _split(split, int(n), _check_size(size), int(data_seed))
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(centres.copy())


def backgrounds(n: int, size: int = SIZE, data_seed: int = DATA_SEED) -> np.ndarray:
    """``n`` held-out backgrounds ``[n, size, size]`` (a stream neither split uses)."""
    rng = np.random.default_rng([data_seed, 2, int(n), _check_size(size)])
    return np.stack([background(rng, size) for _ in range(int(n))])


def target_heatmap(centres, size: int = SIZE):
    """``[n, 1, size/STRIDE, size/STRIDE]``: 1 at each object's centre cell, else 0."""
    cells = torch.as_tensor(centres) // STRIDE
    out = torch.zeros(len(cells), 1, size // STRIDE, size // STRIDE)
    out[torch.arange(len(cells)), 0, cells[:, 0], cells[:, 1]] = 1.0
    return out


# --------------------------------------------------------------------------- model
class _Standardize(nn.Module):
    """(x - 0.5) / 0.25: the zero padding of the first conv is mid-grey."""

    def forward(self, x):
        return (x - MEAN) / STD


def detector_cnn(padding_mode: str = "zeros", width: int = DEFAULT_WIDTH) -> nn.Sequential:
    """Five 3x3 "same" convs in ``padding_mode`` (the 1st and 3rd with stride 2, the last
    dilated by 2; receptive field 35 px), ReLU, and a 1x1 head: ``[N, 1, H/4, W/4]`` logits."""
    _check_mode(padding_mode)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise PadbiasError(f"width={width!r} is not accepted; give a positive integer")
    chans = [1, width, 2 * width, 3 * width, 3 * width, 3 * width]
    strides, dilations = (2, 1, 2, 1, 1), (1, 1, 1, 1, 2)
    layers: list[nn.Module] = [_Standardize()]
    for i, (s, d) in enumerate(zip(strides, dilations)):
        layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=s, padding=d, dilation=d, padding_mode=padding_mode), nn.ReLU(inplace=True)]
    head = nn.Conv2d(chans[-1], 1, 1)
    nn.init.constant_(head.bias, HEAD_BIAS)  # start at the prior: about one object cell in 256
    layers.append(head)
    return nn.Sequential(*layers)


def train_detector(padding_mode, seed, *, size=SIZE, n_train=DEFAULT_TRAIN, epochs=DEFAULT_EPOCHS, width=DEFAULT_WIDTH,
                   batch_size=DEFAULT_BATCH, lr=DEFAULT_LR, progress=None):
    """Train a :func:`detector_cnn` from scratch (BCE on the heatmap, Adam, one-cycle
    learning rate), deterministic for ``seed``."""
    x, centres = scenes("train", n_train, size)
    y = target_heatmap(centres, size)
    with zoo.cpu_threads(zoo.TRAIN_THREADS):
        torch.manual_seed(seed)
        model = detector_cnn(padding_mode, width)
        pos_weight = torch.tensor(POS_WEIGHT)

        def loss(logits, target):
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)

        return zoo.fit(model, x, y, loss, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, progress=progress)


def _config(padding_mode, seed, size, n_train, epochs, width, batch_size, lr) -> dict:
    return {"zoo": DETECTOR_VERSION, "name": "detector", "size": int(size), "padding_mode": padding_mode, "seed": int(seed),
            "batch_norm": False, "n_train": int(n_train), "epochs": int(epochs), "width": int(width),
            "batch_size": int(batch_size), "lr": float(lr), "pos_weight": POS_WEIGHT, "data_seed": DATA_SEED,
            "threads": zoo.TRAIN_THREADS, "torch": torch.__version__.split("+")[0]}


def trained_detector(padding_mode: str = "zeros", seed: int = 0, *, size: int = SIZE, cache_dir=None,
                     n_train: int = DEFAULT_TRAIN, epochs: int = DEFAULT_EPOCHS, width: int = DEFAULT_WIDTH,
                     batch_size: int = DEFAULT_BATCH, lr: float = DEFAULT_LR, progress=None) -> nn.Sequential:
    """The detector in eval mode, trained once and then read from the zoo's cache
    (``zoo_info`` as for :func:`pytest_padbias.zoo.trained_model`)."""
    _check_mode(padding_mode)
    size = _check_size(size)
    for name, value in (("seed", seed), ("n_train", n_train), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "seed" else 1):
            raise PadbiasError(f"{name}={value!r} is not accepted; give a {'non-negative' if name == 'seed' else 'positive'} integer")
    config = _config(padding_mode, seed, size, n_train, epochs, width, batch_size, lr)
    model = detector_cnn(padding_mode, width)

    def train(bar):
        return train_detector(padding_mode, seed, size=size, n_train=n_train, epochs=epochs, width=width,
                              batch_size=batch_size, lr=lr, progress=progress or bar)

    state, path, origin = zoo.load_or_train(config, train, f"detector {size}x{size} {padding_mode} seed {seed}", cache_dir)
    model.load_state_dict(state)
    model.eval()
    model.zoo_info = {"config": config, "path": str(path), "origin": origin}
    return model


# --------------------------------------------------------------------------- evaluation
def object_scores(model, images, centres, batch_size: int = 64):
    """Per image: the highest probability within one heatmap cell of the object's cell
    (``score``), and whether the map's peak lies there with probability > 0.5 (``hit``)."""
    cells = torch.as_tensor(centres) // STRIDE
    scores, hits = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            prob = torch.sigmoid(model(images[i : i + batch_size]))[:, 0]
            c = cells[i : i + batch_size]
            n, gh, gw = prob.shape
            rows, cols = torch.arange(gh)[None, :, None], torch.arange(gw)[None, None, :]
            near = ((rows - c[:, 0, None, None]).abs() <= 1) & ((cols - c[:, 1, None, None]).abs() <= 1)
            local = torch.where(near, prob, torch.zeros(())).flatten(1).amax(1)
            peak = prob.flatten(1).amax(1)
            scores.append(local)
            hits.append((local >= peak) & (local > 0.5))
    return torch.cat(scores).numpy().astype(np.float64), torch.cat(hits).numpy()


@dataclass
class LocationMap:
    """Detector scores with the object's top-left at ``(tops[i], lefts[j])``, over backgrounds."""

    score: np.ndarray  # mean score per placement
    detection: np.ndarray  # detection rate per placement
    tops: np.ndarray
    lefts: np.ndarray
    input_size: tuple[int, int]
    padding_mode: str
    preview: np.ndarray = field(repr=False)  # first background with the object centred, HxWx3

    def bands(self) -> dict:
        """Mean score and detection rate of the placements where the object touches each
        border (the grid's outer rows and columns: ``top``/``bottom``/``left``/``right``),
        of all of them (``border``), and of the others (``centre``)."""
        rows, cols = np.meshgrid(np.arange(len(self.tops)), np.arange(len(self.lefts)), indexing="ij")
        masks = {"top": rows == 0, "bottom": rows == len(self.tops) - 1, "left": cols == 0, "right": cols == len(self.lefts) - 1}
        masks["border"] = masks["top"] | masks["bottom"] | masks["left"] | masks["right"]
        masks["centre"] = ~masks["border"]
        return {k: {"score": float(self.score[m].mean()), "detection": float(self.detection[m].mean()), "cells": int(m.sum())}
                for k, m in masks.items()}

    def summary(self) -> dict:
        """The blind-spot measures: the worst border side against the centre (mean score
        ratio and detection rates), min/median and the coefficient of variation of the map."""
        b = self.bands()
        worst = min(SIDES, key=lambda side: b[side]["score"])
        return {"worst_side": worst, "worst_side_ratio": b[worst]["score"] / b["centre"]["score"],
                "border_ratio": b["border"]["score"] / b["centre"]["score"],
                "min_median": float(self.score.min() / np.median(self.score)),
                "cv": float(self.score.std() / self.score.mean()),
                "detection_worst_side": b[worst]["detection"], "detection_border": b["border"]["detection"],
                "detection_centre": b["centre"]["detection"], "bands": b}

    def as_detectability_map(self, ratio: float = 0.5, min_area: int = 1):
        """The mean-score map as a :class:`~pytest_padbias.blindspots.DetectabilityMap`
        (with its blind-spot regions), for the figures of :mod:`pytest_padbias.blindspots`."""
        from .blindspots import DetectabilityMap, find_blind_spots

        stride = int(self.tops[1] - self.tops[0]) if len(self.tops) > 1 else 1
        centre = (len(self.tops) // 2, len(self.lefts) // 2)
        return DetectabilityMap(
            scores=self.score, tops=self.tops, lefts=self.lefts, stimulus_size=OBJECT, input_size=self.input_size,
            stride=stride, padding_mode=self.padding_mode, ratio=ratio, min_area=min_area,
            regions=find_blind_spots(self.score, self.tops, self.lefts, OBJECT, ratio, min_area),
            target_name="traffic light", centred_score=float(self.score[centre]), preview=self.preview)


def grid_offsets(extent: int, size: int, steps: int) -> np.ndarray:
    """``steps`` top (or left) offsets spread evenly from touching one border to touching
    the other, symmetric about the centre."""
    return np.unique(np.round(np.linspace(0, extent - size, steps)).astype(np.int64))


def _sweep(model, positions, backs, lit: int):
    """Mean score and detection rate of the traffic light at each (top, left) over ``backs``."""
    from .blindspots import place_stimulus

    h, w = OBJECT
    centres = torch.tensor([(t + h // 2, l + w // 2) for t, l in positions])
    stim = torch.from_numpy(traffic_light(lit))[None]
    score, hits = np.zeros(len(positions)), np.zeros(len(positions))
    for back in backs:
        s, d = object_scores(model, place_stimulus(torch.from_numpy(back)[None], stim, positions), centres)
        score += s / len(backs)
        hits += d / len(backs)
    return score, hits


def _offsets(last: int, step: int) -> list[int]:
    return sorted(set(range(0, last + 1, step)) | {last})


def border_positions(size: int = SIZE, step: int = 1) -> list[tuple[int, int, str]]:
    """The ``(top, left, side)`` at which the traffic light touches the ``side`` border,
    every ``step`` px along it and always in both corners (a corner once per side)."""
    size = _check_size(size)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise PadbiasError(f"step={step!r} is not accepted; give a positive integer number of pixels")
    h, w = OBJECT
    lefts, tops = _offsets(size - w, step), _offsets(size - h, step)
    return ([(0, l, "top") for l in lefts] + [(size - h, l, "bottom") for l in lefts]
            + [(t, 0, "left") for t in tops] + [(t, size - w, "right") for t in tops])


def border_scan(model, n_backgrounds: int = 8, size: int = SIZE, step: int = 1, lit: int = 0,
                data_seed: int = DATA_SEED) -> dict:
    """The traffic light at the positions touching a border (``step`` px apart), on held-out
    backgrounds: per side the mean score, the mean and lowest detection rate; overall the
    lowest detection rate, where it is, and the fraction of positions detected on fewer
    than half of the backgrounds (``blind``)."""
    found = border_positions(size, step)
    score, hits = _sweep(model, [(t, l) for t, l, _ in found], backgrounds(n_backgrounds, size, data_seed), lit)
    sides = np.array([side for _, _, side in found])
    worst = int(np.argmin(hits))
    out = {side: {"score": float(score[sides == side].mean()), "detection": float(hits[sides == side].mean()),
                  "min_detection": float(hits[sides == side].min())} for side in SIDES}
    out.update(min_detection=float(hits[worst]), worst_position=[int(found[worst][0]), int(found[worst][1])],
               worst_side=found[worst][2], blind=float((hits < 0.5).mean()), positions=len(found),
               scores=score, detections=hits)
    return out


def location_map(model, n_backgrounds: int = 12, grid=(12, 16), size: int = SIZE, lit: int = 0,
                 data_seed: int = DATA_SEED) -> LocationMap:
    """Sweep the traffic light (lamp ``lit`` on) over a ``rows x cols`` grid of positions
    (the outer rows/columns touch the borders) on ``n_backgrounds`` held-out backgrounds;
    mean score and detection rate per position."""
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or any(isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 2 for g in grid)):
        raise PadbiasError(f"grid={grid!r} is not accepted; give (rows, cols), each an integer of at least 2")
    if isinstance(n_backgrounds, bool) or not isinstance(n_backgrounds, (int, np.integer)) or n_backgrounds < 1:
        raise PadbiasError(f"n_backgrounds={n_backgrounds!r} is not accepted; give a positive integer")
    size = _check_size(size)
    h, w = OBJECT
    tops, lefts = grid_offsets(size, h, grid[0]), grid_offsets(size, w, grid[1])
    backs = backgrounds(n_backgrounds, size, data_seed)
    score, hits = _sweep(model, [(int(t), int(l)) for t in tops for l in lefts], backs, lit)
    preview = backs[0].copy()
    ct, cl = (size - h) // 2, (size - w) // 2
    preview[ct : ct + h, cl : cl + w] = traffic_light(lit)
    mode = next((m.padding_mode for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)), "model")
    return LocationMap(score.reshape(len(tops), len(lefts)), hits.reshape(len(tops), len(lefts)), tops, lefts,
                       (size, size), mode, np.repeat(preview[..., None], 3, axis=2))


def evaluate(model, n: int = 512, size: int = SIZE) -> dict:
    """Detection rate and mean score on ``n`` held-out scenes (objects anywhere)."""
    x, c = scenes("test", n, size)
    s, d = object_scores(model, x, c)
    return {"detection": float(d.mean()), "score": float(s.mean())}
