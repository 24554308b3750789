"""The ``@padbias.no_blind_spot`` gate on the detectability map of :mod:`pytest_padbias.blindspots`."""
from __future__ import annotations

from typing import Any

from .blindspot_figures import detectability_figure
from .blindspots import DetectabilityMap, _model_device_dtype, default_batch_size, detectability_map, no_blind_spot_arguments
from .result import CheckResult, GateContext, PadbiasError


def _even_size_hint(model, input_size) -> str:
    """Suggest the nearest larger input size at which no layer pads unevenly, if any."""
    h, w = input_size
    try:
        from .geometry import nearest_even_sizes, size_program, uneven_layers

        if not uneven_layers(model, input_size):
            return ""
        if "dynamic" in size_program(model, input_size).notes:
            return ""  # every candidate size would need a new trace of the model
        above = nearest_even_sizes(model, input_size, search=64)["above"]
    except Exception:  # the hint is optional; a model the tracer cannot follow gets none
        return ""
    if not above:
        return ""
    return f", or an input size at which every layer pads evenly (e.g. {above[0]}x{above[1]} instead of {h}x{w})"


def no_blind_spot_check(ctx: GateContext, ratio=0.5, stride=None, stimulus=None, min_area=1) -> CheckResult:
    """Fail when the stimulus has a blind-spot region under the model's own padding.

    value = min/median detectability, limit = ``ratio``. The figure shows the map with
    its regions outlined beside the map under reflect padding.
    """
    from .resources import forward_batch_size, gate_budget

    args = no_blind_spot_arguments(ratio, stride, stimulus, min_area)
    # Placements per forward pass: the sweep's default within --padbias-max-memory, refused
    # before any forward pass when a single placement does not fit.
    size = (int(ctx.input_size[0]), int(ctx.input_size[1]))
    default = default_batch_size(size, _model_device_dtype(ctx.model)[0].type)
    batch = forward_batch_size(ctx.model, size, default, gate_budget(ctx), default=default)
    common = dict(
        stimulus=args["stimulus"], stride=args["stride"], ratio=args["ratio"], min_area=args["min_area"],
        score_fn=ctx.score_fn, categories=ctx.categories, seed=ctx.seed,
        mean=ctx.extras.get("mean"), std=ctx.extras.get("std"), batch_size=batch,
    )
    own = detectability_map(ctx.model, ctx.input_size, **common)
    try:
        mirror: Any = detectability_map(ctx.model, ctx.input_size, padding_mode="reflect", target_class=own.target_class, **common)
    except PadbiasError as exc:
        mirror = exc
    passed = not own.regions
    details = own.to_json()
    details["ratio_limit"] = args["ratio"]
    details["reflect"] = mirror.to_json() if isinstance(mirror, DetectabilityMap) else {"error": str(mirror)}
    what = own.target_name or ("the score" if own.target_class is None else f"class {own.target_class}")
    summary = (
        f"min/median detectability {own.min_median_ratio:.2f} (limit {args['ratio']:g}), "
        f"{len(own.regions)} blind spot(s) over {own.scores.size} placements"
    )
    if isinstance(mirror, DetectabilityMap):
        summary += f"; reflect padding {mirror.min_median_ratio:.2f}"
    message = "" if passed else _blind_spot_message(ctx, own, mirror, what)
    return CheckResult(
        check="no_blind_spot", passed=passed, value=own.min_median_ratio, limit=args["ratio"],
        details=details, summary=summary, message=message,
        figures=[detectability_figure([own, mirror], title=f"Stimulus detectability ({what}): own padding vs reflect")],
    )


def _blind_spot_message(ctx: GateContext, own, mirror, what: str) -> str:
    """The failure's sentence: the worst region, what reflect padding did (``mirror``: its
    map, or the error it raised) and the advice that follows from it."""
    worst = own.regions[0]
    extra = f" and {len(own.regions) - 1} more region(s)" if len(own.regions) > 1 else ""
    helps = isinstance(mirror, DetectabilityMap) and (
        sum(r.cells for r in mirror.regions) < sum(r.cells for r in own.regions)
        and mirror.min_median_ratio >= own.min_median_ratio
    )
    if isinstance(mirror, DetectabilityMap):
        tried = f"with reflect padding the minimum is {mirror.min_median_ratio:.2f} of the median and {len(mirror.regions)} region(s) remain"
    else:
        tried = f"reflect padding could not be tried ({mirror})"
    # Switching a zero-trained model to reflect at test time can make things worse;
    # then only retraining with it is worth suggesting.
    advice = (
        "Switch the convolutions to padding_mode='reflect' (or 'replicate')" if helps
        else "Retrain with padding_mode='reflect' or 'replicate' (switching this model's padding at test time does not help)"
    )
    return (
        f"blind spot: the {own.stimulus_size[0]}x{own.stimulus_size[1]} stimulus ({what}) is detected at "
        f"{worst.min_ratio:.2f} of its median score when it lies in {worst.describe()}{extra}; {tried}. "
        f"{advice}{_even_size_hint(ctx.model, ctx.input_size)}."
    )
