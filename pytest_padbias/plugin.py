"""pytest wiring of pytest-padbias: options, gates, JSON and HTML extras (the report itself
is gathered and written by :mod:`pytest_padbias.collector`, the fixtures and each target's
state are :mod:`pytest_padbias.fixtures`).

The analyses live in plain modules; this file only connects them to pytest. torch is
imported inside fixtures and hooks, never at import time, because pytest loads this
plugin in every run of the environment.

Several ``--padbias-model`` (x ``--padbias-device``) make a matrix of *targets*
(:mod:`pytest_padbias.matrix`): every test using the model runs once per target, with the
target in its id and in an ``xdist_group``, and everything loaded or computed for a target
(model, images, analyses) lives in that target's own state, dropped once its last test ran.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest

from . import GATE_MARKERS
from .gates import MARKER_HELP, item_gates, validate_marker
from .matrix import MODEL_FIXTURES
from .options import add_options, resolve
from .collector import ReportCollector
from .fixtures import (  # (the fixtures too: pytest finds them in this plugin module)
    _item_target, _loaded_model, _param_target, _state, _weights_meta, padbias_analysis_cache, padbias_device,
    padbias_images, padbias_input_size, padbias_loaded_model, padbias_model, padbias_record, padbias_score,
    padbias_settings, padbias_target)
from .report import PROPERTY, RUN_PROPERTY, TARGET_PROPERTY, discard_html, html_extras, publish_html, stage_html
from .result import GateContext, PadbiasError
from .stash import (checks_key, entries_key, gates_key, pages_key, remaining_key, settings_key, staged_html_key, states_key,
                    targets_key)

PADBIAS_FIXTURES = ("padbias_model", "padbias_images", "padbias_input_size", "padbias_score")


def pytest_addoption(parser):
    add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config):
    """With several models, ``-n N`` distributes by model (``--dist loadgroup``) unless
    ``--dist`` says otherwise, so each model's shared analyses stay on one worker. Runs
    before pytest-xdist turns an unset ``--dist`` into ``load``."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no" \
            and not getattr(config.option, "distload", False) and _several_targets(config):
        config.option.dist = "loadgroup"
    return (yield)


def _several_targets(config) -> bool:
    from .matrix import has_wildcard
    from .options import dest

    def values(name):
        given = config.getoption(dest(name)) or []
        return list(given) or list(config.getini(dest(name)) or [])

    models = values("model")
    devices = {d.strip().lower() for text in values("device") for d in str(text).split(",")}
    return len(set(models)) > 1 or any(has_wildcard(str(m)) for m in models) or len(devices) > 1


@pytest.hookimpl(tryfirst=True)  # before pytest-html reads --html
def pytest_configure(config):
    for gate, marker in GATE_MARKERS.items():
        config.addinivalue_line("markers", MARKER_HELP[gate].replace(f"padbias_{gate}", marker, 1))
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's group (pytest-padbias groups tests by model)")
    settings, targets = _matrix(resolve(config))
    settings = _memory_share(config, settings)
    config.stash[targets_key] = targets
    config.stash[states_key] = {}
    if settings.report_dir and not hasattr(config, "workerinput"):
        settings = _place_reports(config, settings, targets)
    config.stash[settings_key] = settings
    config.stash[entries_key] = {}
    collector = ReportCollector(config)
    config.pluginmanager.register(collector, "padbias-report-collector")
    if pages_key in config.stash and hasattr(config.option, "htmlpath"):
        from .pages import ModelPage

        for target in targets:
            page = ModelPage(config, collector, target.id, config.stash[pages_key][target.id])
            config.pluginmanager.register(page, f"padbias-page-{target.id}")


def _matrix(settings):
    """Expand ``torchvision:*``, check every model spec and device: usage errors at start-up."""
    from .matrix import expand_models, has_wildcard, make_targets, resolve_devices

    try:
        models = expand_models(settings.models) if any(has_wildcard(m) for m in settings.models) else settings.models
        if settings.explicit_model:
            from .models import check_model_spec

            for model in models:
                check_model_spec(model)
        devices = resolve_devices(settings.devices)
        if devices == ("cuda",):
            from .models import resolve_device

            resolve_device("cuda")
    except PadbiasError as exc:
        raise pytest.UsageError(str(exc)) from None
    settings = dataclasses.replace(settings, models=models, devices=devices, model=models[0], device=devices[0])
    return settings, make_targets(models, devices)


def _memory_share(config, settings):
    """On an xdist worker, ``--padbias-max-memory`` is the machine's budget: each of the
    workers on this machine plans within its share (``auto`` is read once, at start-up)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return settings
    try:
        workers = int(workerinput.get("padbias_host_workers") or os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    except ValueError:
        workers = 1
    if workers <= 1:
        return settings
    from .resources import MIN_BUDGET, memory_budget

    try:
        share = memory_budget(settings.max_memory) // workers
    except PadbiasError as exc:
        raise pytest.UsageError(str(exc)) from None
    return dataclasses.replace(settings, max_memory=str(max(share, MIN_BUDGET)))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist, on the controller: tell each worker how many workers share its machine."""
    from .matrix import host_counts, host_key

    node.workerinput["padbias_host_workers"] = host_counts(node.nodemanager.specs)[host_key(node.gateway.spec)]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with several targets: one work unit per model, read from the
    test id (pytest-xdist's own ``@group`` suffix is not added under pytest 9.2)."""
    targets = config.stash.get(targets_key, [])
    if getattr(config.option, "dist", None) != "loadgroup" or len(targets) < 2:
        return None
    from .matrix import model_group_scheduling

    return model_group_scheduling(config, log, [t.id for t in targets])


def _place_reports(config, settings, targets):
    """Point pytest-html and the JSON into the report folder unless given explicitly."""
    from .models import default_input_size
    from .report import report_basename, with_suffix

    several = len(targets) > 1
    html_path = None
    if several:
        pages, taken = {}, set()
        for t in targets:
            size = settings.input_size or default_input_size(t.model, settings.weights)
            base = report_basename(settings.report_dir, t.model, size, settings.weights,
                                   device=t.device if len(settings.devices) > 1 else None, taken=taken)
            taken.add(base.name)
            pages[t.id] = base
        config.stash[pages_key] = pages
        json_path = settings.json or str(Path(settings.report_dir) / "padbias-index.json")
    else:
        size = settings.input_size or default_input_size(settings.model, settings.weights)
        base = report_basename(settings.report_dir, settings.model, size, settings.weights)
        json_path = settings.json or str(with_suffix(base, ".json"))
    if hasattr(config.option, "htmlpath"):
        if not config.option.htmlpath and not several:
            config.option.htmlpath = str(with_suffix(base, ".html"))
        html_path = config.option.htmlpath
        if html_path:
            # pytest-html writes its page in place (open("w")); it writes into a staging folder
            # instead, and pytest_sessionfinish below renames the finished page into place.
            final = Path(os.path.expandvars(html_path)).expanduser().absolute()
            config.stash[staged_html_key] = (stage_html(final), final)
            config.option.htmlpath = str(config.stash[staged_html_key][0])
    return dataclasses.replace(settings, json=json_path, html=html_path)


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


@pytest.hookimpl(trylast=True)  # after @pytest.mark.parametrize: the target is the last part of the id
def pytest_generate_tests(metafunc):
    """With several targets, every test that uses the model runs once per target."""
    targets = metafunc.config.stash.get(targets_key, [])
    if len(targets) < 2 or not _uses_target(metafunc):
        return
    if "padbias_target" not in metafunc.fixturenames:  # a gated test that does not name padbias_model
        metafunc.fixturenames.append("padbias_target")
    metafunc.parametrize("padbias_target", [pytest.param(t, id=t.id, marks=pytest.mark.xdist_group(name=t.id)) for t in targets],
                         indirect=True, scope="session")


def _uses_target(metafunc) -> bool:
    """Whether the test reaches the model of ``--padbias-model``: through a model fixture
    (unless a conftest overrides it with a model of its own), or through a gate."""
    if any(name in metafunc.fixturenames for name in MODEL_FIXTURES):
        return "padbias_target" in metafunc.fixturenames
    if not item_gates(metafunc.definition):
        return False
    closure, _defs = metafunc.definition.session._fixturemanager.getfixtureclosure(
        metafunc.definition, ("padbias_model",), ignore_args=set())
    return "padbias_target" in closure


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
    model or weights file is a usage error at start-up rather than an error per test.
    With several models each loads when its first test runs (a model that cannot be built
    errors its own tests, the others are still audited)."""
    config = session.config
    settings = config.stash[settings_key]
    targets = config.stash[targets_key]
    remaining = {}
    for item in session.items:
        tid = _param_target(item)
        if tid is not None:
            remaining[tid] = remaining.get(tid, 0) + 1
    config.stash[remaining_key] = remaining
    uses = any(any(n in getattr(i, "fixturenames", ()) for n in PADBIAS_FIXTURES) for i in session.items)
    if len(targets) == 1 and uses and (settings.explicit_model or settings.weights != "default"):
        try:
            _loaded_model(config, targets[0])
        except PadbiasError as exc:
            raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a target's last test in this process, drop what was loaded and computed for it."""
    try:
        return (yield)
    finally:
        tid = _param_target(item)
        remaining = item.config.stash.get(remaining_key, {})
        if tid in remaining:
            remaining[tid] -= 1
            if remaining[tid] <= 0 and item.config.stash[states_key].pop(tid, None) is not None:
                import gc

                gc.collect()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    gates = item.stash.get(gates_key, None)
    if not gates:
        return result
    config = item.config
    state = _state(config, _item_target(item))
    settings = state.settings
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
        extras=({"mean": loaded.mean, "std": loaded.std} if loaded else {}) | {"analysis_cache": state.analysis},
        max_memory=_memory_budget(settings),
    )
    from .gates import run_gates

    outcomes, failures = run_gates(model, ctx, gates)
    if outcomes:
        item.stash.setdefault(checks_key, []).extend(outcomes)
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    return result


def _memory_budget(settings) -> int:
    """Bytes for the gates' analyses, read when the test runs (``auto`` follows free memory;
    on an xdist worker the setting is already this worker's share)."""
    from .resources import memory_budget

    return memory_budget(settings.max_memory)


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    tid = _param_target(item)
    if tid is not None:
        report.user_properties.append((TARGET_PROPERTY, tid))
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        checks = item.stash.get(checks_key, [])
        if checks:
            report.user_properties.append((PROPERTY, json.dumps([_finite(c.to_json()) for c in checks])))
            if report.when == "call":
                report.extras = list(getattr(report, "extras", [])) + html_extras(checks)
        states = item.config.stash[states_key]
        target = _item_target(item)
        run = states[target.id].run if target.id in states and (tid is not None or len(item.config.stash[targets_key]) == 1) else {}
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
