"""Foveation (Mind the Pad slides, "SAME 0-padding mildly marginalizes the periphery"):
how often the conv stack uses each input pixel, counted as paths from the pixel to a
feature map (:func:`pytest_padbias.geometry.foveation_map`), and how that changes with
depth, with input size and with the padding mode.

Every function here runs on the meta-device trace plus one-channel all-ones convolutions,
so it needs no weights and no images.
"""
from __future__ import annotations

import numpy as np

from .geometry import _parse_size, foveation_map, periphery_ratio
from .result import Figure, PadbiasError
from .trace import trace_spatial_ops

#: A pixel is "marginalised" when fewer than this fraction of the paths an interior pixel
#: has (far from every border) reach it.
MARGINAL_FRACTION = 0.5
#: Side of the input whose centre gives the interior path count; large enough that the
#: centre is out of reach of every border for common ImageNet backbones.
REFERENCE_SIZE = 1025


def foveation_by_depth(model, input_size) -> list[tuple[str, float]]:
    """``(conv layer, periphery/centre ratio)`` of the network up to each conv layer, in
    execution order (slides, "Deeper CNN => more foveation")."""
    h, w = _parse_size(input_size)
    trace = trace_spatial_ops(model, (h, w), foveation="layers")
    if not trace.layer_foveation:
        raise PadbiasError("the model has no convolution, so foveation by depth is undefined")
    return [(layer, periphery_ratio(counts)) for layer, counts in trace.layer_foveation]


def interior_count(model, reference_size: int = REFERENCE_SIZE) -> float:
    """Mean path count of a pixel far from every border: the centre 128 x 128 of a
    ``reference_size`` input (a multiple of common total strides, so it averages over
    the stride phases)."""
    counts, _ratio = foveation_map(model, (reference_size, reference_size))
    c = reference_size // 2
    return float(counts[c - 64 : c + 64, c - 64 : c + 64].mean())


def marginalised_fraction(model, sizes, reference: float | None = None) -> dict[int, float]:
    """For each square input size, the fraction of its pixels with fewer than
    MARGINAL_FRACTION of an interior pixel's paths (slides: "boundary marginalization is
    more extensive in smaller inputs, relative to input size")."""
    reference = interior_count(model) if reference is None else reference
    if not reference > 0:
        raise PadbiasError("no input pixel reaches the last feature map, so marginalisation is undefined")
    out = {}
    for size in sizes:
        counts, _ratio = foveation_map(model, (size, size))
        out[int(size)] = float((counts < MARGINAL_FRACTION * reference).float().mean())
    return out


def foveation_by_padding(model, input_size, modes=("zeros", "reflect", "replicate", "circular")) -> dict:
    """``{mode: (counts, periphery ratio)}`` with every conv's padding switched to each mode
    (slides' backup, "other padding schemes can also incur foveation"). Reflect and
    replicate padding read interior pixels again in place of the missing ones, so the
    counts move toward (replicate: onto) the outer lines instead of vanishing there.
    The model's padding is restored afterwards."""
    from .padding import restore_padding, switch_padding

    maps = {}
    for mode in modes:
        previous = switch_padding(model, mode)
        try:
            maps[mode] = foveation_map(model, input_size)
        finally:
            restore_padding(model, previous)
    return maps


def edge_usage(counts) -> dict[str, float]:
    """Mean count of the outer row/column on each side and of the second line, over the
    centre mean (1.0 = used like the centre)."""
    c = np.asarray(counts, dtype=np.float64)
    h, w = c.shape
    centre = c[h // 4 : h - h // 4, w // 4 : w - w // 4].mean()
    mid_h, mid_w = slice(h // 4, h - h // 4), slice(w // 4, w - w // 4)
    lines = {"top": c[0, mid_w], "bottom": c[-1, mid_w], "left": c[mid_h, 0], "right": c[mid_h, -1]}
    second = [c[1, mid_w], c[-2, mid_w], c[mid_h, 1], c[mid_h, -2]]
    out = {k: float(v.mean() / centre) for k, v in lines.items()}
    out["outer line"] = float(np.mean([out[k] for k in lines]))
    out["second line"] = float(np.mean([v.mean() for v in second]) / centre)
    return out


def depth_figure(by_depth, title) -> Figure:
    from .figures import figure, to_png

    fig, ax = figure(figsize=(6.4, 3.0))
    ax.plot(range(1, len(by_depth) + 1), [r for _l, r in by_depth], marker=".")
    ax.set_xlabel("conv layer (execution order)")
    ax.set_ylabel("periphery / centre paths")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_ylim(0, max(1.05, max(r for _l, r in by_depth) * 1.05))
    return Figure(title=title, png=to_png(fig))


def maps_figure(maps: dict, title, profile_rows: int = 24) -> Figure:
    """One normalised count map per entry (``{label: counts}``, same colour scale) and,
    on the right, each map's use of the first rows from the top border (mean over the
    middle half of the columns)."""
    from .figures import figure, to_png

    fig, axes = figure(1, len(maps) + 1, figsize=(3.0 * (len(maps) + 1), 3.2))
    axes = np.atleast_1d(axes)
    normed = {}
    for label, counts in maps.items():
        c = np.asarray(counts, dtype=np.float64)
        h, w = c.shape
        normed[label] = c / max(c[h // 4 : h - h // 4, w // 4 : w - w // 4].mean(), 1e-12)
    top = max(float(np.percentile(c, 99.5)) for c in normed.values())
    for ax, (label, c) in zip(axes, normed.items()):
        im = ax.imshow(c, cmap="viridis", vmin=0, vmax=top)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[:-1]), shrink=0.8, label="paths / centre mean")
    profile = axes[-1]
    for label, c in normed.items():
        h, w = c.shape
        rows = min(profile_rows, h // 2)
        line = c[: rows + 1, w // 4 : w - w // 4].mean(axis=1)
        # Pairs of rows: a stride-2 stem uses odd and even rows differently (a zigzag).
        profile.plot(range(rows), (line[:-1] + line[1:]) / 2, marker=".", label=label)
    profile.axhline(1.0, color="grey", lw=0.5)
    profile.set_xlabel("row from the top (2-row mean)", fontsize=8)
    profile.set_ylabel("paths / centre mean", fontsize=8)
    profile.legend(fontsize=7)
    return Figure(title=title, png=to_png(fig))


def size_figure(fractions: dict, title) -> Figure:
    from .figures import figure, to_png

    fig, ax = figure(figsize=(6.4, 3.0))
    sizes = sorted(fractions)
    ax.plot(sizes, [fractions[s] for s in sizes], marker="o")
    ax.set_xlabel("input size (px, square)")
    ax.set_ylabel(f"pixels with < {MARGINAL_FRACTION:.0%} of interior paths")
    ax.set_ylim(0, 1.02)
    return Figure(title=title, png=to_png(fig))
