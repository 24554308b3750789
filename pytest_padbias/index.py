"""Several models in one run: the combined JSON, the cross-model index page
(``padbias-index.html``) and the Markdown tables made from them. No torch here.

The combined document holds each target's own document (exactly what its
``padbias-<model>-....json`` holds) under ``runs``, in the run's model order, and names the
tests that do not depend on the model (``shared``: e.g. the reproducibility report's zoo
claims), which every target's document also holds.

``python -m pytest_padbias.index reports/padbias-index.json`` prints the cross-model table
as Markdown; ``--architecture`` prints the architecture audit (default size, uneven ops,
nearest even size, foveation, even sizes) made with ``--padbias-weights=none``.
"""
from __future__ import annotations

import hashlib
import html
import re

from .report import json_entry
from .summary import VERDICT_COLOURS, check_rows, summary_html

COMBINED_KEYS = ("padbias_version", "torch_version", "seed", "weights", "shared", "runs")


def split_entries(entries: dict, targets) -> tuple[dict, dict]:
    """Collected entries -> (shared tests, {target id: its tests}) as JSON entries, each
    test under the id a run of its target alone gives it."""
    from .matrix import strip_target

    shared, per_target = {}, {t.id: {} for t in targets}
    several = len(targets) > 1
    for nodeid, e in entries.items():
        tid = e.get("target") if several else None
        if tid is None or tid not in per_target:
            shared[nodeid] = json_entry(nodeid, e["reports"], e["checks"])
        else:
            clean = strip_target(nodeid, tid)
            per_target[tid][clean] = json_entry(clean, e["reports"], e["checks"])
    return shared, per_target


def combined_document(targets, documents: dict, shared: list[str], pages: dict) -> dict:
    """One document for the whole run: run-wide fields, the shared test ids, then each
    target's document with its ``id`` and its page's file name (None without a report folder)."""
    first = documents[targets[0].id]
    runs = [{"id": t.id, "page": f"{pages[t.id]}.html" if t.id in pages else None, **documents[t.id]} for t in targets]
    return {"padbias_version": first.get("padbias_version"), "torch_version": first.get("torch_version"),
            "seed": first.get("seed"), "weights": _run_weights(runs), "shared": list(shared), "runs": runs}


def _run_weights(runs) -> str | None:
    names = {r.get("weights") for r in runs}
    return names.pop() if len(names) == 1 else "per model"


def is_combined(doc) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("runs"), list)


# --------------------------------------------------------------------------- anchors
def row_anchor(test: str, check: str | None, occurrence: int = 0) -> str:
    """The id of a check's row in its page's summary table (stable across runs)."""
    digest = hashlib.sha1(f"{test}\0{check}\0{occurrence}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", (check or test.rsplit("::", 1)[-1]).removeprefix("claim: ")).strip("-")[:40]
    return f"padbias-row-{slug}-{digest}"


def _anchors(rows) -> list[str]:
    seen: dict[tuple, int] = {}
    out = []
    for r in rows:
        key = (r["test"], r["name"])
        out.append(row_anchor(r["test"], r["name"], seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return out


def anchored_summary(document: dict, figures) -> str:
    """The page's summary (:func:`pytest_padbias.summary.summary_html`) with an id on every
    row of its checks table, which the index links to."""
    entries = {t["nodeid"]: t for t in document["tests"]}
    text = summary_html(document, entries, figures, None)
    anchors = iter(_anchors(check_rows(entries)))
    start = text.find('id="padbias-checks"')
    body_start = text.find("<tbody>", start)
    body_end = text.find("</tbody>", body_start)
    if start < 0 or body_start < 0 or body_end < 0:
        return text
    body = re.sub(r"<tr(?=[\s>])", lambda m: f'<tr id="{next(anchors, "")}"', text[body_start:body_end])
    return text[:body_start] + body + text[body_end:]


# --------------------------------------------------------------------------- the cross-model table
def index_rows(combined: dict) -> list[dict]:
    """One row per gate or claim (per test without one: its outcome), in the order they
    first appear: ``{"test", "name", "shared", "cells": {run id: cell}}``; a cell has the
    verdict, the measured summary and the anchor of its row in the run's page."""
    shared = set(combined.get("shared") or [])
    rows: dict[tuple, dict] = {}
    for run in combined["runs"]:
        seen_tests = set()
        entries = {t["nodeid"]: t for t in run["tests"]}
        counts: dict[tuple, int] = {}
        for r, anchor in zip(check_rows(entries), _anchors(check_rows(entries))):
            k = counts.get((r["test"], r["name"]), 0)
            counts[(r["test"], r["name"])] = k + 1
            key = (r["test"], r["name"], k)
            row = rows.setdefault(key, {"test": r["test"], "name": r["name"], "shared": r["test"] in shared, "cells": {}})
            row["cells"][run["id"]] = {"verdict": r["verdict"], "summary": r["summary"], "anchor": anchor,
                                       "page": run.get("page")}
            seen_tests.add(r["test"])
        for t in run["tests"]:
            if t["nodeid"] in seen_tests:
                continue
            key = (t["nodeid"], None, 0)
            row = rows.setdefault(key, {"test": t["nodeid"], "name": None, "shared": t["nodeid"] in shared, "cells": {}})
            row["cells"][run["id"]] = {"verdict": t["outcome"], "summary": t.get("reason", ""), "anchor": None,
                                       "page": run.get("page")}
    # A claim measured for one model but whose test was skipped or failed before measuring for
    # another: that model's cell says so.
    by_test = {}
    for run in combined["runs"]:
        for t in run["tests"]:
            by_test[(run["id"], t["nodeid"])] = t
    for row in rows.values():
        for run in combined["runs"]:
            if run["id"] not in row["cells"] and (run["id"], row["test"]) in by_test:
                t = by_test[(run["id"], row["test"])]
                row["cells"][run["id"]] = {"verdict": "not run" if t["outcome"] == "passed" else t["outcome"],
                                           "summary": t.get("reason", ""), "anchor": None, "page": run.get("page")}
    return list(rows.values())


def _label(run: dict) -> str:
    return f"{run['model']} ({run['device']})" if run["id"].endswith(f"-{run['device']}") else run["model"]


_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:13px;margin:16px;color:#24292f}
table{border-collapse:collapse}th,td{border:1px solid #d0d7de;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f6f8fa;position:sticky;top:0}td.cell{max-width:260px}td.cell a{color:inherit;text-decoration:none}
td.cell a:hover{text-decoration:underline}.verdict{font-weight:bold}.summary{color:#57606a}
"""


def index_table_html(combined: dict) -> str:
    """The cross-model table (also the summary of a ``--html`` page of the whole run)."""
    e = html.escape
    runs = combined["runs"]
    parts = ['<div id="padbias-index-summary"><h2>Spatial bias audit of several models (pytest-padbias)</h2>',
             f"<p>{len(runs)} models, weights {e(str(combined.get('weights')))}, seed {e(str(combined.get('seed')))}, "
             f"torch {e(str(combined.get('torch_version')))}, pytest-padbias {e(str(combined.get('padbias_version')))}</p>",
             '<table id="padbias-index"><thead><tr><th>gate / claim</th><th>test</th>']
    for run in runs:
        head = e(_label(run))
        if run.get("page"):
            head = f'<a href="{e(run["page"])}">{head}</a>'
        size = "x".join(map(str, run.get("input_size") or [])) or "default size"
        parts.append(f'<th data-run="{e(run["id"])}">{head}<br><span class="summary">{e(size)}</span></th>')
    parts.append("</tr></thead><tbody>")
    for row in index_rows(combined):
        name = (row["name"] or "(test outcome)").removeprefix("claim: ")
        parts.append(f"<tr><td>{e(name)}</td><td>{e(row['test'])}</td>")
        cells = [row["cells"].get(run["id"]) for run in runs]
        if row["shared"]:
            cell = next((c for c in cells if c), None)
            parts.append(_cell(cell, colspan=len(runs), note=" (the same test for every model)"))
        else:
            parts += [_cell(c) for c in cells]
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _cell(cell, colspan: int = 1, note: str = "") -> str:
    e = html.escape
    span = f' colspan="{colspan}"' if colspan > 1 else ""
    if cell is None:
        return f'<td class="cell"{span}><span class="summary">-</span></td>'
    colour = VERDICT_COLOURS.get(cell["verdict"], {"failed": "#cf222e", "error": "#cf222e", "passed": "#1a7f37"}
                                 .get(cell["verdict"], "#9a6700"))
    inner = (f'<span class="verdict" style="color:{colour}">{e(cell["verdict"])}</span>{e(note)}'
             f'<br><span class="summary">{e(cell["summary"] or "")}</span>')
    if cell.get("page"):
        href = e(cell["page"]) + (f"#{e(cell['anchor'])}" if cell.get("anchor") else "")
        inner = f'<a href="{href}">{inner}</a>'
    return f'<td class="cell"{span} data-verdict="{e(cell["verdict"])}">{inner}</td>'


def index_html(combined: dict) -> str:
    """``padbias-index.html``: a self-contained page (no script, no asset)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pytest-padbias index</title>"
            f"<style>{_STYLE}</style></head><body>{index_table_html(combined)}</body></html>\n")


def claims_matrix_lines(combined: dict) -> list[str]:
    """Terminal lines: each paper claim with every model's verdict."""
    lines = []
    for row in index_rows(combined):
        if not (row["name"] or "").startswith("claim: "):
            continue
        cells = [(run["id"], row["cells"].get(run["id"])) for run in combined["runs"]]
        if row["shared"]:
            cell = next((c for _r, c in cells if c), None)
            verdicts = f"{cell['verdict']} (every model)" if cell else "-"
        else:
            verdicts = ", ".join(f"{rid} {c['verdict'] if c else '-'}" for rid, c in cells)
        lines.append(f"{row['name'].removeprefix('claim: ')}: {verdicts}")
    return lines


def markdown_index(combined: dict) -> str:
    """The cross-model table as Markdown: one row per gate or claim, one column per model."""
    runs = combined["runs"]
    lines = ["| claim or gate | " + " | ".join(_label(r) for r in runs) + " |", "| --- |" + " --- |" * len(runs)]
    for row in index_rows(combined):
        cells = []
        for run in runs:
            c = row["cells"].get(run["id"])
            cells.append(f"{c['verdict']}: {c['summary']}" if c else "-")
        name = (row["name"] or row["test"].rsplit("::", 1)[-1]).removeprefix("claim: ")
        lines.append("| " + " | ".join(_md(x) for x in [name, *cells]) + " |")
    return "\n".join(lines)


def _md(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


# --------------------------------------------------------------------------- architecture audit
ARCHITECTURE_CLAIMS = {
    "uneven": "claim: uneven padding at the default size",
    "nearest": "claim: the suggested size pads evenly",
    "foveation": "claim: foveation under zero padding",
    "even": "claim: even sizes every 2^d pixels",
}


def architecture_rows(combined: dict) -> list[dict]:
    """Per model: default size, uneven ops there, nearest even size above it, periphery/centre
    path ratio, the first even sizes, and why a claim could not be measured."""
    out = []
    for run in combined["runs"]:
        found, problems = {}, {}
        for t in run["tests"]:
            checks = {c["check"]: c for c in t["checks"]}
            for key, name in ARCHITECTURE_CLAIMS.items():
                if name in checks:
                    found[key] = checks[name]
            if not t["checks"] and t["outcome"] in ("failed", "error"):
                problems.setdefault(t.get("reason") or t["outcome"], []).append(
                    t["nodeid"].rsplit("::", 1)[-1].removeprefix("test_"))
        nearest = (found.get("nearest", {}).get("details") or {}).get("nearest") or {}
        above = nearest.get("above")
        even = (found.get("even", {}).get("details") or {}).get("measured")
        ratio = (found.get("foveation", {}).get("details") or {}).get("measured")
        if ratio is None and "foveation" in found:
            ratio = float("nan")  # measured, but not finite (written as null)
        out.append({
            "model": run["model"],
            "size": "x".join(map(str, run.get("input_size") or [])) or "-",
            "uneven": (found["uneven"].get("details") or {}).get("measured") if "uneven" in found else None,
            "nearest": "x".join(map(str, above)) if above else None,
            "ratio": ratio,
            "even": even,
            "problems": [f"{', '.join(tests)}: {reason}" for reason, tests in problems.items()],
        })
    return out


def architecture_table(combined: dict) -> str:
    """The README's table of the ``torchvision:*`` architecture audit, as Markdown."""
    lines = ["| model | default size | uneven ops | nearest even size | periphery/centre | even sizes in 32..512 | not measured |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = architecture_rows(combined)
    for r in rows:
        even = r["even"]
        even_text = "none" if even == [] else (", ".join(map(str, even[:4])) + (", ..." if len(even) > 4 else "")
                                              if isinstance(even, list) else "-")
        cells = [r["model"], r["size"], "-" if r["uneven"] is None else r["uneven"], r["nearest"] or "-",
                 "-" if r["ratio"] is None else f"{r['ratio']:.3f}", even_text, "; ".join(r["problems"]) or ""]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    measured = sum(1 for r in rows if r["uneven"] is not None)
    uneven = sum(1 for r in rows if r["uneven"])
    lines.append("")
    lines.append(f"{len(rows)} models; {measured} measured at their default size, {uneven} of them pad unevenly there; "
                 f"torch {combined.get('torch_version')}, weights {combined.get('weights')}.")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m pytest_padbias.index [--architecture] reports/padbias-index.json
    import json
    import sys

    args = [a for a in sys.argv[1:] if a != "--architecture"]
    if len(args) != 1:
        sys.exit("usage: python -m pytest_padbias.index [--architecture] PADBIAS_INDEX_JSON")
    doc = json.loads(open(args[0], encoding="utf-8").read())
    if not is_combined(doc):
        sys.exit(f"{args[0]} is not a combined pytest-padbias JSON (no 'runs' list); run several --padbias-model")
    print(architecture_table(doc) if "--architecture" in sys.argv else markdown_index(doc))
