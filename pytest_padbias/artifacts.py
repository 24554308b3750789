"""Line artifacts in feature maps and skewed filters (Mind the Pad).

*Line artifacts.* Zero padding makes the outer rows and columns of a feature map differ
from its interior even when the input is the same everywhere, and deeper layers
compound it (the slides' "Feature maps under 0-padding / under mirror padding"; the
reproducibility report's SSD ReLU outputs on a black image). :func:`line_artifacts`
averages each layer's output over channels and over a batch of images (random noise,
the constant zero image, natural photographs) and scores how far the border lines are
from the interior.

*Skewed filters.* A strided layer that reads padding on one side only learns kernels
whose mass leans away from that side (the slides' "Uneven padding => skewed filters").
:func:`kernel_skew` averages every conv layer's kernels over input and output channels
and measures the offset of their centre of mass, flagged against whether the layer pads
unevenly at the given input size (:func:`pytest_padbias.geometry.trace_padding`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .result import Figure, PadbiasError

INPUT_KINDS = ("random", "zeros", "natural")
#: The interior's spread is floored at this fraction of its mean magnitude, so a
#: perfectly flat interior (a constant input) gives a large but finite z-score.
Z_SPREAD_FLOOR = 1e-3
_TINY = 1e-12


# --------------------------------------------------------------------------- line artifacts


@dataclass
class BorderScore:
    """How the outer lines of one mean response map differ from its interior.

    ``score``: mean |border − interior mean| over the outer ring, divided by the
    interior's mean |response|; 0 when the border lines equal the interior level.
    ``z``: the same deviation in units of the interior's standard deviation (about 0.8
    for a border that is just more of the interior; floored spread, see Z_SPREAD_FLOOR).
    ``sides`` and ``corners``: signed deviation of each outer line / corner cell from the
    interior mean, relative to the interior's mean |response|.
    """

    score: float
    z: float
    sides: dict[str, float]
    corners: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "z": self.z, "sides": dict(self.sides), "corners": dict(self.corners)}


def border_score(response: np.ndarray, border: int = 1) -> BorderScore | None:
    """Score one ``[H, W]`` map; None when it has no interior (H or W <= 2 × border)."""
    r = np.asarray(response, dtype=np.float64)
    h, w = r.shape
    if h <= 2 * border or w <= 2 * border:
        return None
    interior = r[border : h - border, border : w - border]
    ring = np.ones_like(r, dtype=bool)
    ring[border : h - border, border : w - border] = False
    level = float(interior.mean())
    scale = max(float(np.abs(interior).mean()), _TINY)
    spread = max(float(interior.std()), Z_SPREAD_FLOOR * scale, _TINY)
    deviation = np.abs(r[ring] - level).mean()
    sides = {
        "top": r[:border].mean(), "bottom": r[h - border :].mean(),
        "left": r[:, :border].mean(), "right": r[:, w - border :].mean(),
    }
    corners = {"top_left": r[0, 0], "top_right": r[0, -1], "bottom_left": r[-1, 0], "bottom_right": r[-1, -1]}
    return BorderScore(
        score=float(deviation / scale),
        z=float(deviation / spread),
        sides={k: float((v - level) / scale) for k, v in sides.items()},
        corners={k: float((v - level) / scale) for k, v in corners.items()},
    )


@dataclass
class LayerResponse:
    """One layer's output averaged over channels and images, per input kind."""

    layer: str
    shape: tuple[int, int]
    responses: dict[str, np.ndarray] = field(repr=False)  # kind -> [H, W]; "all" = every image
    scores: dict[str, BorderScore | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "shape": [int(v) for v in self.shape],
            "scores": {k: (None if s is None else s.to_json()) for k, s in self.scores.items()},
        }


@dataclass
class LineArtifacts:
    padding_mode: str  # "model" for the model's own padding
    input_size: tuple[int, int]
    images: dict[str, int]  # kind -> number of images
    layers: list[LayerResponse]

    def by_depth(self, kind: str = "all") -> list[tuple[str, float | None]]:
        """(layer, score) in forward order."""
        return [(l.layer, None if l.scores.get(kind) is None else l.scores[kind].score) for l in self.layers]

    def to_json(self) -> dict[str, Any]:
        return {
            "padding_mode": self.padding_mode,
            "input_size": list(self.input_size),
            "images": dict(self.images),
            "layers": [l.to_json() for l in self.layers],
        }


def artifact_inputs(input_size=(224, 224), kinds=INPUT_KINDS, n_images: int = 4, channels: int = 3, seed: int = 0, mean=None, std=None) -> dict:
    """Normalised input batches per kind: ``random`` (standard normal, i.e. noise at
    the data's own scale), ``zeros`` (one constant image at the mean colour) and
    ``natural`` (crops of the bundled photographs)."""
    import torch

    h, w = input_size
    batches = {}
    for kind in kinds:
        if kind == "random":
            generator = torch.Generator().manual_seed(seed)
            batches[kind] = torch.randn(n_images, channels, h, w, generator=generator)
        elif kind == "zeros":
            batches[kind] = torch.zeros(1, channels, h, w)
        elif kind == "natural":
            from .images import IMAGENET_MEAN, IMAGENET_STD, natural_images

            images = natural_images(n_images, (h, w), seed=seed, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD)
            if channels != 3:
                images = images.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()
            batches[kind] = images
        else:
            raise PadbiasError(f"input kind {kind!r} is not known; accepted: {', '.join(INPUT_KINDS)}")
    return batches


def _default_layers(model) -> list[str]:
    import torch.nn as nn

    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def mean_responses(model, inputs, layers: Sequence[str] | None = None, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Each layer's 4-D output averaged over batch and channels -> ``{layer: [H, W]}``.

    The reduction happens inside the forward hook, so no feature map is kept.
    """
    import torch

    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else _default_layers(model)
    missing = [n for n in names if n not in modules]
    if missing:
        raise PadbiasError(f"the model has no layer(s) {', '.join(missing[:5])}; give qualified module names")
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def hook_for(name):
        def hook(_module, _args, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                total = output.detach().float().mean(dim=1).sum(dim=0)
                if name not in sums:
                    sums[name], counts[name] = total, 0
                elif sums[name].shape != total.shape:  # a module run at several sizes keeps its first
                    return
                else:
                    sums[name] += total
                counts[name] += output.shape[0]
        return hook

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).cpu().numpy() for name in sums}  # in forward order


def line_artifacts(
    model,
    input_size=(224, 224),
    *,
    kinds: Sequence[str] = INPUT_KINDS,
    n_images: int = 4,
    inputs: dict | None = None,
    layers: Sequence[str] | None = None,
    padding_mode: str | None = None,
    border: int = 1,
    seed: int = 0,
    mean=None,
    std=None,
) -> LineArtifacts:
    """Mean filter response and border score of every layer (default: every Conv2d).

    ``inputs`` overrides the generated batches (``{kind: normalised tensor}``). The
    ``"all"`` entry averages over every image of every kind. ``padding_mode`` switches
    the model's padding for the measurement and restores it after.
    """
    from .blindspot_stimuli import input_channels
    from .padding import restore_padding, switch_padding

    input_size = (int(input_size[0]), int(input_size[1]))
    batches = inputs if inputs is not None else artifact_inputs(input_size, kinds, n_images, input_channels(model), seed, mean, std)
    previous = switch_padding(model, padding_mode) if padding_mode else {}
    try:
        per_kind = {kind: mean_responses(model, batch, layers) for kind, batch in batches.items()}
    except RuntimeError as exc:
        raise PadbiasError(f"the model cannot run with {padding_mode or 'its own'} padding at {input_size[0]}x{input_size[1]} ({str(exc).splitlines()[0][:200]})") from None
    finally:
        restore_padding(model, previous)
    counts = {kind: int(len(batch)) for kind, batch in batches.items()}
    names = list(per_kind[next(iter(per_kind))]) if per_kind else []
    if not names:
        raise PadbiasError("no layer gave a 4-D feature map (the model has no Conv2d, or no inputs were given); name the layers with layers=[...]")
    result = []
    for name in names:
        responses = {kind: per_kind[kind][name] for kind in per_kind}
        responses["all"] = sum(responses[k] * counts[k] for k in per_kind) / sum(counts.values())
        scores = {kind: border_score(r, border) for kind, r in responses.items()}
        result.append(LayerResponse(name, tuple(responses["all"].shape), responses, scores))
    return LineArtifacts(padding_mode or "model", input_size, counts, result)


def _select(n: int, max_panels: int) -> list[int]:
    if n <= max_panels:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, max_panels).round().astype(int).tolist()))


def line_artifact_figure(results: Sequence[LineArtifacts], kind: str = "all", max_layers: int = 8) -> Figure:
    """One row per padding mode, one column per layer (evenly spaced by depth).

    Each column shares its colour scale across modes; the corner labels are each corner
    cell's deviation from the interior, relative to the interior's magnitude.
    """
    from .figures import figure, to_png

    if not results:
        raise ValueError("line_artifact_figure needs at least one LineArtifacts")
    layers = results[0].layers
    picked = _select(len(layers), max_layers)
    fig, axes = figure(len(results), len(picked), figsize=(1.9 * len(picked) + 0.6, 2.2 * len(results) + 0.5))
    axes = np.atleast_2d(np.asarray(axes).reshape(len(results), len(picked)))
    for col, index in enumerate(picked):
        maps = [res.layers[index].responses[kind] for res in results]
        lo, hi = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
        for row, res in enumerate(results):
            layer = res.layers[index]
            ax = axes[row, col]
            ax.imshow(layer.responses[kind], cmap="magma", vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            score = layer.scores[kind]
            text = "no interior" if score is None else f"score {score.score:.2f}"
            ax.set_title(f"{layer.layer}\n{layer.shape[0]}x{layer.shape[1]}, {text}", fontsize=6)
            if score is not None:
                h, w = layer.shape
                for (key, value), (y, x, ha, va) in zip(
                    score.corners.items(),
                    ((0, 0, "left", "top"), (0, w - 1, "right", "top"), (h - 1, 0, "left", "bottom"), (h - 1, w - 1, "right", "bottom")),
                ):
                    ax.text(x, y, f"{value:+.1f}", color="cyan", fontsize=5, ha=ha, va=va)
            if col == 0:
                ax.set_ylabel(_mode_label(res.padding_mode), fontsize=8)
    fig.suptitle(f"Mean filter response per layer ({kind} inputs): border lines and per-corner deviation", fontsize=9)
    modes = " vs ".join(_mode_label(r.padding_mode) for r in results)
    return Figure(title=f"Line artifacts: mean filter response per layer, {modes}", png=to_png(fig))


def _mode_label(mode: str) -> str:
    return "own padding" if mode == "model" else f"{mode} padding"


# --------------------------------------------------------------------------- skewed filters


@dataclass
class KernelSkew:
    """The mean kernel of one conv layer and how far its mass is off-centre.

    ``com_offset`` (dy, dx) is the centre of mass of |mean kernel| minus the kernel's
    centre, in kernel pixels (positive = towards the bottom / right); ``abs_com_offset``
    the same for the mean of |weights|. ``top_bottom`` / ``left_right`` are the top row
    minus the bottom row (left minus right column) of the mean kernel over its total
    magnitude. ``score`` = |com_offset|. ``uneven`` says whether the layer reads padding
    unevenly at the traced input size (None when unknown).
    """

    layer: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    mean_kernel: np.ndarray = field(repr=False)
    mean_abs_kernel: np.ndarray = field(repr=False)
    com_offset: tuple[float, float]
    abs_com_offset: tuple[float, float]
    top_bottom: float
    left_right: float
    score: float
    uneven: bool | None = None
    pad_read: tuple[int, int, int, int] | None = None

    @property
    def strided(self) -> bool:
        return max(self.stride) > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "com_offset": list(self.com_offset),
            "abs_com_offset": list(self.abs_com_offset),
            "top_bottom": self.top_bottom,
            "left_right": self.left_right,
            "score": self.score,
            "uneven": self.uneven,
            "pad_read": None if self.pad_read is None else list(self.pad_read),
            "mean_kernel": self.mean_kernel.round(6).tolist(),
        }


def centre_of_mass_offset(mass: np.ndarray) -> tuple[float, float]:
    """(dy, dx) of the centre of mass of a non-negative 2-D array from its centre."""
    mass = np.asarray(mass, dtype=np.float64)
    total = mass.sum()
    if total <= _TINY:
        return 0.0, 0.0
    ys, xs = np.indices(mass.shape)
    return (
        float((ys * mass).sum() / total - (mass.shape[0] - 1) / 2),
        float((xs * mass).sum() / total - (mass.shape[1] - 1) / 2),
    )


def skew_of_kernel(layer: str, weight, stride=(1, 1)) -> KernelSkew:
    """Skew of a conv weight ``[out, in, kh, kw]`` (numpy or torch)."""
    w = weight.detach().cpu().double().numpy() if hasattr(weight, "detach") else np.asarray(weight, dtype=np.float64)
    mean_kernel = w.mean(axis=(0, 1))
    mean_abs_kernel = np.abs(w).mean(axis=(0, 1))
    dy, dx = centre_of_mass_offset(np.abs(mean_kernel))
    magnitude = max(float(np.abs(mean_kernel).sum()), _TINY)
    return KernelSkew(
        layer=layer,
        kernel_size=tuple(int(v) for v in mean_kernel.shape),
        stride=tuple(int(v) for v in stride),
        mean_kernel=mean_kernel,
        mean_abs_kernel=mean_abs_kernel,
        com_offset=(dy, dx),
        abs_com_offset=centre_of_mass_offset(mean_abs_kernel),
        top_bottom=float((mean_kernel[0].sum() - mean_kernel[-1].sum()) / magnitude),
        left_right=float((mean_kernel[:, 0].sum() - mean_kernel[:, -1].sum()) / magnitude),
        score=float(np.hypot(dy, dx)),
    )


def kernel_skew(model, input_size=None, *, uneven_layers: set[str] | None = None) -> list[KernelSkew]:
    """Skew of every ``nn.Conv2d`` with a kernel larger than 1x1, in module order.

    The uneven flag comes from ``uneven_layers`` (qualified names) when given, else
    from :func:`pytest_padbias.geometry.trace_padding` at ``input_size``; with neither
    it is None.
    """
    import torch.nn as nn

    records: dict[str, Any] = {}
    if uneven_layers is None and input_size is not None:
        from .geometry import trace_padding

        for record in trace_padding(model, input_size):
            if record.op == "conv2d":
                seen = records.get(record.layer)
                # A module run more than once is uneven if any of its calls is.
                if seen is None or (record.uneven and not seen.uneven):
                    records[record.layer] = record
    skews = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or max(module.kernel_size) <= 1:
            continue
        skew = skew_of_kernel(name, module.weight, module.stride)
        if uneven_layers is not None:
            skew.uneven = name in uneven_layers
        elif name in records:
            skew.uneven = bool(records[name].uneven)
            skew.pad_read = tuple(int(v) for v in records[name].pad_read)
        skews.append(skew)
    return skews


def skew_summary(skews: Sequence[KernelSkew]) -> dict[str, Any]:
    """Mean skew score of the strided layers that pad unevenly vs those that pad evenly."""
    def mean(values):
        return float(np.mean(values)) if values else None

    strided = [s for s in skews if s.strided]
    uneven = [s.score for s in strided if s.uneven]
    even = [s.score for s in strided if s.uneven is False]
    return {
        "strided_layers": len(strided),
        "uneven_strided": len(uneven),
        "mean_score_uneven_strided": mean(uneven),
        "mean_score_even_strided": mean(even),
        "mean_score_stride_1": mean([s.score for s in skews if not s.strided]),
        "most_skewed": None if not skews else max(skews, key=lambda s: s.score).layer,
    }


def kernel_skew_figure(skews: Sequence[KernelSkew], strided_only: bool = True, max_layers: int = 12, title: str | None = None) -> Figure:
    """Mean kernel (top row) and mean |kernel| (bottom row) of the strided layers.

    '+' marks the kernel centre, 'x' the centre of mass; the title says whether the
    layer pads unevenly (like the slides' 'Padding Mode and Symmetry of Average Filter').
    """
    from .figures import figure, to_png

    chosen = [s for s in skews if s.strided] if strided_only else list(skews)
    if not chosen:
        chosen = list(skews)
    if not chosen:
        raise ValueError("kernel_skew_figure needs at least one conv layer with a kernel larger than 1x1")
    chosen = [chosen[i] for i in _select(len(chosen), max_layers)]
    fig, axes = figure(2, len(chosen), figsize=(1.7 * len(chosen) + 0.6, 4.0))
    axes = np.asarray(axes).reshape(2, len(chosen))
    for col, skew in enumerate(chosen):
        flag = {True: "uneven", False: "even", None: "padding ?"}[skew.uneven]
        for row, (kernel, (dy, dx)) in enumerate(((skew.mean_kernel, skew.com_offset), (skew.mean_abs_kernel, skew.abs_com_offset))):
            ax = axes[row, col]
            if row == 0:
                limit = max(float(np.abs(kernel).max()), _TINY)
                ax.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
                ax.set_title(f"{skew.layer}\ns{skew.stride[0]}, {flag}, skew {skew.score:.2f}", fontsize=6)
            else:
                ax.imshow(kernel, cmap="magma", vmin=0)
            cy, cx = (kernel.shape[0] - 1) / 2, (kernel.shape[1] - 1) / 2
            ax.plot([cx], [cy], "+", color="lime", markersize=8)
            ax.plot([cx + dx], [cy + dy], "x", color="cyan", markersize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        if col == 0:
            axes[0, 0].set_ylabel("mean kernel", fontsize=7)
            axes[1, 0].set_ylabel("mean |kernel|", fontsize=7)
    fig.suptitle(title or "Mean kernels of the strided layers (+ centre, x centre of mass)", fontsize=9)
    return Figure(title=title or "Skewed filters: mean kernel of each strided layer", png=to_png(fig))
