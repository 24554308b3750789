"""How well the zoo's detector (:mod:`pytest_padbias.detector`) finds traffic lights, overall
and by location.

* **Average precision** (:func:`evaluate_ap`): on held-out scenes (objects anywhere), the
  detections are the local maxima (3x3) of each head's probability map; in descending score
  order each is matched greedily to a not yet matched object of its head's scale whose
  centre cell is within one cell of it (a true positive), else it is a false positive; AP
  is the area under the precision-recall curve with the precision envelope (all-point
  interpolation, as PASCAL VOC from 2010 and COCO), in percent (:func:`average_precision`).
* **Detectability by location** (:func:`location_map`): the small traffic light pasted on a
  grid of positions whose outer rows and columns touch the borders, over held-out clutter
  without objects; per placement the score is the small head's highest probability within
  one cell of the object's cell, and it is detected when that is at least 0.5.
  :meth:`LocationMap.bands` gives the detection rate of the placements near each border
  against the interior; :meth:`LocationMap.as_detectability_map` feeds the figures of
  :mod:`pytest_padbias.blindspots`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .detector import (DATA_SEED, HEAD_STRIDES, HEADS, OBJECT, SIDES, SIZE, backgrounds, check_size, jittered_light, scenes,
                       traffic_light)
from .result import PadbiasError
from .zoo import TRAINING_RECORD

THRESHOLD = 0.5  # detection confidence of the location maps
#: Placements within this many pixels of a border count as "near" it in :meth:`LocationMap.bands`
#: (one cell of the small head), those at least ``INTERIOR`` px from every border as interior.
NEAR = 8
INTERIOR = 16


def _device(model):
    return next(model.parameters()).device


def probabilities(model, images, batch_size: int = 128) -> list[np.ndarray]:
    """Per head, the probability maps ``[n, H/stride, W/stride]`` of ``images``."""
    dev, out = _device(model), [[] for _ in HEADS]
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            for k, logits in enumerate(model(images[i : i + batch_size].to(dev))):
                out[k].append(torch.sigmoid(logits[:, 0]).float().cpu())
    return [torch.cat(o).numpy() for o in out]


def peaks(prob: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Rows ``(image, row, col, score)`` of the local maxima (3x3 neighbourhood, ties
    kept) of ``prob [n, h, w]`` scoring at least ``floor``."""
    p = torch.from_numpy(np.ascontiguousarray(prob))[:, None]
    top = F.max_pool2d(p, 3, stride=1, padding=1)
    keep = ((p == top) & (p >= floor))[:, 0]
    idx = keep.nonzero().numpy()
    return np.column_stack([idx, prob[idx[:, 0], idx[:, 1], idx[:, 2]]]) if len(idx) else np.zeros((0, 4))


def average_precision(scores, true_positive, n_objects: int) -> float:
    """Area under the precision-recall curve of detections with ``scores`` (true positives
    flagged), for ``n_objects`` objects, precision made monotone (all-point interpolation);
    in percent. Objects never detected count as recall the curve does not reach."""
    if isinstance(n_objects, bool) or not isinstance(n_objects, (int, np.integer)) or n_objects < 1:
        raise PadbiasError(f"n_objects={n_objects!r} is not accepted; give a positive number of objects")
    scores, tp = np.asarray(scores, dtype=np.float64), np.asarray(true_positive, dtype=bool)
    if scores.shape != tp.shape or scores.ndim != 1:
        raise PadbiasError(f"scores {scores.shape} and true_positive {tp.shape} must be 1-D of the same length")
    if int(tp.sum()) > n_objects:
        raise PadbiasError(f"{int(tp.sum())} true positives for {n_objects} objects: an object is matched at most once")
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall = np.concatenate([[0.0], ctp / n_objects])
    precision = np.concatenate([[1.0], ctp / np.maximum(1, ctp + cfp)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(100 * np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def match(detections: list[np.ndarray], objects: np.ndarray, tolerance: int = 1):
    """``(scores, true_positive)`` over all heads: each head's detections (rows of
    :func:`peaks`), in descending score order, greedily matched to an unmatched object of
    that head within ``tolerance`` cells (Chebyshev distance) of its centre cell."""
    scores, flags = [], []
    objects = np.asarray(objects).reshape(-1, 4)
    for head, (dets, stride) in enumerate(zip(detections, HEAD_STRIDES)):
        obj = objects[objects[:, 3] == head]
        cells = np.column_stack([obj[:, 0], obj[:, 1] // stride, obj[:, 2] // stride]) if len(obj) else np.zeros((0, 3), int)
        by_image: dict[int, list[int]] = {}
        for j, img in enumerate(cells[:, 0]):
            by_image.setdefault(int(img), []).append(j)
        taken = np.zeros(len(cells), dtype=bool)
        for d in dets[np.argsort(-dets[:, 3], kind="stable")]:
            img, r, c = int(d[0]), int(d[1]), int(d[2])
            hit = next((j for j in by_image.get(img, ()) if not taken[j]
                        and max(abs(cells[j, 1] - r), abs(cells[j, 2] - c)) <= tolerance), None)
            if hit is not None:
                taken[hit] = True
            scores.append(d[3])
            flags.append(hit is not None)
    return np.array(scores, dtype=np.float64), np.array(flags, dtype=bool)


def evaluate_ap(model, n: int = 512, size: int = SIZE, split: str = "test") -> dict:
    """AP (percent) on ``n`` held-out scenes, over all objects and per head, and the recall
    and precision at confidence 0.5."""
    x, objects = scenes(split, n, size)
    probs = probabilities(model, x)
    dets = [peaks(p) for p in probs]
    s, tp = match(dets, objects.numpy())
    out = {"ap": average_precision(s, tp, len(objects)), "objects": int(len(objects)), "scenes": int(n)}
    for head, (name, _, _) in enumerate(HEADS):
        only = [d if k == head else np.zeros((0, 4)) for k, d in enumerate(dets)]
        sh, th = match(only, objects.numpy())
        k = int((objects[:, 3] == head).sum())
        out[f"ap_{name}"] = average_precision(sh, th, k) if k else float("nan")
    out["recall_at_0.5"] = float(tp[s >= THRESHOLD].sum() / len(objects))
    out["precision_at_0.5"] = float(tp[s >= THRESHOLD].mean()) if (s >= THRESHOLD).any() else float("nan")
    return out


# --------------------------------------------------------------------------- by location
@dataclass
class LocationMap:
    """The small traffic light's mean score and detection rate with its top-left at
    ``(tops[i], lefts[j])``, over held-out clutter."""

    score: np.ndarray
    detection: np.ndarray
    tops: np.ndarray
    lefts: np.ndarray
    input_size: tuple[int, int]
    padding_mode: str
    preview: np.ndarray = field(repr=False)  # first background with the object centred, HxWx3

    def masks(self, near: int = NEAR, interior: int = INTERIOR) -> dict:
        """Boolean grids: the placements whose object lies within ``near`` px of each side,
        touching any border (``ring``), and at least ``interior`` px from all (``interior``)."""
        h, w = OBJECT
        t, l = np.meshgrid(self.tops, self.lefts, indexing="ij")
        gap = {"top": t, "bottom": self.input_size[0] - h - t, "left": l, "right": self.input_size[1] - w - l}
        out = {side: gap[side] <= near for side in SIDES}
        out["ring"] = np.logical_or.reduce([gap[side] == 0 for side in SIDES])
        out["interior"] = np.logical_and.reduce([gap[side] >= interior for side in SIDES])
        return out

    def bands(self, near: int = NEAR, interior: int = INTERIOR) -> dict:
        """Detection rate and mean score per band of :meth:`masks`."""
        return {k: {"detection": float(self.detection[m].mean()), "score": float(self.score[m].mean()), "cells": int(m.sum())}
                for k, m in self.masks(near, interior).items()}

    def summary(self) -> dict:
        """The blind-spot measures: the side with the lowest detection rate, its deficit
        against the interior (percentage points), the border ring's deficit, and the
        coefficient of variation of the score over the map."""
        b = self.bands()
        worst = min(SIDES, key=lambda side: b[side]["detection"])
        return {"worst_side": worst, "worst_side_deficit": 100 * (b["interior"]["detection"] - b[worst]["detection"]),
                "ring_deficit": 100 * (b["interior"]["detection"] - b["ring"]["detection"]),
                "interior_detection": b["interior"]["detection"], "cv": float(self.score.std() / max(1e-9, self.score.mean())),
                "side_detection": {side: round(b[side]["detection"], 4) for side in SIDES}}

    def along_border(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """``(centre positions along the side in px, detection rate)`` of the placements
        touching ``side``."""
        h, w = OBJECT
        if side == "top":
            return self.lefts + w // 2, self.detection[0]
        if side == "bottom":
            return self.lefts + w // 2, self.detection[-1]
        if side == "left":
            return self.tops + h // 2, self.detection[:, 0]
        if side == "right":
            return self.tops + h // 2, self.detection[:, -1]
        raise PadbiasError(f"side={side!r} is not accepted; give one of {', '.join(SIDES)}")

    def as_detectability_map(self, ratio: float = 0.5, min_area: int = 1):
        """The mean-score map as a :class:`~pytest_padbias.blindspots.DetectabilityMap`
        (with its blind-spot regions), for :func:`~pytest_padbias.blindspot_figures.detectability_figure`."""
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


def local_scores(prob: np.ndarray, centres, stride: int, tolerance: int = 1) -> np.ndarray:
    """Per image, the highest probability of ``prob [n, h, w]`` within ``tolerance`` cells
    of the cell of ``centres[i]`` (row, col in px)."""
    cells = np.asarray(centres) // stride
    n, gh, gw = prob.shape
    rows, cols = np.arange(gh)[None, :, None], np.arange(gw)[None, None, :]
    near = (np.abs(rows - cells[:, 0, None, None]) <= tolerance) & (np.abs(cols - cells[:, 1, None, None]) <= tolerance)
    return np.where(near, prob, 0.0).reshape(n, -1).max(1)


def location_stimuli(n: int, lit: int | None = None, data_seed: int = DATA_SEED) -> list[np.ndarray]:
    """``n`` small traffic lights: with ``lit=None`` drawn as the scenes draw them (random
    lamp, housing and lamp contrast), else the full-contrast light with lamp ``lit`` on."""
    if lit is not None:
        return [traffic_light(lit)] * n
    rng = np.random.default_rng([data_seed, 10, n])
    return [jittered_light(rng, int(rng.integers(3)), 1) for _ in range(n)]


def location_map(model, n_backgrounds: int = 8, grid=(23, 24), size: int = SIZE, lit: int | None = None,
                 batch_size: int = 256) -> LocationMap:
    """Sweep a small traffic light over a ``rows x cols`` grid of positions (the outer
    rows/columns touch the borders) on ``n_backgrounds`` held-out clutter images, one light
    per background (:func:`location_stimuli`: as in the scenes, or lamp ``lit`` on at full
    contrast): mean score and detection rate (score >= 0.5) per position."""
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or any(isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 2 for g in grid)):
        raise PadbiasError(f"grid={grid!r} is not accepted; give (rows, cols), each an integer of at least 2")
    if isinstance(n_backgrounds, bool) or not isinstance(n_backgrounds, (int, np.integer)) or n_backgrounds < 1:
        raise PadbiasError(f"n_backgrounds={n_backgrounds!r} is not accepted; give a positive integer")
    size = check_size(size)
    h, w = OBJECT
    tops, lefts = grid_offsets(size, h, grid[0]), grid_offsets(size, w, grid[1])
    positions = [(int(t), int(l)) for t in tops for l in lefts]
    centres = np.array([(t + h // 2, l + w // 2) for t, l in positions])
    backs = backgrounds(n_backgrounds, size)
    lights = location_stimuli(n_backgrounds, lit)
    score, hits = np.zeros(len(positions)), np.zeros(len(positions))
    for back, light in zip(backs, lights):
        stim = torch.from_numpy(light)
        batch = torch.from_numpy(back)[None, None].repeat(len(positions), 1, 1, 1)
        for i, (t, l) in enumerate(positions):
            batch[i, 0, t : t + h, l : l + w] = stim
        s = local_scores(probabilities(model, batch, batch_size)[0], centres, HEAD_STRIDES[0])
        score += s / len(backs)
        hits += (s >= THRESHOLD) / len(backs)
    preview = backs[0].copy()
    ct, cl = (size - h) // 2, (size - w) // 2
    preview[ct : ct + h, cl : cl + w] = lights[0]
    mode = next((m.padding_mode for m in model.modules() if isinstance(m, torch.nn.Conv2d)), "model")
    return LocationMap(score.reshape(len(tops), len(lefts)), hits.reshape(len(tops), len(lefts)), tops, lefts,
                       (size, size), mode, np.repeat(preview[..., None], 3, axis=2))


# --------------------------------------------------------------------------- one run's detectors
def profile_budget(profile: str = "quick", seeds: int | None = None) -> dict:
    """The training budget of ``profile`` (:data:`pytest_padbias.detector.DETECTOR_PROFILES`)
    with ``seeds`` overriding its number of seeds (``--padbias-zoo-seeds``)."""
    from .detector import DETECTOR_PROFILES

    if profile not in DETECTOR_PROFILES:
        raise PadbiasError(f"zoo profile {profile!r} is not accepted; use one of {', '.join(DETECTOR_PROFILES)}")
    budget = dict(DETECTOR_PROFILES[profile])
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
            raise PadbiasError(f"seeds={seeds!r} is not accepted; give a positive integer")
        budget["seeds"] = int(seeds)
    return budget


class DetectorZoo:
    """The detectors of one run: both padding modes x ``seeds`` on the budget of
    ``profile``, trained together (:meth:`train_all`, one process per core), and their
    average precision and location maps, each computed once."""

    def __init__(self, profile: str = "quick", seeds=(0,), device: str = "cpu", cache_dir=None):
        from .detector import MODES

        self.profile, self.seeds, self.device, self.cache_dir = profile, tuple(int(s) for s in seeds), device, cache_dir
        budget = profile_budget(profile)
        self.n_test, self.n_backgrounds, self.grid = budget.pop("n_test"), budget.pop("n_backgrounds"), tuple(budget.pop("grid"))
        budget.pop("seeds")
        self.budget, self.modes = budget, MODES
        self._models: dict = {}
        self._ap: dict = {}
        self._maps: dict = {}

    def describe(self) -> dict:
        """The budget every claim on these detectors records."""
        return {"profile": self.profile, "seeds": list(self.seeds), **self.budget, "test_scenes": self.n_test,
                "location_map": {"grid": list(self.grid), "backgrounds": self.n_backgrounds}}

    def _job(self, mode, seed):
        import functools

        from .detector import trained_detector

        return functools.partial(trained_detector, mode, seed, cache_dir=self.cache_dir, device=self.device, **self.budget)

    def missing_jobs(self) -> list:
        """Training jobs (picklable) of the detectors the cache does not hold yet."""
        from .detector import is_cached

        return [self._job(m, s) for s in self.seeds for m in self.modes
                if not is_cached(m, s, cache_dir=self.cache_dir, **self.budget)]

    def train_all(self, workers=None) -> None:
        """Train every detector the cache does not hold yet, one process per core (a warm
        cache starts no process)."""
        from . import zoo

        zoo.train_in_parallel(self.missing_jobs(), workers)

    def model(self, mode, seed):
        if (mode, seed) not in self._models:
            self._models[mode, seed] = self._job(mode, seed)()
        return self._models[mode, seed]

    def ap(self, mode, seed) -> dict:
        if (mode, seed) not in self._ap:
            self._ap[mode, seed] = evaluate_ap(self.model(mode, seed), self.n_test)
        return self._ap[mode, seed]

    def location(self, mode, seed) -> LocationMap:
        if (mode, seed) not in self._maps:
            self._maps[mode, seed] = location_map(self.model(mode, seed), self.n_backgrounds, self.grid)
        return self._maps[mode, seed]

    def training(self) -> dict:
        """Epochs used and final validation loss of every detector."""
        out = {}
        for seed in self.seeds:
            for mode in self.modes:
                info = self.model(mode, seed).zoo_info.get("train", {})
                out[f"{mode} seed {seed}"] = {k: info[k] for k in TRAINING_RECORD if k in info}
        return out
