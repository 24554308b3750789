"""Three-way verdicts: intervals and rules checked on effects whose answer is known."""
from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from pytest_padbias.result import CheckResult
from pytest_padbias import verdicts
from pytest_padbias.verdicts import (CONTRADICTED, NOT_RESOLVED, NOT_RUN, REPRODUCED, decide_directional, decide_directional_of_moments,
                                     decide_null, needed_n, record_verdict, t_interval)


def test_the_interval_is_scipys_student_t_interval():
    xs = [0.3, 1.1, 0.8, -0.2, 0.9, 0.4]
    mean, low, high, n = t_interval(xs)
    want = stats.t.interval(0.95, len(xs) - 1, loc=stats.tmean(xs), scale=stats.sem(xs))
    assert n == 6 and mean == pytest.approx(sum(xs) / 6)
    assert (low, high) == pytest.approx(want)


def test_a_decision_from_the_moments_equals_the_one_from_the_effects():
    effects = [0.05, -0.05, 0.1, -0.1, 0.0, 0.02]
    mean, sd = statistics.fmean(effects), statistics.stdev(effects)
    got, want = decide_directional_of_moments(mean, sd, len(effects), claimed=0.8), decide_directional(effects, claimed=0.8)
    assert (got.verdict, got.test, got.rule, got.n) == (want.verdict, want.test, want.rule, want.n) == (
        CONTRADICTED, want.test, want.rule, 6)
    assert (got.estimate, got.low, got.high) == pytest.approx((want.estimate, want.low, want.high))
    assert decide_directional_of_moments(mean, sd, 1, claimed=0.8).verdict == NOT_RESOLVED


def test_one_unit_leaves_the_interval_unbounded():
    mean, low, high, n = t_interval([2.0])
    assert (mean, n) == (2.0, 1) and low == -math.inf and high == math.inf
    assert decide_directional([2.0], claimed=0.8).verdict == NOT_RESOLVED


@pytest.mark.parametrize("effects, verdict", [
    ([0.9, 1.0, 0.7, 0.8, 1.1], REPRODUCED),  # clearly positive
    ([-0.9, -1.0, -0.7, -0.8, -1.1], CONTRADICTED),  # clearly the opposite sign
    ([0.05, -0.05, 0.1, -0.1, 0.0, 0.02], CONTRADICTED),  # clearly below half the claimed +0.8
    ([2.0, -1.5, 1.8, -1.2, 0.4], NOT_RESOLVED),  # admits both
])
def test_directional_claims(effects, verdict):
    d = decide_directional(effects, claimed=0.8)
    assert d.verdict == verdict
    assert d.n == len(effects) and d.low <= d.estimate <= d.high
    assert "Student-t 95%" in d.test and "half the claimed +0.8" in d.rule


def test_without_a_claimed_size_only_the_opposite_sign_contradicts():
    small = [0.05, -0.05, 0.1, -0.1, 0.0, 0.02]
    assert decide_directional(small).verdict == NOT_RESOLVED
    assert decide_directional([-x - 1 for x in small]).verdict == CONTRADICTED


@pytest.mark.parametrize("effects, verdict", [
    ([0.1, -0.2, 0.0, 0.15, -0.05, 0.1], REPRODUCED),  # inside +-1
    ([3.1, 2.8, 3.3, 2.9, 3.0, 3.2], CONTRADICTED),  # wholly above +1
    ([-3.1, -2.8, -3.3, -2.9, -3.0, -3.2], CONTRADICTED),  # wholly below -1
    ([0.9, 1.4, 0.6, 1.2, 1.0, 0.8], NOT_RESOLVED),  # straddles the margin
])
def test_null_claims_are_equivalence_tests(effects, verdict):
    assert decide_null(effects, margin=1.0).verdict == verdict


def test_needed_n_shrinks_the_interval_to_the_target():
    effects = [0.3, -0.4, 0.5, -0.2, 0.1, 0.6, -0.3, 0.2]
    n = needed_n(effects, 0.1)
    sd = stats.tstd(effects)
    assert n == math.ceil((1.959964 * sd / 0.1) ** 2)
    assert needed_n(effects, 0.05) > n and needed_n([1.0], 0.1) is None


def _result():
    return CheckResult("claim: x", passed=False, value=0.0, limit=None, details={}, summary="s")


def test_record_verdict_passes_a_reproduced_claim_and_writes_its_numbers():
    result = _result()
    d = decide_directional([0.9, 1.0, 0.7, 0.8, 1.1], claimed=0.8)
    record_verdict(result, d)
    assert result.passed and result.details["verdict"] == REPRODUCED
    assert result.details["n"] == 5 and len(result.details["interval"]) == 2 and result.details["test"] == d.test


@pytest.mark.parametrize("effects", [[-0.9, -1.0, -0.7, -0.8, -1.1], [2.0, -1.5, 1.8, -1.2, 0.4]])
def test_record_verdict_xfails_contradicted_and_open_claims(effects):
    result = _result()
    d = decide_directional(effects, claimed=0.8)
    with pytest.raises(pytest.xfail.Exception, match=d.verdict):
        record_verdict(result, d)
    assert not result.passed and result.details["verdict"] == d.verdict


def test_record_verdict_skips_a_claim_that_was_not_run():
    result = _result()
    with pytest.raises(pytest.skip.Exception, match="not run: needs ImageNet"):
        record_verdict(result, verdict=NOT_RUN, why="needs ImageNet labels")
    assert result.details["verdict"] == NOT_RUN
    with pytest.raises(ValueError, match="verdict='maybe'"):
        record_verdict(_result(), verdict="maybe")


def test_an_exact_claim_gets_the_verdict_of_its_check():
    from pytest_padbias.verdicts import EXACT_TEST, exact_verdict

    held, failed, gate = _result(), _result(), CheckResult("max_pans", passed=True, value=0.0, limit=0.05, details={}, summary="")
    held.passed = True
    for r in (held, failed, gate):
        exact_verdict(r)
    assert held.details == {"verdict": REPRODUCED, "test": EXACT_TEST}
    assert failed.details["verdict"] == CONTRADICTED and gate.details == {}
    decided = _result()
    decided.details["verdict"] = NOT_RESOLVED
    exact_verdict(decided)
    assert decided.details["verdict"] == NOT_RESOLVED


def test_an_open_claim_says_how_narrow_its_interval_must_get():
    d = decide_directional([2.0, -1.5, 1.8, -1.2, 0.4], claimed=0.8)  # estimate +0.3: above 0.3 decides "reproduced"
    assert d.verdict == NOT_RESOLVED and d.decisive_half_width == pytest.approx(0.3)
    d = decide_directional([-2.0, 1.5, -1.8, 1.2, -0.4], claimed=0.8)  # estimate -0.3: below 0.7 decides "contradicted"
    assert d.decisive_half_width == pytest.approx(0.7)
    d = decide_null([0.9, 1.4, 0.6, 1.2, 1.0, 0.8], margin=1.0)  # estimate 0.983: 0.017 from the margin
    assert d.decisive_half_width == pytest.approx(1.0 - d.estimate)
    assert needed_n([0.3, -0.4, 0.5, -0.2], d.decisive_half_width) > 100


def test_a_ceiling_leaves_an_uninformative_verdict_open():
    """Models with 0.02 points of error cannot show a 0.8-point gain: their "contradicted"
    is made "not resolved"; with room for the effect, or for the other verdict, it stands."""
    near_zero = [0.01, -0.01, 0.0, 0.01]
    contradicted = verdicts.decide_directional(near_zero, claimed=0.8)
    assert contradicted.verdict == verdicts.CONTRADICTED
    capped = verdicts.without_headroom(contradicted, error_points=0.02, effect_points=0.8, uninformative=verdicts.CONTRADICTED)
    assert capped.verdict == verdicts.NOT_RESOLVED and "ceiling" in capped.rule
    assert capped.interval_text() == contradicted.interval_text()
    kept = verdicts.without_headroom(contradicted, error_points=3.5, effect_points=0.8, uninformative=verdicts.CONTRADICTED)
    assert kept is contradicted
    equivalent = verdicts.decide_null(near_zero, margin=1.0)
    assert verdicts.without_headroom(equivalent, error_points=0.5, effect_points=1.0,
                                     uninformative=verdicts.REPRODUCED).verdict == verdicts.NOT_RESOLVED
    assert verdicts.without_headroom(equivalent, error_points=0.5, effect_points=1.0,
                                     uninformative=verdicts.CONTRADICTED) is equivalent
