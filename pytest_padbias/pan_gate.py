"""The ``@padbias.max_pans(fraction, theta=0.5)`` gate on the census of :mod:`pytest_padbias.pans`,
and the run-wide census shared by the gate and the bundled PAN suite."""
from __future__ import annotations

from numbers import Real

from .pans import PanCensus, _check_images, check_theta, pan_census
from .result import CheckResult, GateContext, PadbiasError, cached_analysis


def shared_census(model, images, thetas, chunk_size=None, cache: dict | None = None) -> PanCensus:
    """``pan_census`` once per model object, image tensor and thresholds in a run: the
    ``max_pans`` gate and the bundled PAN suite read the same census (``cache``: see
    :func:`~pytest_padbias.result.cached_analysis`)."""
    thetas = check_theta(thetas)
    return cached_analysis(cache, "pan_census", (model, images), thetas,
                           lambda: pan_census(model, images, theta=thetas, chunk_size=chunk_size))


def max_pans_arguments(fraction, theta=0.5) -> dict:
    """Validate ``@padbias.max_pans(fraction, theta=0.5)`` without torch; normalised kwargs."""
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not (0 <= fraction <= 1):  # no float(): 10**400 overflows; NaN compares False
        raise PadbiasError(f"max_pans: fraction must be a number in [0, 1] (the largest accepted share of PAN neurons); got {fraction!r}")
    if isinstance(theta, bool) or not isinstance(theta, Real) or not (0 < theta <= 1):
        raise PadbiasError(f"max_pans: theta must be a number in (0, 1] (the KS threshold, 0.5 in the paper); got {theta!r}")
    return {"fraction": float(fraction), "theta": float(theta)}


def max_pans_check(ctx: GateContext, fraction, theta=0.5) -> CheckResult:
    """Fail when more than ``fraction`` of the analysed neurons are PANs at ``theta``."""
    from . import pan_figures

    import torch

    from .resources import census_chunk_size, gate_budget

    args = max_pans_arguments(fraction, theta)
    fraction, theta = args["fraction"], args["theta"]
    _check_images(ctx.model, ctx.images)
    # One pass when the batch fits --padbias-max-memory, else exact chunks; refused up front
    # when even one image (plus every image's border values) does not fit.
    chunk = census_chunk_size(ctx.model, ctx.images, gate_budget(ctx), workers=torch.get_num_threads())
    census = shared_census(ctx.model, ctx.images, sorted({0.4, 0.5, theta}), chunk, ctx.extras.get("analysis_cache"))
    value = census.fraction(theta)
    n_pans = int(census.is_pan(theta).sum())
    per_layer = census.layer_counts(theta)
    top = census.top_pans(theta, n=10)
    worst = sorted((row for row in per_layer if row["pans"]), key=lambda row: -row["pans"])[:3]
    passed = value <= fraction
    summary = (f"{n_pans} of {census.n_neurons} neurons are PANs at theta={theta:g} "
               f"({100 * value:.2f}%, limit {100 * fraction:.2f}%) in {len(census.layers)} conv layers")
    message = ""
    if not passed:
        def main_types(row):
            common = sorted(row["types"].items(), key=lambda kv: -kv[1])[:3]
            return ", ".join(f"{t} x{c}" for t, c in common) + (", ..." if len(row["types"]) > 3 else "")

        layers = "; ".join(f"{row['layer']}: {row['pans']} of {row['channels']} ({main_types(row)})" for row in worst)
        message = (f"PAN fraction {100 * value:.2f}% exceeds the limit of {100 * fraction:.2f}% at theta={theta:g}. "
                   f"Layers with most PANs (types = padded borders they detect): {layers}. "
                   "These neurons learnt to recognise the zero padding; consider reflect/replicate padding "
                   "or border augmentation (Padding Aware Neurons, §5).")
    figures = [pan_figures.layer_bar_figure(census, theta)]
    if top:
        figures.append(pan_figures.neuron_histogram_figure(ctx.model, ctx.images, census, top[0]["layer"], top[0]["channel"],
                                                           chunk_size=chunk))
    details = {
        "theta": theta,
        "pans": n_pans,
        "neurons": census.n_neurons,
        "fraction_by_theta": {str(t): census.fraction(t) for t in census.thetas},
        "layer_counts": per_layer,
        "type_counts": census.type_counts(theta),
        "top_pans": top,
        "skipped_layers": census.skipped,
    }
    return CheckResult("max_pans", passed, value, fraction, details, summary, message, figures)
