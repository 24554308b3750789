"""Figures of the shift analyses: the 3 x 3 border map, the offset map, and example views."""
from __future__ import annotations

import numpy as np

from .figures import figure, to_png
from .result import Figure


def border_map_figure(bmap) -> Figure:
    """Heatmaps per border position: prediction change rate, mean drop, accuracy if known."""
    panels = [("prediction change rate", bmap.change_rate, "Reds", 0.0, 1.0, "{:.2f}")]
    drop = bmap.prob_drop
    bound = max(1e-6, float(np.abs(drop).max()))
    what = "score" if bmap.is_score else "top-1 probability"
    panels.append((f"mean drop of the centred {what}", drop, "RdBu_r", -bound, bound, "{:+.3f}"))
    if bmap.accuracy is not None:
        panels.append(("top-1 accuracy", bmap.accuracy, "Greens", 0.0, 1.0, "{:.2f}"))
    fig, axes = figure(1, len(panels), figsize=(3.4 * len(panels), 3.3))
    for ax, (title, grid, cmap, lo, hi, fmt) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi)
        for r in range(3):
            for c in range(3):
                ax.text(c, r, fmt.format(grid[r, c]), ha="center", va="center", fontsize=9)
        ax.set_xticks(range(3), ["west", "centre", "east"])
        ax.set_yticks(range(3), ["north", "centre", "south"])
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.75)
    dy, dx = bmap.offsets[0][0]
    fig.suptitle(f"Content pushed {abs(dy)} px / {abs(dx)} px toward each border ({bmap.fill} fill)", fontsize=10)
    return Figure(
        title=f"Border-shift map: per position, how often the prediction changes against the centred view "
        f"and how much the centred top-1 probability drops ({bmap.changed.shape[0]} images, {bmap.fill} fill)",
        png=to_png(fig),
    )


def offset_map_figure(bmap) -> Figure:
    """Prediction change rate over the grid of (dy, dx) displacements, north up."""
    rate = bmap.changed.mean(axis=0)
    fig, ax = figure(1, 1, figsize=(4.4, 3.8))
    im = ax.imshow(rate, cmap="Reds", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(bmap.grid_dx)), [str(v) for v in bmap.grid_dx])
    ax.set_yticks(range(len(bmap.grid_dy)), [str(v) for v in bmap.grid_dy])
    ax.set_xlabel("dx (px, east positive)")
    ax.set_ylabel("dy (px, south positive)")
    for r in range(rate.shape[0]):
        for c in range(rate.shape[1]):
            ax.text(c, r, f"{rate[r, c]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="prediction change rate")
    return Figure(
        title=f"Offset map: share of images whose prediction changes when the content moves by (dy, dx) ({bmap.fill} fill)",
        png=to_png(fig),
    )


def _display(t) -> np.ndarray:
    """A normalised image tensor [C, H, W] as H x W x 3 in [0, 1]: undone with the ImageNet
    statistics when that gives plausible pixel values, else contrast-stretched."""
    from .images import IMAGENET_MEAN, IMAGENET_STD

    a = t.detach().float().cpu().numpy()
    if a.shape[0] == 3:
        rgb = a * np.array(IMAGENET_STD)[:, None, None] + np.array(IMAGENET_MEAN)[:, None, None]
        if ((rgb < -0.05) | (rgb > 1.05)).mean() < 0.01:
            return np.transpose(np.clip(rgb, 0.0, 1.0), (1, 2, 0))
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
    lo, hi = float(a.min()), float(a.max())
    return np.transpose((a - lo) / (hi - lo if hi > lo else 1.0), (1, 2, 0))


def examples_figure(images, rows, fill: str) -> Figure:
    """One row per ``(caption, probe, name)``: the centred image beside its shifted view,
    each titled with its top-1 label (``name`` turns a class index or score into text)."""
    from .shifts import shifted_views

    fig, axes = figure(len(rows), 2, figsize=(6.4, 3.3 * len(rows)))
    axes = np.atleast_2d(axes)
    for (caption, p, name), (left, right) in zip(rows, axes):
        original = images[p.image]
        shifted = shifted_views(images, [(p.dy, p.dx)], fill, index=[p.image])[0]
        left.imshow(_display(original))
        left.set_title(f"image {p.image}, centred:\n{name(p.before)}", fontsize=9)
        right.imshow(_display(shifted))
        right.set_title(f"{caption} dy={p.dy:+d}, dx={p.dx:+d}:\n{name(p.after)} (drop {p.drop:.3f})", fontsize=9)
        for ax in (left, right):
            ax.set_axis_off()
    return Figure(
        title="Worst shift found (largest drop of the centred top-1 probability)"
        + (" and the smallest shift that flips the prediction" if len(rows) > 1 else "")
        + f": original vs shifted view with both top-1 labels ({fill} fill)",
        png=to_png(fig),
    )


def shift_figures(images, bmap, worst, flip, fill, name) -> list[Figure]:
    """The gate's figures: 3 x 3 border map, offset map, worst (and smallest flipping) example."""
    rows = [("worst shift", worst, name)] if worst is not None else []
    if flip is not None and (worst is None or (flip.image, flip.dy, flip.dx) != (worst.image, worst.dy, worst.dx)):
        rows.append(("smallest flip", flip, name))
    figures = [border_map_figure(bmap), offset_map_figure(bmap)]
    if rows:
        figures.append(examples_figure(images, rows, fill))
    return figures
