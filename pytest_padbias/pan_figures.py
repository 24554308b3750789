"""Report figures of the PAN census: activation histograms (the paper's Figures 3, 5-7),
PANs per layer (Table 1 as a bar chart) and the type table (Table 2)."""
from __future__ import annotations

from .figures import figure, to_png
from .pans import BORDER_NAMES, BORDERS, PAN_TYPES, PanCensus
from .result import Figure, PadbiasError

_COLOURS = {"T": "tab:blue", "B": "tab:orange", "L": "tab:green", "R": "tab:red"}


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the layer has run."""


def neuron_activations(model, images, layer: str, channel: int, chunk_size: int | None = None) -> dict:
    """One neuron's conv outputs on the four borders (float64) and the centre (float32, 4
    bytes a value: one channel's centre at 2048x2048 is 16 MB an image), ``chunk_size``
    images per forward pass (None: all at once)."""
    import numpy as np
    import torch

    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise PadbiasError(f"the model has no layer named {layer!r}")
    captured = {}

    def hook(mod, args, out):
        captured["map"] = out[:, channel].detach().cpu()
        raise _Captured

    handle = module.register_forward_hook(hook)
    borders = {b: [] for b in BORDERS}
    centre = None
    start = 0
    try:
        for chunk in torch.split(images, chunk_size or images.shape[0]):
            captured.clear()
            try:
                with torch.no_grad():
                    model(chunk)
            except _Captured:
                pass
            if "map" not in captured:
                raise PadbiasError(f"layer {layer!r} did not run in the forward pass")
            a = captured.pop("map")
            for b, side in zip(BORDERS, (a[:, 0, :], a[:, -1, :], a[:, :, 0], a[:, :, -1])):
                borders[b].append(side.double().numpy().ravel())
            inner = a[:, 1:-1, 1:-1].float().numpy()
            if centre is None:
                centre = np.empty(images.shape[0] * inner[0].size, dtype=np.float32)
            centre[start:start + inner.size] = inner.ravel()
            start += inner.size
    finally:
        handle.remove()
    out = {b: np.concatenate(v) for b, v in borders.items()}
    out["centre"] = centre
    return out


def histogram_figure(acts: dict, title: str, stats: dict | None = None) -> Figure:
    """Densities of the border and centre activations of one neuron, with the truncated
    centre (k highest / k lowest values, k = values in the top border) as outlines.
    Each array is binned by numpy in blocks and drawn from its counts, so the figure's
    memory is one sorted copy of the centre."""
    import numpy as np

    centre = np.sort(acts["centre"])
    k = min(len(acts["T"]), len(centre))
    lo = min([float(centre[0])] + [float(acts[b].min()) for b in BORDERS])
    hi = max([float(centre[-1])] + [float(acts[b].max()) for b in BORDERS])
    bins = np.linspace(lo, hi, 61) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, 11)
    fig, ax = figure(figsize=(7.0, 4.2))

    def hist(values, **kwargs):
        counts, edges = np.histogram(values, bins=bins)
        ax.hist(edges[:-1], bins=edges, weights=counts, density=True, **kwargs)

    hist(centre, color="0.6", alpha=0.6, label=f"centre (n={len(centre)})")
    hist(centre[-k:], histtype="step", color="purple", linestyle="--", label=f"centre, {k} highest (for KS+)")
    hist(centre[:k], histtype="step", color="saddlebrown", linestyle=":", label=f"centre, {k} lowest (for KS-)")
    for b in BORDERS:
        label = BORDER_NAMES[b]
        if stats:
            label += f": KS {stats['ks'][b]:.2f}, KS+ {stats['ks_plus'][b]:.2f}, KS- {stats['ks_minus'][b]:.2f}"
        hist(acts[b], histtype="step", linewidth=1.6, color=_COLOURS[b], label=label)
    ax.set_xlabel("conv output (activation before normalisation)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return Figure(title, to_png(fig))


def neuron_histogram_figure(model, images, census: PanCensus, layer: str, channel: int, theta: float = 0.5,
                            chunk_size: int | None = None) -> Figure:
    """Figure 3/5-7 style histogram of one neuron of the census, re-running the model to the layer."""
    record = census.neuron(census.find(layer, channel), theta)
    kind = record["type"][str(theta)]
    title = (f"{layer} channel {channel}: PAN type {kind} at theta={theta:g}" if kind != "none"
             else f"{layer} channel {channel}: not a PAN at theta={theta:g}")
    return histogram_figure(neuron_activations(model, images, layer, channel, chunk_size), title, record)


def strongest_pan_figures(model, images, census: PanCensus, theta: float = 0.5, n: int = 3) -> list[Figure]:
    """Histograms of the ``n`` PANs with the highest score."""
    return [neuron_histogram_figure(model, images, census, p["layer"], p["channel"], theta) for p in census.top_pans(theta, n)]


def layer_bar_figure(census: PanCensus, theta: float = 0.5) -> Figure:
    """PANs per analysed layer (Table 1): bars are the percentage, labels the count."""
    rows = census.layer_counts(theta)
    fig, ax = figure(figsize=(max(6.4, 0.35 * len(rows) + 2), 4.2))
    xs = range(len(rows))
    bars = ax.bar(xs, [r["percent"] for r in rows], color="tab:purple", label=f"PANs at theta={theta:g}")
    for bar, r in zip(bars, rows):
        if r["pans"]:
            ax.annotate(str(r["pans"]), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
    overall = 100 * census.fraction(theta)
    ax.axhline(overall, color="0.3", linestyle="--", linewidth=1, label=f"all layers: {overall:.2f}%")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["layer"] for r in rows], rotation=75, ha="right", fontsize=7)
    ax.set_xlabel("conv layer (kernel larger than 1x1)")
    ax.set_ylabel("PANs, % of the layer's channels")
    title = f"Padding aware neurons per layer: {int(census.is_pan(theta).sum())} of {census.n_neurons} (theta={theta:g}, {census.n_images} images)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return Figure(title, to_png(fig))


def type_table_figure(census: PanCensus, thetas=None) -> Figure:
    """Table 2: how many neurons detect each set of borders, one row per theta."""
    thetas = thetas or census.thetas
    fig, ax = figure(figsize=(9.0, 1.2 + 0.35 * len(thetas)))
    ax.axis("off")
    cells = [[str(census.type_counts(t)[k]) for k in PAN_TYPES] for t in thetas]
    table = ax.table(cellText=cells, rowLabels=[f"theta={t:g}" for t in thetas], colLabels=list(PAN_TYPES), loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    title = f"PAN types (borders detected: T top, B bottom, L left, R right) among {census.n_neurons} neurons"
    ax.set_title(title, fontsize=10)
    return Figure(title, to_png(fig))
