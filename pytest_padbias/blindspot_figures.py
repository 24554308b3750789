"""The detectability figure: the centred stimulus, then each map as score / median with
its blind spots outlined (maps from :func:`pytest_padbias.blindspots.detectability_map`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .blindspots import BlindSpot, DetectabilityMap
from .result import Figure


def _cell_edges(offsets: np.ndarray, size: int) -> np.ndarray:
    """Edges of the grid cells around the stimulus centres, in input pixels."""
    centres = offsets + size / 2
    if len(centres) == 1:
        return np.array([centres[0] - size / 2, centres[0] + size / 2])
    mids = (centres[:-1] + centres[1:]) / 2
    return np.concatenate([[centres[0] - (mids[0] - centres[0])], mids, [centres[-1] + (centres[-1] - mids[-1])]])


def _outline(ax, region: BlindSpot, y_edges, x_edges, color="red"):
    """Draw the exact outline of a region's cells (edges shared with non-region cells)."""
    from matplotlib.collections import LineCollection

    cells = set(region.cell_index)
    segments = []
    for r, c in cells:
        y0, y1, x0, x1 = y_edges[r], y_edges[r + 1], x_edges[c], x_edges[c + 1]
        if (r - 1, c) not in cells:
            segments.append([(x0, y0), (x1, y0)])
        if (r + 1, c) not in cells:
            segments.append([(x0, y1), (x1, y1)])
        if (r, c - 1) not in cells:
            segments.append([(x0, y0), (x0, y1)])
        if (r, c + 1) not in cells:
            segments.append([(x1, y0), (x1, y1)])
    ax.add_collection(LineCollection(segments, colors=color, linewidths=1.8))


def detectability_figure(maps: Sequence, title: str | None = None) -> Figure:
    """The centred stimulus, then each map as score / median with blind spots outlined.

    ``maps`` are :class:`DetectabilityMap` (or :class:`PadbiasError` for a padding mode
    the model cannot run with); all share one colour scale.
    """
    from .figures import figure, to_png

    valid = [m for m in maps if isinstance(m, DetectabilityMap)]
    if not valid:
        raise ValueError("detectability_figure needs at least one DetectabilityMap")
    vmax = max(float((m.scores / m.median).max()) for m in valid)
    fig, axes = figure(1, len(maps) + 1, figsize=(3.3 * (len(maps) + 1), 3.6))
    axes = np.atleast_1d(axes)
    first = valid[0]
    axes[0].imshow(np.clip(first.preview, 0, 1))
    label = f"{first.target_name or ('class ' + str(first.target_class) if first.target_class is not None else 'score_fn')}"
    axes[0].set_title(f"stimulus {first.stimulus_size[0]}x{first.stimulus_size[1]} (centred)\n{label}: {first.centred_score:.2f}", fontsize=8)
    axes[0].set_axis_off()
    mesh = None
    for ax, m in zip(axes[1:], maps):
        if not isinstance(m, DetectabilityMap):
            ax.text(0.5, 0.5, "\n".join(_wrap(str(m), 40)), ha="center", va="center", fontsize=7, transform=ax.transAxes)
            ax.set_axis_off()
            continue
        y_edges, x_edges = _cell_edges(m.tops, m.stimulus_size[0]), _cell_edges(m.lefts, m.stimulus_size[1])
        mesh = ax.pcolormesh(x_edges, y_edges, m.scores / m.median, cmap="viridis", vmin=0, vmax=vmax)
        for region in m.regions:
            _outline(ax, region, y_edges, x_edges)
        ax.set_xlim(0, m.input_size[1])
        ax.set_ylim(m.input_size[0], 0)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        mode = "own padding" if m.padding_mode == "model" else f"{m.padding_mode} padding"
        ax.set_title(f"{mode}: min/median {m.min_median_ratio:.2f}\n{len(m.regions)} blind spot(s) below {m.ratio:g}×median", fontsize=8)
        ax.set_xlabel("stimulus centre x (px)", fontsize=7)
    axes[1].set_ylabel("stimulus centre y (px)", fontsize=7)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[1:]), shrink=0.8, label="score / median")
    fig.suptitle(title or "Stimulus detectability at each location (red: blind spots)", fontsize=9)
    return Figure(title=title or "Stimulus detectability at each location, zero vs mirror padding", png=to_png(fig))


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]
