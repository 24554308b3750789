"""The report collector: on the controller (under xdist it sees the workers' reports)
it gathers each test's checks, figures and run metadata and, at the end of the session,
writes the JSON documents, the comparisons with an earlier run, the index page of several
targets, the claims in the terminal summary and the summary at the top of pytest-html's
page. Registered by :func:`pytest_padbias.plugin.pytest_configure`; torch is never imported."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import __version__
from .report import PROPERTY, RUN_PROPERTY, TARGET_PROPERTY, build_document, dumps, with_suffix, write_atomic
from .stash import entries_key, pages_key, settings_key, targets_key


class ReportCollector:
    """Gathers results on the controller (under xdist it sees the workers' reports)
    and writes the JSON at the end of the session: one document per target, and with
    several targets the combined document and the index page."""

    def __init__(self, config):
        self.config = config
        self.figures: dict[str | None, list[tuple[str, str]]] = {}  # target id (None: not per target) -> figures
        self.runs: dict[str | None, dict] = {}  # target id -> run metadata the workers reported
        self.documents: dict[str, dict] = {}  # target id -> its document
        self.document: dict | None = None  # what --padbias-json gets: the document, or the combined one
        self.comparisons: dict[str, tuple[str, list]] = {}
        self.regressions: list[str] = []
        self.current_page: str | None = None  # the target whose page pytest-html is writing

    @property
    def several(self) -> bool:
        return len(self.config.stash[targets_key]) > 1

    def pytest_runtest_logreport(self, report):
        from .matrix import strip_group

        nodeid = strip_group(report.nodeid) if getattr(self.config.option, "dist", None) == "loadgroup" else report.nodeid
        entry = self.config.stash[entries_key].setdefault(nodeid, {"checks": [], "reports": [], "target": None})
        entry["reports"].append(report)
        for name, value in report.user_properties:
            if name == TARGET_PROPERTY:
                entry["target"] = value
            elif name == PROPERTY and report.when in ("call", "setup"):
                entry["checks"] = json.loads(value)
            elif name == RUN_PROPERTY:
                self.runs.setdefault(entry["target"], {}).update({k: v for k, v in json.loads(value).items() if v is not None})
        if report.when == "call":
            self.figures.setdefault(entry["target"], []).extend(
                (x.get("name", ""), x["content"]) for x in getattr(report, "extras", [])
                if x.get("format_type") == "image" and x.get("extension") == "png")

    def pytest_sessionfinish(self, session, exitstatus):
        config = self.config
        if hasattr(config, "workerinput"):
            return  # xdist workers: the controller writes the report
        from .index import combined_document, split_entries

        settings = config.stash[settings_key]
        targets = config.stash[targets_key]
        shared, per_target = split_entries(config.stash[entries_key], targets)
        for t in targets:
            run = {"model": t.model, "weights": settings.weights,
                   "input_size": list(settings.input_size) if settings.input_size else None,
                   "device": t.device, "seed": settings.seed, "padbias_version": __version__}
            run.update(self.runs.get(t.id if self.several else None, {}))
            if run.get("torch_version") is None:
                run["torch_version"] = _installed_version("torch")
            self.documents[t.id] = build_document(run, dict(sorted({**shared, **per_target[t.id]}.items())))
        if settings.compare:
            self._compare(session, settings, targets)
        if self.several:
            pages = config.stash.get(pages_key, {})
            self.document = combined_document(targets, self.documents, sorted(shared),
                                              {t.id: pages[t.id].name for t in targets} if pages else {})
            for t in targets:
                if t.id in pages:
                    write_atomic(with_suffix(pages[t.id], ".json"), dumps(self.documents[t.id]))
            if settings.report_dir:
                from .index import index_html

                write_atomic(Path(settings.report_dir) / "padbias-index.html", index_html(self.document))
        else:
            self.document = self.documents[targets[0].id]
        if settings.json:
            write_atomic(settings.json, dumps(self.document))

    def _compare(self, session, settings, targets):
        from .compare import baseline_for, compare, load_run, parse_rules, verdict_changes

        old = load_run(settings.compare)
        rules = parse_rules(settings.compare_fail) if settings.compare_fail else ()
        for t in targets:
            doc = self.documents[t.id]
            baseline = baseline_for(old, doc, {t.model for t in targets})
            if baseline is None:
                self.comparisons[t.id] = (f"{settings.compare} (no run of {t.model} in it)", [])
                continue
            rows, failures = compare(baseline, doc, rules)
            rows += verdict_changes(baseline, doc)
            self.comparisons[t.id] = (settings.compare, rows)
            self.regressions += [f"{t.id}: {f}" if self.several else f for f in failures]
        if self.regressions and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix, summary, postfix, session):
        from .compare import comparison_html
        from .index import anchored_summary, index_table_html
        from .summary import pick_figures

        if not self.documents:
            return
        if self.current_page is None and self.several:  # a page of the whole run (--html): the index table
            prefix.append(index_table_html(self.document))
            return
        tid = self.current_page or next(iter(self.documents))
        figures = self.figures.get(tid if self.several else None, []) + (self.figures.get(None, []) if self.several else [])
        text = anchored_summary(self.documents[tid], pick_figures(figures))
        if tid in self.comparisons:
            text = comparison_html(text, *self.comparisons[tid])
        prefix.append(text)

    def pytest_terminal_summary(self, terminalreporter):
        from .compare import format_row

        settings = self.config.stash[settings_key]
        for tid, (old, rows) in self.comparisons.items():
            where = f"{tid} " if self.several else ""
            terminalreporter.write_sep("-", f"padbias: {where}{len(rows)} checks compared with {old}")
            for r in rows:
                terminalreporter.write_line(format_row(r))
        for line in self.regressions:
            terminalreporter.write_line(f"REGRESSION: {line}", red=True, bold=True)
        if self.documents:
            self._write_claims(terminalreporter)
        if settings.json and self.document is not None:
            terminalreporter.write_sep("-", f"padbias JSON: {settings.json}")
        if self.several and settings.report_dir and self.document is not None:
            terminalreporter.write_sep("-", f"padbias index of {len(self.documents)} models: "
                                            f"{Path(settings.report_dir) / 'padbias-index.html'}")

    def _write_claims(self, terminalreporter):
        """The paper claims of the run, measured beside the paper's figure (the suites)."""
        from .summary import check_rows

        if self.several:
            from .index import claims_matrix_lines

            lines = claims_matrix_lines(self.document)
            if lines:
                terminalreporter.write_sep("-", f"padbias: paper claims on {len(self.documents)} models")
                for line in lines:
                    terminalreporter.write_line(line)
            return
        document = next(iter(self.documents.values()))
        entries = {t["nodeid"]: t for t in document["tests"]}
        rows = [r for r in check_rows(entries) if r["name"].startswith("claim: ")]
        if not rows:
            return
        terminalreporter.write_sep("-", f"padbias: {len(rows)} paper claims, measured")
        for r in rows:
            colour = {"pass": {"green": True}, "reproduced": {"green": True}, "FAIL": {"red": True},
                      "contradicted": {"red": True}}.get(r["verdict"], {"yellow": True})
            terminalreporter.write_line(f"{r['verdict']:<8} {r['name'].removeprefix('claim: ')}", bold=True, **colour)
            terminalreporter.write_line(f"         measured: {r['summary']}")
            terminalreporter.write_line(f"         paper:    {r['paper']}")


def _installed_version(dist):
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
