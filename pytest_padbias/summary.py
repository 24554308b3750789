"""The ten-second summary at the top of the pytest-html page. No torch here."""
from __future__ import annotations

import html

#: Where each gate's claim comes from and the paper's own figure for it.
GATE_SOURCES = {
    "no_uneven_padding": ("Mind the Pad, Sec. 5; reproducibility report Sec. 3",
                          "ResNet-50 / MobileNetV2 pad unevenly at 224, evenly at 225"),
    "max_pans": ("Padding Aware Neurons, Table 1", "about 1.5-3% of conv filters; ResNet-50: 81 PANs at theta 0.5"),
    "shift_robust": ("antialiased-cnns consistency; reproducibility report Fig. 9",
                     "ImageNet ResNet-50 consistency 89.2%"),
    "no_blind_spot": ("Mind the Pad, blind spots; reproducibility report SSD section",
                      "zero vs mirror padding AP 80.24% vs 83.20% (SSD)"),
}

VERDICT_COLOURS = {"pass": "#1a7f37", "reproduced": "#1a7f37", "FAIL": "#cf222e", "contradicted": "#cf222e",
                   "not run": "#57606a"}

PREFERRED_FIGURES = ("uneven padding", "pan", "blind spot", "detectability")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        text = ", ".join(_fmt(v) for v in value[:8])
        return f"[{text}{', ...' if len(value) > 8 else ''}]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in list(value.items())[:6])
    return str(value)


def check_rows(entries: dict) -> list[dict]:
    """One row per gate or claim: name, source, paper figure, measured figure, the check's
    one-line summary (else the measured figure), verdict."""
    rows = []
    for nodeid, entry in entries.items():
        for check in entry["checks"]:
            details = check.get("details") or {}
            source, paper = GATE_SOURCES.get(check["check"], (details.get("source", ""), details.get("paper", "")))
            measured = details.get("measured", check.get("value"))
            if check.get("limit") is not None and "measured" not in details:
                measured = f"{_fmt(check['value'])} (limit {_fmt(check['limit'])})"
            rows.append({"test": nodeid, "name": check["check"], "source": source, "paper": _fmt(paper),
                         "measured": _fmt(measured), "summary": check.get("summary") or _fmt(measured),
                         "verdict": _verdict(check, entry.get("outcome"))})
    return rows


def _verdict(check: dict, outcome) -> str:
    """A claim's own verdict (reproduced, contradicted, not resolved, not run) when it
    records one; else pass/FAIL for a gate or a claim measured without an interval."""
    verdict = (check.get("details") or {}).get("verdict")
    if verdict:
        return str(verdict)
    if outcome == "xfailed":
        return "not reproduced (xfail)"
    return "pass" if check.get("passed") else "FAIL"


def pick_figures(figures: list[tuple[str, str]], count: int = 3) -> list[tuple[str, str]]:
    """The most telling figures: uneven layers, PANs, blind spots first, then the rest."""
    chosen = []
    for word in PREFERRED_FIGURES:
        for title, b64 in figures:
            if word in title.lower() and (title, b64) not in chosen:
                chosen.append((title, b64))
                break
    for fig in figures:
        if len(chosen) >= count:
            break
        if fig not in chosen:
            chosen.append(fig)
    return chosen[:count]


def summary_html(run: dict, entries: dict, figures: list[tuple[str, str]], comparison=None) -> str:
    e = html.escape
    sha = run.get("weights_sha256")
    meta = [
        ("model", run.get("model")),
        ("weights", f"{run.get('weights')}" + (f" (SHA-256 {sha})" if sha else "")),
        ("input size", "x".join(map(str, run.get("input_size") or [])) or "default"),
        ("device", run.get("device")), ("seed", run.get("seed")),
        ("versions", f"torch {run.get('torch_version')}, pytest-padbias {run.get('padbias_version')}"),
    ]
    parts = ['<div id="padbias-summary"><h2>Spatial bias audit (pytest-padbias)</h2>',
             '<table class="padbias-meta">']
    parts += [f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in meta]
    parts.append("</table>")
    rows = check_rows(entries)
    parts.append('<table id="padbias-checks" class="padbias-checks"><thead><tr><th>gate / claim</th><th>test</th>'
                 "<th>source</th><th>paper</th><th>measured</th><th>verdict</th></tr></thead><tbody>")
    for r in rows:
        colour = VERDICT_COLOURS.get(r["verdict"], "#9a6700")
        parts.append(f"<tr><td>{e(r['name'])}</td><td>{e(r['test'])}</td><td>{e(r['source'])}</td>"
                     f"<td>{e(r['paper'])}</td><td>{e(r['measured'])}</td>"
                     f'<td style="color:{colour};font-weight:bold">{e(r["verdict"])}</td></tr>')
    if not rows:
        parts.append('<tr><td colspan="6">no gate or claim ran</td></tr>')
    parts.append("</tbody></table>")
    if comparison is not None:
        old_name, rows_cmp = comparison
        parts.append(f"<h3>Compared with {e(old_name)}</h3><table id=\"padbias-compare\"><tr><th>check</th><th>test</th>"
                     "<th>old</th><th>new</th><th>change</th><th>verdict</th></tr>")
        for r in rows_cmp:
            parts.append(f"<tr><td>{e(r['check'])}</td><td>{e(r['nodeid'])}</td><td>{r['old']:.6g}</td>"
                         f"<td>{r['new']:.6g}</td><td>{r['change']:+.6g}</td><td>{e(r['verdict'])}</td></tr>")
        parts.append("</table>")
    if figures:
        parts.append('<div class="padbias-figures" style="display:flex;flex-wrap:wrap;gap:12px">')
        for title, b64 in figures:
            parts.append(f'<figure style="margin:0"><img src="data:image/png;base64,{b64}" alt="{e(title)}" '
                         f'style="max-width:560px"><figcaption>{e(title)}</figcaption></figure>')
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def markdown_table(document: dict) -> str:
    """The claims and gates of a ``--padbias-json`` file as a Markdown table (the README's
    table of claims is made with ``python -m pytest_padbias.summary FILE``)."""
    entries = {t["nodeid"]: t for t in document["tests"]}
    lines = ["| claim or gate | source | paper | measured | verdict |", "| --- | --- | --- | --- | --- |"]
    for r in check_rows(entries):
        cells = [r["name"].removeprefix("claim: "), r["source"], r["paper"], r["summary"], r["verdict"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines.append("")
    lines.append(f"Measured on {document.get('model')} ({document.get('weights')}), seed {document.get('seed')}, "
                 f"torch {document.get('torch_version')}.")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m pytest_padbias.summary reports/padbias-....json
    import json
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m pytest_padbias.summary PADBIAS_JSON")
    print(markdown_table(json.loads(open(sys.argv[1], encoding="utf-8").read())))
