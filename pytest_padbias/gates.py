"""The gate registry: marker name -> the module that validates its arguments and runs it.

Each gate module defines ``<gate>_arguments(*args, **kwargs) -> dict`` (plain Python
validation, called at collection) and ``<gate>_check(ctx, **kwargs) -> CheckResult``
(called after the test body). Modules are imported only when a marked test exists.
"""
from __future__ import annotations

import importlib
import inspect

from . import GATE_MARKERS
from .result import PadbiasError

GATE_MODULES = {
    "no_uneven_padding": "pytest_padbias.uneven_padding",
    "shift_robust": "pytest_padbias.shift_gate",
    "max_pans": "pytest_padbias.pan_gate",
    "no_blind_spot": "pytest_padbias.blindspot_gate",
}

MARKER_HELP = {
    "no_uneven_padding": "padbias_no_uneven_padding(input_size=None): fail when any conv/pool of padbias_model "
                         "reads padding unevenly or drops input at the input size (Mind the Pad, Sec. 5)",
    "shift_robust": "padbias_shift_robust(threshold, max_shift=None, fill='reflect'): fail when the shift "
                    "consistency of padbias_model on padbias_images is below threshold",
    "max_pans": "padbias_max_pans(fraction, theta=0.5): fail when more than fraction of the conv filters "
                "are Padding Aware Neurons",
    "no_blind_spot": "padbias_no_blind_spot(ratio=0.5, stride=None, stimulus=None, min_area=1): fail when a "
                     "region of the input has stimulus detectability below ratio x median",
}


def gate_functions(gate: str):
    """``(arguments, check)`` of a gate, or PadbiasError saying it is not available."""
    module_name = GATE_MODULES[gate]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise PadbiasError(f"@padbias.{gate} is not implemented in this version of pytest-padbias") from None
        raise
    arguments = getattr(module, f"{gate}_arguments", None)
    check = getattr(module, f"{gate}_check", None)
    if arguments is None or check is None:
        raise PadbiasError(f"@padbias.{gate} is not implemented in this version of pytest-padbias")
    return arguments, check


def validate_marker(gate: str, args, kwargs) -> dict:
    """Normalised keyword arguments for one marker, or PadbiasError naming the problem."""
    arguments, _check = gate_functions(gate)
    signature = inspect.signature(arguments)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        accepted = ", ".join(str(p) for p in signature.parameters.values())
        raise PadbiasError(f"@padbias.{gate}: {exc}; accepted arguments: ({accepted})") from None
    return arguments(*args, **kwargs)


def item_gates(item) -> list[tuple[str, dict]]:
    """The gates on a test item, outermost decorator last, as (gate, raw marker)."""
    found = []
    for gate, marker_name in GATE_MARKERS.items():
        for mark in item.iter_markers(name=marker_name):
            found.append((gate, mark))
    return found


def run_gates(model, ctx, gates) -> tuple[list, list[str]]:
    """Run ``gates`` (``[(gate, kwargs)]``) on ``model`` with ``ctx``: ``(outcomes, failures)``,
    the :class:`~pytest_padbias.result.CheckResult` of every gate that could check the model
    and one sentence per gate that failed or could not check it."""
    from .model_checks import describe_failure, preflight, watch_inputs

    outcomes, failures = [], []
    # The gates judge the model in eval mode (dropout off, batch-norm running statistics);
    # each module gets its own train/eval flag back afterwards.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for gate, kwargs in gates:
            _arguments, check = gate_functions(gate)
            seen = None
            try:
                preflight(gate, ctx)
                with watch_inputs(model) as seen:
                    outcome = check(ctx, **kwargs)
            except PadbiasError as exc:
                failures.append(f"@padbias.{gate} could not check this model: {exc}")
                continue
            except Exception as exc:  # the user's model or score function, or a bug of ours: told apart
                failures.append(describe_failure(gate, exc, ctx.score_fn, seen))
                continue
            outcomes.append(outcome)
            if not outcome.passed:
                failures.append(f"@padbias.{gate} failed: {outcome.message or outcome.summary}")
    finally:
        for module, training in modes:
            module.training = training
    return outcomes, failures
