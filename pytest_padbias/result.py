"""Plain data shared by the analyses, the gates and the report writers.

Nothing here imports torch: the plugin imports this module on every pytest run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Figure:
    """A rendered PNG with a title that stands alone when copied into a review."""

    title: str
    png: bytes


@dataclass
class CheckResult:
    """The outcome of one gate on one model.

    ``value`` is what was measured, ``limit`` what it was held against (None when the
    gate is pass/fail by nature). ``summary`` is the one-line result shown in the
    report row; ``message`` is the failure explanation a reviewer reads (which layers,
    which sides, what to change) and is empty when the gate passed.
    """

    check: str
    passed: bool
    value: float
    limit: float | None
    details: dict[str, Any]
    summary: str
    message: str = ""
    figures: list[Figure] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "passed": bool(self.passed),
            "value": float(self.value),
            "limit": None if self.limit is None else float(self.limit),
            "summary": self.summary,
            "details": self.details,
        }


@dataclass
class GateContext:
    """Everything a gate may look at, gathered from the test's fixtures and options.

    ``model`` is an ``nn.Module`` in eval mode on ``device``; ``images`` a normalised
    float tensor ``[N, 3, H, W]`` on ``device``; ``score_fn`` maps a batch of images to
    one score per image for models that are not classifiers (None for classifiers);
    ``categories`` the class names of the weights when known.
    """

    model: Any
    images: Any
    input_size: tuple[int, int]
    device: str
    seed: int
    max_examples: int = 50
    derandomize: bool = False
    score_fn: Callable[[Any], Any] | None = None
    categories: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: Bytes the gate's analyses may use (--padbias-max-memory); None: the automatic budget.
    max_memory: int | None = None


class PadbiasError(Exception):
    """A problem with the user's input (model, weights, sizes, arguments).

    Its message is one sentence naming the problem and what is accepted; the plugin
    shows it as a usage error or a test error, never as a torch traceback.
    """


def cached_analysis(cache: dict | None, name: str, owners: tuple, params: tuple, compute: Callable[[], Any]):
    """``compute()`` once per analysis ``name``, ``owners`` (the model, image tensors...,
    matched by identity) and hashable ``params`` in a run's ``cache`` (the plugin's
    ``padbias_analysis_cache``); None computes afresh. Entries hold the owners themselves,
    so a recycled ``id`` can never match."""
    if cache is None:
        return compute()
    key = (name, tuple(id(o) for o in owners), params)
    hit = cache.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], owners)):
        hit = (tuple(owners), compute())
        cache[key] = hit
    return hit[1]
