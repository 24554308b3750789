"""Compare a run's JSON against an earlier one and name the regressions.

A rule ``NAME:+X%`` fails when a check whose name contains NAME (or its alias) rises by
more than X percentage points (values in [0, 1]: fractions and probabilities) or more than
X percent of the old value (other values); ``NAME:-X%`` fails on a fall. Without ``%`` the
bound is absolute: ``uneven:+0`` fails when any layer more pads unevenly.

A claim whose own verdict (``details["verdict"]``: reproduced, contradicted, not resolved,
not run) differs between the two runs is listed too, beside the numeric rows.

With several models, each model is compared with its own earlier result: the run of the
same model (and device) in a combined ``padbias-index.json``, or a single earlier JSON
(:func:`baseline_for`).
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
    if isinstance(doc, dict) and isinstance(doc.get("runs"), list) and all(
            isinstance(r, dict) and isinstance(r.get("tests"), list) for r in doc["runs"]):
        return doc  # a combined document of several models
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        raise argparse.ArgumentTypeError(f"comparison file {path} is not a pytest-padbias JSON report (no 'tests' list)")
    return doc


def baseline_for(old: dict, new: dict, run_models=()) -> dict | None:
    """The earlier document to compare ``new`` (one model's document) with.

    In a combined document: the run of the same model on the same device, else of the same
    model, else None. A single earlier document is the baseline of every model of the run
    (the model a candidate replaces), unless it is of one of the run's models
    (``run_models``): then of that model only."""
    if isinstance(old.get("runs"), list):
        same = [r for r in old["runs"] if r.get("model") == new.get("model")]
        return next((r for r in same if r.get("device") == new.get("device")), same[0] if same else None)
    if old.get("model") in run_models and old.get("model") != new.get("model"):
        return None
    return old


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


def _verdicts(doc):
    out = {}
    for test in doc.get("tests", []):
        for check in test.get("checks", []):
            verdict = (check.get("details") or {}).get("verdict")
            if verdict:
                out[(test["nodeid"], check["check"])] = str(verdict)
    return out


def verdict_changes(old: dict, new: dict) -> list[dict]:
    """Rows for the claims whose own verdict changed (e.g. reproduced -> contradicted)."""
    before, after = _verdicts(old), _verdicts(new)
    return [{"nodeid": nodeid, "check": check, "old": before[(nodeid, check)], "new": after[(nodeid, check)],
             "change": None, "verdict": "verdict changed"}
            for nodeid, check in sorted(before.keys() & after.keys()) if before[(nodeid, check)] != after[(nodeid, check)]]


def format_row(r: dict) -> str:
    """One line of the terminal's comparison table."""
    if r.get("change") is None:
        return f"{r['check']:<28} {r['old']:>12} -> {r['new']:<12} {r['verdict']}  {r['nodeid']}"
    return f"{r['check']:<28} {r['old']:>12.6g} -> {r['new']:<12.6g} {r['verdict']}  {r['nodeid']}"


def comparison_html(summary: str, old_name: str, rows: list[dict]) -> str:
    """The page's comparison table (numbers and changed verdicts), placed in the summary
    ``summary`` before its figures."""
    import html

    e = html.escape
    parts = [f"<h3>Compared with {e(old_name)}</h3><table id=\"padbias-compare\"><tr><th>check</th><th>test</th>"
             "<th>old</th><th>new</th><th>change</th><th>verdict</th></tr>"]
    for r in rows:
        if r.get("change") is None:
            cells = (e(str(r["old"])), e(str(r["new"])), "-")
        else:
            cells = (f"{r['old']:.6g}", f"{r['new']:.6g}", f"{r['change']:+.6g}")
        parts.append(f"<tr><td>{e(r['check'])}</td><td>{e(r['nodeid'])}</td><td>{cells[0]}</td><td>{cells[1]}</td>"
                     f"<td>{cells[2]}</td><td>{e(r['verdict'])}</td></tr>")
    parts.append("</table>")
    table = "".join(parts)
    at = summary.find('<div class="padbias-figures"')
    if at < 0:
        at = summary.rfind("</div>")
    return summary[:at] + table + summary[at:] if at >= 0 else summary + table
