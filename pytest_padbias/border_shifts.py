"""The reproducibility report's border-shift protocol (section 4.2): push the content toward
the 9 positions {north, centre, south} x {west, centre, east} by a fraction of its free
margin and compare each view with the centred one, plus an offset map over a grid of
(dy, dx). Conventions (displacements, fills, score functions) are those of
:mod:`pytest_padbias.shifts`, whose view making and judging it uses. Imports torch lazily.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .images import IMAGENET_MEAN, IMAGENET_STD
from .result import PadbiasError
from .shifts import POSITIONS, _as_source, _check_fill, _check_max_shift, _evaluate, _is_whole, _judge


# --------------------------------------------------------------------------- border-shift map
@dataclass
class BorderShiftMap:
    """Per image and grid offset, the view against the centred view. Arrays are [N, g, g]
    with rows dy (north first) and columns dx (west first); the 3 x 3 map is the grid's
    corners, edge midpoints and centre."""

    grid_dy: list[int]
    grid_dx: list[int]
    ref_label: np.ndarray  # [N] centred top-1 class (classifier) or centred score
    label: np.ndarray  # [N, g, g] top-1 class, or 1/0 "kept half the centred score"
    changed: np.ndarray  # [N, g, g] bool
    drop: np.ndarray  # [N, g, g] drop of the centred top-1 probability (or score)
    correct: np.ndarray | None  # [N, g, g] top-1 == label, when labels were given
    fill: str
    fraction: float
    content_scale: float
    is_score: bool

    def _three(self, a):
        g = len(self.grid_dy)
        return a[np.ix_([0, g // 2, g - 1], [0, g // 2, g - 1])]

    @property
    def change_rate(self):
        return self._three(self.changed.mean(axis=0))

    @property
    def prob_drop(self):
        return self._three(self.drop.mean(axis=0))

    @property
    def accuracy(self):
        return None if self.correct is None else self._three(self.correct.mean(axis=0))

    @property
    def offsets(self):
        g = len(self.grid_dy)
        return [[(self.grid_dy[r], self.grid_dx[c]) for c in (0, g // 2, g - 1)] for r in (0, g // 2, g - 1)]

    def to_json(self) -> dict[str, Any]:
        def grid(a):
            return None if a is None else np.round(np.asarray(a, dtype=float), 6).tolist()

        return {
            "positions": [list(row) for row in POSITIONS],
            "offsets": [[list(map(int, o)) for o in row] for row in self.offsets],
            "change_rate": grid(self.change_rate),
            "prob_drop": grid(self.prob_drop),
            "accuracy": grid(self.accuracy),
            "offset_map": {
                "dy": list(map(int, self.grid_dy)),
                "dx": list(map(int, self.grid_dx)),
                "change_rate": grid(self.changed.mean(axis=0)),
                "prob_drop": grid(self.drop.mean(axis=0)),
            },
            "fill": self.fill,
            "fraction": self.fraction,
            "content_scale": self.content_scale,
            "images": int(self.changed.shape[0]),
        }


def _check_protocol(fill, fraction, content_scale, grid) -> None:
    """A usage error naming the first of :func:`border_shift_map`'s arguments that is not accepted."""
    _check_fill(fill)
    if not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise PadbiasError(f"fraction={fraction!r} is not accepted; give the share of the free margin in (0, 1]")
    if not isinstance(content_scale, numbers.Real) or not 0 < content_scale <= 1:
        raise PadbiasError(f"content_scale={content_scale!r} is not accepted; give the content's size relative to the view in (0, 1]")
    if not _is_whole(grid) or grid < 3 or grid % 2 == 0:
        raise PadbiasError(f"grid={grid!r} is not accepted; give an odd whole number of at least 3")


def _displacement_grid(view, content, grid, fraction, max_shift, content_scale):
    """``(grid_dy, grid_dx)``: ``grid`` displacements per axis from -reach to +reach times
    ``fraction``, where the reach is ``max_shift`` or else the content's free half margin."""
    (h, w), (hc, wc) = view, content
    if max_shift is not None:
        reach = (_check_max_shift(max_shift, (h, w)),) * 2
    else:
        reach = ((h - hc) // 2, (w - wc) // 2)
        if min(reach) < 1:
            raise PadbiasError(f"content_scale={content_scale} leaves no free margin on {h}x{w} views; give a smaller content_scale or a max_shift")
    steps = np.linspace(-1.0, 1.0, grid)
    return ([int(round(s * fraction * reach[0])) for s in steps], [int(round(s * fraction * reach[1])) for s in steps])


def border_shift_map(
    model,
    photos_or_images,
    *,
    fraction: float = 1.0,
    content_scale: float = 0.5,
    max_shift: int | None = None,
    fill: str = "zeros",
    labels: Sequence[int] | None = None,
    grid: int = 5,
    view_size: tuple[int, int] = (224, 224),
    score_fn: Callable | None = None,
    batch_size: int | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> BorderShiftMap:
    """The report's 9-position protocol (section 4.2) and an offset map.

    The content (photographs rendered at ``view_size``, or the tensor's images) is scaled by
    ``content_scale`` and centred on a canvas of the view size filled by ``fill``; its free
    margin is canvas minus content. Each outer position pushes the content toward that
    border by ``fraction`` of its half margin (1.0 = touching the border), or by
    ``fraction * max_shift`` pixels when ``max_shift`` is given (needed when the content
    fills the view, ``content_scale=1``). The offset map covers a ``grid x grid`` lattice of
    displacements over the same range (odd ``grid``, so it contains the 3 x 3 positions).
    """
    import torch.nn.functional as F

    _check_protocol(fill, fraction, content_scale, grid)
    canvas = _as_source(photos_or_images, view_size, mean, std)
    n, _, h, w = canvas.shape
    if labels is not None and (score_fn is not None or len(labels) != n):
        raise PadbiasError(f"labels need a classifier and one class per image ({n}); got {len(labels)} labels" + (" with a score function" if score_fn else ""))
    hc, wc = max(1, round(h * content_scale)), max(1, round(w * content_scale))
    content = canvas if (hc, wc) == (h, w) else F.interpolate(canvas, size=(hc, wc), mode="bilinear", antialias=True, align_corners=False)
    grid_dy, grid_dx = _displacement_grid((h, w), (hc, wc), grid, fraction, max_shift, content_scale)
    top, left = (h - hc) // 2, (w - wc) // 2
    cells = [(top + dy, left + dx) for dy in grid_dy for dx in grid_dx]
    index = np.repeat(np.arange(n), len(cells))
    out = _evaluate(model, score_fn, content, index, np.tile(cells, (n, 1)), (h, w), fill, batch_size)
    out = out.view(n, grid, grid, *out.shape[1:])
    ref = out[:, grid // 2, grid // 2]
    ref_rep = ref[:, None, None].expand_as(out).reshape(-1, *out.shape[3:])
    label, changed, drop = (t.view(n, grid, grid) for t in _judge(out.reshape(-1, *out.shape[3:]), ref_rep, score_fn is not None))
    correct = None
    if labels is not None:
        correct = label.cpu().numpy() == np.asarray(labels).reshape(n, 1, 1)
    return BorderShiftMap(
        grid_dy=grid_dy,
        grid_dx=grid_dx,
        ref_label=(ref if score_fn is not None else ref.argmax(dim=1)).cpu().numpy(),
        label=label.cpu().numpy(),
        changed=changed.cpu().numpy(),
        drop=drop.cpu().numpy(),
        correct=correct,
        fill=fill,
        fraction=float(fraction),
        content_scale=float(content_scale),
        is_score=score_fn is not None,
    )
