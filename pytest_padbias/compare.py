"""Compare a run's JSON against an earlier one and name the regressions.

A rule ``NAME:+X%`` fails when a check whose name contains NAME (or its alias) rises by
more than X percentage points (values in [0, 1]: fractions and probabilities) or more than
X percent of the old value (other values); ``NAME:-X%`` fails on a fall. Without ``%`` the
bound is absolute: ``uneven:+0`` fails when any layer more pads unevenly.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

ALIASES = {
    "pans": "max_pans",
    "consistency": "shift_robust",
    "shift": "shift_robust",
    "uneven": "no_uneven_padding",
    "blindspot": "no_blind_spot",
    "blind_spot": "no_blind_spot",
}

_RULE = re.compile(r"^\s*([A-Za-z_][\w .:-]*?)\s*:\s*([+-])\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Rule:
    check: str
    direction: int  # +1: a rise is bad, -1: a fall is bad
    amount: float
    percent: bool

    def __str__(self):
        return f"{self.check}:{'+' if self.direction > 0 else '-'}{self.amount:g}{'%' if self.percent else ''}"


def parse_rules(text: str) -> tuple[Rule, ...]:
    """``"pans:+0.5%,consistency:-2%"`` -> rules; ArgumentTypeError on a bad rule."""
    rules = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        m = _RULE.match(part)
        if not m:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a comparison rule; use CHECK:+X% or CHECK:-X (e.g. pans:+0.5%,consistency:-2%)"
            )
        name, sign, amount, percent = m.groups()
        rules.append(Rule(ALIASES.get(name.strip(), name.strip()), 1 if sign == "+" else -1, float(amount), bool(percent)))
    if not rules:
        raise argparse.ArgumentTypeError("no comparison rule given; use CHECK:+X% or CHECK:-X (e.g. pans:+0.5%)")
    return tuple(rules)


def load_run(path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"comparison file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"comparison file {path} is not a pytest-padbias JSON report ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        raise argparse.ArgumentTypeError(f"comparison file {path} is not a pytest-padbias JSON report (no 'tests' list)")
    return doc


def _values(doc):
    out = {}
    for test in doc.get("tests", []):
        for check in test.get("checks", []):
            if isinstance(check.get("value"), (int, float)):
                out[(test["nodeid"], check["check"])] = float(check["value"])
    return out


def _allowed_change(rule: Rule, old: float) -> float:
    if not rule.percent:
        return rule.amount
    if 0.0 <= old <= 1.0:
        return rule.amount / 100.0  # percentage points of a fraction
    return abs(old) * rule.amount / 100.0


def compare(old: dict, new: dict, rules) -> tuple[list[dict], list[str]]:
    """Rows (old vs new per check present in both) and the regression messages."""
    old_values, new_values = _values(old), _values(new)
    rows, failures = [], []
    for key in sorted(old_values.keys() & new_values.keys()):
        nodeid, check = key
        before, after = old_values[key], new_values[key]
        row = {"nodeid": nodeid, "check": check, "old": before, "new": after, "change": after - before, "verdict": "ok"}
        for rule in rules:
            if rule.check not in check:
                continue
            change = (after - before) * rule.direction
            allowed = _allowed_change(rule, before)
            if change > allowed + 1e-12:
                row["verdict"] = f"regressed ({rule})"
                failures.append(
                    f"{check} of {nodeid} went from {before:.6g} to {after:.6g} "
                    f"({after - before:+.6g}; rule {rule} allows {'+' if rule.direction > 0 else '-'}{allowed:.6g})"
                )
        rows.append(row)
    return rows, failures
