"""One pytest-html page per model in a several-model run (``--padbias-report-dir``).

pytest-html writes one page per session. Each :class:`ModelPage` is a pytest-html report
object of its own (the same classes pytest-html registers for ``--html``, so the page looks
and works the same) that is fed only its model's tests and the tests that do not depend
on the model. Like the single page, it is written into a hidden staging folder and
renamed into place once complete (:func:`pytest_padbias.report.stage_html`).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from .matrix import strip_group
from .report import TARGET_PROPERTY, discard_html, publish_html, stage_html, with_suffix


class ModelPage:
    def __init__(self, config, collector, target_id: str, base: Path):
        import pytest_html
        from pytest_html.report import Report
        from pytest_html.report_data import ReportData
        from pytest_html.selfcontained_report import SelfContainedReport
        from pytest_html.util import _process_css, _read_template

        resources = Path(pytest_html.__file__).parent / "resources"
        css = _process_css(resources / "style.css",
                           [Path(os.path.expandvars(c)).expanduser() for c in config.getoption("css", None) or []])
        self.target = target_id
        self.collector = collector
        self.final = with_suffix(Path(base).absolute(), ".html")
        self.staged = stage_html(self.final)
        cls = SelfContainedReport if config.getoption("self_contained_html", False) else Report
        self.page = cls(str(self.staged), config, ReportData(config), _read_template([resources]), css)
        self.page._report.title = self.final.name
        self.loadgroup = getattr(config.option, "dist", None) == "loadgroup"
        self.published = False

    def _mine(self, report) -> bool:
        tid = next((v for k, v in getattr(report, "user_properties", ()) if k == TARGET_PROPERTY), None)
        return tid is None or tid == self.target

    def _copy(self, report):
        """pytest-html rewrites a report's extras in place (figures to asset paths): give it
        a copy, so every page and the JSON see the figures as the test produced them."""
        mine = copy.copy(report)
        mine.extras = [dict(x) for x in getattr(report, "extras", [])]
        if self.loadgroup:
            mine.nodeid = strip_group(report.nodeid)
        return mine

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session):
        self.page.pytest_sessionstart(session)

    @pytest.hookimpl(trylast=True)
    def pytest_collectreport(self, report):
        self.page.pytest_collectreport(report)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report):
        if self._mine(report):
            self.page.pytest_runtest_logreport(self._copy(report))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        self.collector.current_page = self.target
        try:
            self.page.pytest_sessionfinish(session)
        except BaseException:
            discard_html(self.staged)  # the page may be incomplete: keep the previous one
            raise
        finally:
            self.collector.current_page = None
        publish_html(self.staged, self.final)
        self.published = True

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        if self.published:
            terminalreporter.write_sep("-", f"padbias page of {self.target}: {self.final.as_uri()}")

    def pytest_unconfigure(self, config):
        if not self.published:
            discard_html(self.staged)

