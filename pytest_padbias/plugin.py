"""pytest wiring of pytest-padbias: options, fixtures, gates, JSON and HTML extras.

The analyses live in plain modules; this file only connects them to pytest. torch is
imported inside fixtures and hooks, never at import time, because pytest loads this
plugin in every run of the environment.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from . import GATE_MARKERS, __version__
from .gates import MARKER_HELP, item_gates, validate_marker
from .options import add_options, resolve
from .report import (PROPERTY, RUN_PROPERTY, build_document, discard_html, dumps, html_extras, outcome_of, publish_html,
                     stage_html, write_atomic)
from .result import GateContext, PadbiasError

settings_key = pytest.StashKey()
entries_key = pytest.StashKey()
run_key = pytest.StashKey()
checks_key = pytest.StashKey()
gates_key = pytest.StashKey()

PADBIAS_FIXTURES = ("padbias_model", "padbias_images", "padbias_input_size", "padbias_score")


def pytest_addoption(parser):
    add_options(parser)


@pytest.hookimpl(tryfirst=True)  # before pytest-html reads --html
def pytest_configure(config):
    for gate, marker in GATE_MARKERS.items():
        config.addinivalue_line("markers", MARKER_HELP[gate].replace(f"padbias_{gate}", marker, 1))
    settings = resolve(config)
    if settings.report_dir and not hasattr(config, "workerinput"):
        settings = _place_reports(config, settings)
    config.stash[settings_key] = settings
    config.stash[entries_key] = {}
    config.stash[run_key] = {}
    config.pluginmanager.register(ReportCollector(config), "padbias-report-collector")
    if settings.explicit_model:
        from .models import check_model_spec

        try:
            check_model_spec(settings.model)
        except PadbiasError as exc:
            raise pytest.UsageError(str(exc)) from None
    if settings.device == "cuda":
        from .models import resolve_device

        try:
            resolve_device("cuda")
        except PadbiasError as exc:
            raise pytest.UsageError(str(exc)) from None


def _place_reports(config, settings):
    """Point pytest-html and the JSON into the report folder unless given explicitly."""
    import dataclasses

    from .models import default_input_size
    from .report import report_basename, with_suffix

    size = settings.input_size or default_input_size(settings.model)
    base = report_basename(settings.report_dir, settings.model, size, settings.weights)
    html_path = None
    if hasattr(config.option, "htmlpath"):
        if not config.option.htmlpath:
            config.option.htmlpath = str(with_suffix(base, ".html"))
        html_path = config.option.htmlpath
        # pytest-html writes its page in place (open("w")); it writes into a staging folder
        # instead, and pytest_sessionfinish below renames the finished page into place.
        final = Path(os.path.expandvars(html_path)).expanduser().absolute()
        config.stash[staged_html_key] = (stage_html(final), final)
        config.option.htmlpath = str(config.stash[staged_html_key][0])
    return dataclasses.replace(settings, json=settings.json or str(with_suffix(base, ".json")), html=html_path)


staged_html_key = pytest.StashKey()


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session):
    """Publish the page pytest-html wrote into its staging folder. pytest-html writes it in
    its own trylast ``pytest_sessionfinish``; this innermost wrapper resumes right after
    (and before the terminal summary), so a run killed earlier leaves the previous page."""
    staged = session.config.stash.get(staged_html_key, None)
    try:
        result = yield
    except BaseException:
        if staged:
            discard_html(staged[0])  # the page may be incomplete: keep the previous one
        raise
    if staged:
        publish_html(*staged)
        for plugin in session.config.pluginmanager.get_plugins():  # its "Generated html report" line
            if getattr(plugin, "_report_path", None) == staged[0]:
                plugin._report_path = staged[1]
    return result


def pytest_unconfigure(config):
    staged = config.stash.get(staged_html_key, None)
    if staged:
        discard_html(staged[0])  # a session that never finished (published folders are gone already)


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        gates = []
        for gate, mark in item_gates(item):
            try:
                gates.append((gate, validate_marker(gate, mark.args, mark.kwargs)))
            except PadbiasError as exc:
                raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        if gates:
            item.stash[gates_key] = gates
            # The gates run against these fixtures even when the test body does not ask for them.
            for name in PADBIAS_FIXTURES:
                if name not in item.fixturenames:
                    item.fixturenames.append(name)


def pytest_collection_finish(session):
    """Load the model once before any test when padbias fixtures are in use, so a bad
    model or weights file is a usage error at start-up rather than an error per test."""
    settings = session.config.stash[settings_key]
    uses = any(any(n in getattr(i, "fixturenames", ()) for n in PADBIAS_FIXTURES) for i in session.items)
    if uses and (settings.explicit_model or settings.weights != "default"):
        try:
            _loaded_model(session.config)
        except PadbiasError as exc:
            raise pytest.UsageError(str(exc)) from None


_loaded_key = pytest.StashKey()


def _loaded_model(config):
    if _loaded_key not in config.stash:
        from .models import load_model

        s = config.stash[settings_key]
        config.stash[_loaded_key] = load_model(s.model, s.weights, s.device)
    return config.stash[_loaded_key]


@pytest.fixture(scope="session")
def padbias_settings(pytestconfig):
    """The resolved ``--padbias-*`` options of this run."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def padbias_device(padbias_settings):
    """The torch device name the model and images live on."""
    from .models import resolve_device

    try:
        return resolve_device(padbias_settings.device)
    except PadbiasError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def padbias_loaded_model(pytestconfig, padbias_device):
    """The model of ``--padbias-model`` with its weights and their metadata."""
    import torch

    try:
        loaded = _loaded_model(pytestconfig)
    except PadbiasError as exc:
        pytest.fail(str(exc), pytrace=False)
    s = pytestconfig.stash[settings_key]
    pytestconfig.stash[run_key].update({
        "model": s.model, "weights": loaded.weights, "weights_sha256": loaded.weights_sha256,
        "device": padbias_device, "seed": s.seed, "torch_version": torch.__version__, "padbias_version": __version__,
    })
    return loaded


@pytest.fixture
def padbias_model(padbias_loaded_model):
    """The model under test, in eval mode on ``padbias_device``. Override it in your
    conftest to gate your own model (and ``padbias_images`` for its inputs)."""
    return padbias_loaded_model.module


def _weights_meta(config, model):
    """The loaded weights' metadata when ``model`` is the built-in one, else None."""
    loaded = config.stash.get(_loaded_key, None)
    return loaded if loaded is not None and loaded.module is model else None


@pytest.fixture
def padbias_input_size(pytestconfig, padbias_settings, padbias_model):
    """``(height, width)``: --padbias-input-size, else the weights' crop size, else 224."""
    loaded = _weights_meta(pytestconfig, padbias_model)
    size = padbias_settings.input_size or (loaded.input_size if loaded and loaded.input_size else (224, 224))
    pytestconfig.stash[run_key]["input_size"] = list(size)
    return tuple(size)


@pytest.fixture
def padbias_images(pytestconfig, padbias_settings, padbias_input_size, padbias_model):
    """A batch ``[N, 3, H, W]`` of real photographs (skimage.data) at the input size,
    normalised as the weights expect (ImageNet statistics for your own model);
    N = --padbias-images. Built once per run and size."""
    from .images import IMAGENET_MEAN, IMAGENET_STD, natural_images

    loaded = _weights_meta(pytestconfig, padbias_model)
    mean, std = (loaded.mean, loaded.std) if loaded else (IMAGENET_MEAN, IMAGENET_STD)
    device = next((p.device for p in padbias_model.parameters()), "cpu")
    key = (padbias_settings.images, padbias_input_size, padbias_settings.seed, mean, std, str(device))
    cache = pytestconfig.stash.setdefault(_images_key, {})
    if key not in cache:
        cache[key] = natural_images(padbias_settings.images, padbias_input_size, padbias_settings.seed, mean=mean, std=std).to(device)
    return cache[key]


_images_key = pytest.StashKey()


analysis_cache_key = pytest.StashKey()


@pytest.fixture(scope="session")
def padbias_analysis_cache(pytestconfig):
    """The run's cache of expensive analyses shared by the gates and the suites (e.g. the
    PAN census of :func:`pytest_padbias.pan_gate.shared_census`)."""
    return pytestconfig.stash.setdefault(analysis_cache_key, {})


@pytest.fixture
def padbias_score():
    """Score function for models that are not classifiers: ``images -> tensor[N]``.
    None means: use the classification logits. Override it for detectors."""
    return None


@pytest.fixture
def padbias_record(request):
    """Record a :class:`~pytest_padbias.result.CheckResult` for this test's JSON entry
    and HTML row (the bundled suites use it for paper-vs-measured figures)."""
    def record(result):
        request.node.stash.setdefault(checks_key, []).append(result)
        return result

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    gates = item.stash.get(gates_key, None)
    if not gates:
        return result
    config = item.config
    settings = config.stash[settings_key]
    model = item.funcargs["padbias_model"]
    import torch

    if not isinstance(model, torch.nn.Module):
        pytest.fail(f"padbias_model must be a torch.nn.Module for the padbias gates; got {type(model).__name__}", pytrace=False)
    # The built-in weights' class names and normalisation; None for a user's own model.
    loaded = _weights_meta(config, model)
    ctx = GateContext(
        model=model, images=item.funcargs["padbias_images"], input_size=tuple(item.funcargs["padbias_input_size"]),
        device=str(next((p.device for p in model.parameters()), "cpu")), seed=settings.seed,
        max_examples=settings.max_examples, derandomize=_in_ci(), score_fn=item.funcargs["padbias_score"],
        categories=loaded.categories if loaded else None,
        extras=({"mean": loaded.mean, "std": loaded.std} if loaded else {})
        | {"analysis_cache": config.stash.setdefault(analysis_cache_key, {})},
        max_memory=_memory_budget(settings),
    )
    from .gates import gate_functions
    from .model_checks import describe_failure, preflight, watch_inputs

    failures = []
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
            item.stash.setdefault(checks_key, []).append(outcome)
            if not outcome.passed:
                failures.append(f"@padbias.{gate} failed: {outcome.message or outcome.summary}")
    finally:
        for module, training in modes:
            module.training = training
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    return result


def _memory_budget(settings) -> int:
    """Bytes for the gates' analyses, read when the test runs (``auto`` follows free memory)."""
    from .resources import memory_budget

    return memory_budget(settings.max_memory)


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        checks = item.stash.get(checks_key, [])
        if checks:
            report.user_properties.append((PROPERTY, json.dumps([_finite(c.to_json()) for c in checks])))
            if report.when == "call":
                report.extras = list(getattr(report, "extras", [])) + html_extras(checks)
        run = item.config.stash[run_key]
        if run:
            report.user_properties.append((RUN_PROPERTY, json.dumps(run)))
    return report


def _finite(obj):
    """NaN and infinity are not JSON: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class ReportCollector:
    """Gathers results on the controller (under xdist it sees the workers' reports)
    and writes the JSON at the end of the session."""

    def __init__(self, config):
        self.config = config
        self.figures: list[tuple[str, str]] = []
        self.document: dict | None = None
        self.comparison = None
        self.regressions: list[str] = []

    def pytest_runtest_logreport(self, report):
        entries = self.config.stash[entries_key]
        entry = entries.setdefault(report.nodeid, {"checks": [], "reports": []})
        entry["reports"].append(report)
        if report.when == "call":
            self.figures += [(x.get("name", ""), x["content"]) for x in getattr(report, "extras", [])
                             if x.get("format_type") == "image" and x.get("extension") == "png"]
        for name, value in report.user_properties:
            if name == PROPERTY and report.when in ("call", "setup"):
                entry["checks"] = json.loads(value)
            elif name == RUN_PROPERTY:
                self.config.stash[run_key].update({k: v for k, v in json.loads(value).items() if v is not None})

    def pytest_sessionfinish(self, session, exitstatus):
        config = self.config
        settings = config.stash[settings_key]
        if hasattr(config, "workerinput"):
            return  # xdist workers: the controller writes the report
        entries = {
            nodeid: {"nodeid": nodeid, "outcome": outcome_of(e["reports"]), "checks": e["checks"]}
            # Sorted by test id so a parallel run writes the same file as a serial one.
            for nodeid, e in sorted(config.stash[entries_key].items())
        }
        run = {"model": settings.model, "weights": settings.weights,
               "input_size": list(settings.input_size) if settings.input_size else None,
               "device": settings.device, "seed": settings.seed, "padbias_version": __version__}
        run.update(config.stash[run_key])
        if run.get("torch_version") is None:
            run["torch_version"] = _installed_version("torch")
        self.document = build_document(run, entries)
        if settings.compare:
            from .compare import compare, load_run, parse_rules

            rules = parse_rules(settings.compare_fail) if settings.compare_fail else ()
            rows, self.regressions = compare(load_run(settings.compare), self.document, rules)
            self.comparison = (settings.compare, rows)
            if self.regressions and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if settings.json:
            write_atomic(settings.json, dumps(self.document))

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix, summary, postfix, session):
        from .summary import pick_figures, summary_html

        if self.document is None:
            return
        entries = {t["nodeid"]: t for t in self.document["tests"]}
        prefix.append(summary_html(self.document, entries, pick_figures(self.figures), self.comparison))

    def pytest_terminal_summary(self, terminalreporter):
        settings = self.config.stash[settings_key]
        if self.comparison is not None:
            old, rows = self.comparison
            terminalreporter.write_sep("-", f"padbias: {len(rows)} checks compared with {old}")
            for r in rows:
                terminalreporter.write_line(f"{r['check']:<28} {r['old']:>12.6g} -> {r['new']:<12.6g} {r['verdict']}  {r['nodeid']}")
            for line in self.regressions:
                terminalreporter.write_line(f"REGRESSION: {line}", red=True, bold=True)
        if self.document is not None:
            self._write_claims(terminalreporter)
        if settings.json and self.document is not None:
            terminalreporter.write_sep("-", f"padbias JSON: {settings.json}")

    def _write_claims(self, terminalreporter):
        """The paper claims of the run, measured beside the paper's figure (the suites)."""
        from .summary import check_rows

        entries = {t["nodeid"]: t for t in self.document["tests"]}
        rows = [r for r in check_rows(entries) if r["name"].startswith("claim: ")]
        if not rows:
            return
        terminalreporter.write_sep("-", f"padbias: {len(rows)} paper claims, measured")
        for r in rows:
            colour = {"pass": {"green": True}, "FAIL": {"red": True}}.get(r["verdict"], {"yellow": True})
            terminalreporter.write_line(f"{r['verdict']:<8} {r['name'].removeprefix('claim: ')}", bold=True, **colour)
            terminalreporter.write_line(f"         measured: {r['summary']}")
            terminalreporter.write_line(f"         paper:    {r['paper']}")


def _installed_version(dist):
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
