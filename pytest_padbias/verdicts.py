"""Three-way verdicts for the papers' claims: reproduced, contradicted, not resolved.

A claim measured on trained models is decided by an interval, never by a point estimate:
the effect (e.g. accuracy at 29x29 minus 28x28, paired by padding mode and seed) gets a
two-sided Student-t confidence interval over its ``n`` independent units, and

* a **directional** claim ("A beats B by about E") is *reproduced* when the interval lies
  above 0, *contradicted* when it lies below the smallest effect that would still count as
  the claimed one (``minimal``, by default half the claimed E; 0 when no size is claimed),
  so an effect of the opposite sign, or one clearly too small to be the claimed effect,
  contradicts it; otherwise *not resolved*;
* a **null** claim ("X barely matters") is *reproduced* when the interval lies inside
  ``(-margin, margin)`` (an equivalence test, the two one-sided tests at the same level),
  *contradicted* when it lies wholly outside ``[-margin, margin]`` (an effect where none
  was claimed), otherwise *not resolved*;
* a claim whose data the run does not have (ImageNet labels) is *not run*.

Every decided verdict names its test and its numbers (estimate, interval, n, level) in
``details``; :func:`record_verdict` puts them there and maps the verdict onto pytest:
reproduced passes, contradicted and not resolved are xfailed with the verdict as the
reason (the run stays green while the report says plainly what did not hold), not run
skips. Nothing here imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

REPRODUCED, CONTRADICTED, NOT_RESOLVED, NOT_RUN = "reproduced", "contradicted", "not resolved", "not run"
VERDICTS = (REPRODUCED, CONTRADICTED, NOT_RESOLVED, NOT_RUN)
#: Two-sided confidence level of every interval.
LEVEL = 0.95


@dataclass(frozen=True)
class Decision:
    """A verdict with the test and numbers that decided it."""

    verdict: str
    test: str
    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    rule: str = ""
    #: the half width the interval would need, at this estimate, to be decided either way
    decisive_half_width: float = math.nan

    def to_details(self) -> dict:
        return {"verdict": self.verdict, "test": self.test, "estimate": _round(self.estimate),
                "interval": [_round(self.low), _round(self.high)], "n": self.n, "level": self.level, "rule": self.rule}

    def interval_text(self, unit: str = "") -> str:
        return (f"{self.estimate:+.2f}{unit} [{self.low:+.2f}, {self.high:+.2f}] "
                f"({round(100 * self.level)}% CI, n = {self.n})")


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 4)


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the two-sided Student-t interval of the mean of ``values``
    (independent units). With fewer than two values, or no spread and n < 2, the interval is
    unbounded; with zero spread it is the point itself."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return math.nan, -math.inf, math.inf, 0
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    return t_interval_of_moments(mean, sd, n, level)


def t_interval_of_moments(mean: float, sd: float, n: int, level: float = LEVEL) -> tuple[float, float, float, int]:
    """:func:`t_interval` from a sample's mean, sd and n alone (for sets known only by the
    figures a run printed)."""
    from scipy.stats import t

    if n < 2:
        return mean, -math.inf, math.inf, n
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def decide_directional(effects, *, claimed: float | None = None, minimal: float | None = None,
                       level: float = LEVEL, what: str = "paired differences") -> Decision:
    """Verdict on "the effect is positive" (about ``claimed`` when the paper gives a size)."""
    return _directional(t_interval(effects, level), claimed, minimal, level, what)


def decide_directional_of_moments(mean: float, sd: float, n: int, *, claimed: float | None = None,
                                  minimal: float | None = None, level: float = LEVEL,
                                  what: str = "paired differences") -> Decision:
    """:func:`decide_directional` from the effects' mean, sd and n alone."""
    return _directional(t_interval_of_moments(mean, sd, n, level), claimed, minimal, level, what)


def _directional(interval, claimed, minimal, level, what) -> Decision:
    if minimal is None:
        minimal = claimed / 2 if claimed else 0.0
    mean, low, high, n = interval
    if low > 0:
        verdict = REPRODUCED
    elif high < minimal:
        verdict = CONTRADICTED
    else:
        verdict = NOT_RESOLVED
    rule = (f"reproduced if the interval lies above 0; contradicted if it lies below {minimal:+g}"
            + (f" (half the claimed {claimed:+g})" if claimed and minimal == claimed / 2 else "") + "; else not resolved")
    need = max(abs(mean), minimal - mean)
    return Decision(verdict, f"Student-t {round(100 * level)}% interval of the mean of {n} {what}", mean, low, high, n, level,
                    rule, need)


def decide_null(effects, *, margin: float, level: float = LEVEL, what: str = "paired differences") -> Decision:
    """Verdict on "the effect is negligible" (within +-``margin``): an equivalence test."""
    mean, low, high, n = t_interval(effects, level)
    if -margin < low and high < margin:
        verdict = REPRODUCED
    elif low > margin or high < -margin:
        verdict = CONTRADICTED
    else:
        verdict = NOT_RESOLVED
    rule = (f"reproduced if the interval lies inside (-{margin:g}, +{margin:g}) (equivalence); contradicted if it lies "
            f"wholly outside [-{margin:g}, +{margin:g}]; else not resolved")
    need = abs(margin - abs(mean))
    return Decision(verdict, f"Student-t {round(100 * level)}% interval of the mean of {n} {what}", mean, low, high, n, level,
                    rule, need)


def without_headroom(decision: Decision, *, error_points: float, effect_points: float, uninformative: str) -> Decision:
    """``decision`` made *not resolved* when the models cannot show the effect tested: an
    accuracy effect of ``effect_points`` needs at least that much error to remove, and
    models with ``error_points`` of error left are at the task's ceiling. There the
    ``uninformative`` verdict (contradicted for a gain, reproduced for "no difference")
    would say the task is too easy, not that the claim fails or holds."""
    if error_points >= effect_points or decision.verdict != uninformative:
        return decision
    return replace(decision, verdict=NOT_RESOLVED, rule=f"{decision.rule}; not resolved when the models' error "
                   f"({error_points:.2f} points) is below the {effect_points:.2f} points the test needs (a ceiling)")


def needed_n(effects, target_half_width: float, level: float = LEVEL) -> int | None:
    """Units needed for the interval's half width to reach ``target_half_width`` at the
    observed spread (normal approximation): what a note says when a claim stays open."""
    from scipy.stats import norm

    xs = [float(v) for v in effects]
    if len(xs) < 2 or target_half_width <= 0:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    z = float(norm.ppf(0.5 + level / 2))
    return max(2, math.ceil((z * sd / target_half_width) ** 2))


EXACT_TEST = "exact measurement on the model under test (no sampling: the same model gives the same figure)"


def exact_verdict(result) -> None:
    """Give a claim measured exactly (geometry, a census of one model) the verdict its
    ``passed`` says, unless it has one: such a claim has no interval, and its test fails
    when the claim is contradicted."""
    if result.check.startswith("claim:") and "verdict" not in result.details:
        result.details["verdict"] = REPRODUCED if result.passed else CONTRADICTED
        result.details["test"] = EXACT_TEST


def record_verdict(result, decision: Decision | None = None, *, verdict: str | None = None, why: str = ""):
    """Put ``decision`` (or a bare ``verdict`` such as :data:`NOT_RUN`) into the claim's
    ``details`` and ``passed``, then end the test as the verdict says: return for
    reproduced, ``pytest.xfail`` for contradicted / not resolved, ``pytest.skip`` for not run.
    Call it after the claim was recorded with ``padbias_record``."""
    import pytest

    verdict = decision.verdict if decision is not None else verdict
    if verdict not in VERDICTS:
        raise ValueError(f"verdict={verdict!r} is not one of {VERDICTS}")
    if decision is not None:
        result.details.update(decision.to_details())
    else:
        result.details["verdict"] = verdict
        result.details.pop("test", None)
    result.passed = verdict == REPRODUCED
    reason = f"{verdict}: {why or result.summary}"
    if verdict in (CONTRADICTED, NOT_RESOLVED):
        pytest.xfail(reason)
    if verdict == NOT_RUN:
        pytest.skip(reason)
