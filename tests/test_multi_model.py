"""Several models (x devices) in one run: ids, per-model state, reports, the index, xdist.

Two tiny models whose answers differ (one pads unevenly at 32x32, one does not) run
through the same tests; every test that uses the model runs once per model, each
model's analyses are computed once for it and never reused for the other, and the
reports hold one page and JSON per model, the index and the combined JSON, the same
from a serial run, ``-n 2`` and two execnet gateways standing for two machines.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

try:  # imported here, not in a test: pytester forgets modules imported during a test
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

TINY = """
import os, torch.nn as nn

def _built(name):
    log = os.environ.get("PADBIAS_TEST_BUILDS")
    if log:
        with open(log, "a") as f:
            f.write(name + "\\n")

def uneven():
    _built("uneven")
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

def even():
    _built("even")
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=1, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

def broken():
    raise RuntimeError("this factory is broken")
"""

TESTS = """
import os
import pytest
from pytest_padbias import padbias
from pytest_padbias.geometry import uneven_layers
from pytest_padbias.result import CheckResult, cached_analysis


def _count(cache, model, size):
    def compute():
        log = os.environ.get("PADBIAS_TEST_COMPUTED")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {type(model[0]).__name__} {model[0].stride}\\n")
        return len(uneven_layers(model, size))
    return cached_analysis(cache, "uneven count", (model,), (size,), compute)


@padbias.no_uneven_padding
def test_gated():
    pass


def test_claim(padbias_model, padbias_input_size, padbias_analysis_cache, padbias_record, padbias_settings):
    n = _count(padbias_analysis_cache, padbias_model, padbias_input_size)
    padbias_record(CheckResult("claim: pads unevenly", n > 0, n, None,
                               {"paper": "uneven at 32", "measured": n, "source": "tiny", "model": padbias_settings.model},
                               f"{n} uneven ops"))


@pytest.mark.parametrize("size", [32, 33])
def test_sizes(padbias_model, padbias_analysis_cache, size):
    # the same analysis as test_claim at 32: a cache hit for this model only
    _count(padbias_analysis_cache, padbias_model, (size, size))


def test_not_per_model(padbias_settings, padbias_record):
    padbias_record(CheckResult("claim: shared", True, 1.0, None, {"paper": "-", "measured": 1}, "runs once"))
    assert len(padbias_settings.models) == 2


def test_plain():
    pass
"""

MODELS = ["--padbias-model=tiny.py:uneven", "--padbias-model=tiny.py:even"]
ARGS = ["--padbias-images=2", "--padbias-input-size=32", "-p", "no:cacheprovider"]


@pytest.fixture
def project(pytester, monkeypatch):
    pytester.makepyfile(tiny=TINY, test_audit=TESTS)
    monkeypatch.setenv("PADBIAS_TEST_BUILDS", str(pytester.path / "builds.log"))
    monkeypatch.setenv("PADBIAS_TEST_COMPUTED", str(pytester.path / "computed.log"))
    return pytester


def lines(path):
    return sorted(path.read_text().split("\n")[:-1]) if path.exists() else []


def test_every_model_test_runs_once_per_model_with_the_model_in_its_id(project):
    result = project.runpytest(*MODELS, *ARGS, "--padbias-json=all.json", "-v")
    result.assert_outcomes(passed=9, failed=1)
    result.stdout.fnmatch_lines_random([
        "*test_audit.py::test_gated?tiny.py:uneven? FAILED*", "*test_audit.py::test_gated?tiny.py:even? PASSED*",
        "*test_audit.py::test_sizes?32-tiny.py:uneven? PASSED*", "*test_audit.py::test_sizes?33-tiny.py:even? PASSED*",
        "*test_audit.py::test_not_per_model PASSED*", "*test_audit.py::test_plain PASSED*",
    ])
    # Each model is built once, and each of its analyses computed once (test_sizes[32] reads test_claim's).
    assert lines(project.path / "builds.log") == ["even", "uneven"]
    assert lines(project.path / "computed.log") == ["main Conv2d (1, 1)", "main Conv2d (1, 1)",
                                                   "main Conv2d (2, 2)", "main Conv2d (2, 2)"]
    doc = json.loads((project.path / "all.json").read_text())
    assert [r["id"] for r in doc["runs"]] == ["tiny.py:uneven", "tiny.py:even"]
    assert doc["shared"] == ["test_audit.py::test_not_per_model", "test_audit.py::test_plain"]
    uneven, even = ({t["nodeid"]: t for t in r["tests"]} for r in doc["runs"])
    # the answers differ, each from its own model
    assert uneven["test_audit.py::test_claim"]["checks"][0]["value"] == 1
    assert even["test_audit.py::test_claim"]["checks"][0]["value"] == 0
    assert uneven["test_audit.py::test_claim"]["checks"][0]["details"]["model"] == "tiny.py:uneven"
    assert (uneven["test_audit.py::test_gated"]["outcome"], even["test_audit.py::test_gated"]["outcome"]) == ("failed", "passed")
    assert uneven["test_audit.py::test_gated"]["reason"].startswith("@padbias.no_uneven_padding failed: uneven padding")
    assert "reason" not in even["test_audit.py::test_gated"]
    # the tests that do not use the model ran once, and are in every model's document
    assert uneven["test_audit.py::test_not_per_model"] == even["test_audit.py::test_not_per_model"]


def test_a_models_json_equals_a_run_of_that_model_alone(project):
    project.runpytest(*MODELS, *ARGS, "--padbias-report-dir=reports").assert_outcomes(passed=9, failed=1)
    project.runpytest("--padbias-model=tiny.py:even", *ARGS, "--padbias-json=alone.json").assert_outcomes(passed=5, failed=1)
    alone = json.loads((project.path / "alone.json").read_text())
    alone["tests"] = [t for t in alone["tests"] if t["nodeid"] != "test_audit.py::test_not_per_model"]
    mine = json.loads((project.path / "reports" / "padbias-tiny.py_even-32x32.json").read_text())
    mine["tests"] = [t for t in mine["tests"] if t["nodeid"] != "test_audit.py::test_not_per_model"]
    assert mine == alone  # (test_not_per_model asserts two models: it fails alone)


def test_one_model_keeps_todays_ids_and_json(project):
    result = project.runpytest("--padbias-model=tiny.py:uneven", *ARGS, "--padbias-json=one.json", "-v")
    result.stdout.fnmatch_lines(["*test_audit.py::test_gated FAILED*", "*test_audit.py::test_sizes?33? PASSED*"])
    doc = json.loads((project.path / "one.json").read_text())
    assert "runs" not in doc and doc["model"] == "tiny.py:uneven"


def test_report_folder_gets_a_page_and_json_per_model_the_index_and_the_combined_json(project):
    pytest.importorskip("pytest_html")
    project.runpytest(*MODELS, *ARGS, "--padbias-report-dir=reports").assert_outcomes(passed=9, failed=1)
    reports = project.path / "reports"
    assert sorted(p.name for p in reports.glob("padbias-*")) == [
        "padbias-index.html", "padbias-index.json",
        "padbias-tiny.py_even-32x32.html", "padbias-tiny.py_even-32x32.json",
        "padbias-tiny.py_uneven-32x32.html", "padbias-tiny.py_uneven-32x32.json"]
    assert not list(reports.glob(".*")), "a staging folder or temporary file was left"
    combined = json.loads((reports / "padbias-index.json").read_text())
    for run in combined["runs"]:
        own = json.loads((reports / run["page"].replace(".html", ".json")).read_text())
        assert {k: v for k, v in run.items() if k not in ("id", "page")} == own
        page = (reports / run["page"]).read_text()
        assert run["model"] in page and 'id="padbias-checks"' in page
    uneven_page = (reports / "padbias-tiny.py_uneven-32x32.html").read_text()
    assert "test_gated[tiny.py:uneven]" in uneven_page and "test_gated[tiny.py:even]" not in uneven_page
    assert "test_not_per_model" in uneven_page  # the shared tests are in every page
    index = (reports / "padbias-index.html").read_text()
    from pytest_padbias.index import index_rows

    rows = index_rows(combined)
    claim = next(r for r in rows if r["name"] == "claim: pads unevenly")
    assert claim["cells"]["tiny.py:uneven"]["verdict"] == "reproduced" and claim["cells"]["tiny.py:even"]["verdict"] == "contradicted"
    for cell in claim["cells"].values():
        link = f'href="{cell["page"]}#{cell["anchor"]}"'
        assert link in index
        assert f'id="{cell["anchor"]}"' in (reports / cell["page"]).read_text()  # the row it links to
    shared = next(r for r in rows if r["name"] == "claim: shared")
    assert shared["shared"] and 'colspan="2"' in index


def test_the_index_validates_against_the_schema(project):
    jsonschema = pytest.importorskip("jsonschema")
    from importlib.resources import files

    schema = json.loads(files("pytest_padbias").joinpath("report.schema.json").read_text())
    project.runpytest(*MODELS, *ARGS, "--padbias-json=all.json")
    doc = json.loads((project.path / "all.json").read_text())
    jsonschema.validate(doc, schema)
    for run in doc["runs"]:
        jsonschema.validate({k: v for k, v in run.items() if k not in ("id", "page")}, schema)
    doc["runs"][0]["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_a_model_that_cannot_be_built_errors_its_own_tests_only(project):
    result = project.runpytest("--padbias-model=tiny.py:broken", "--padbias-model=tiny.py:even", *ARGS,
                               "--padbias-json=all.json")
    result.assert_outcomes(passed=6, errors=4)
    doc = json.loads((project.path / "all.json").read_text())
    broken = {t["nodeid"]: t for t in doc["runs"][0]["tests"]}
    assert broken["test_audit.py::test_claim"]["outcome"] == "error"
    assert "building the model raised RuntimeError: this factory is broken" in broken["test_audit.py::test_claim"]["reason"]
    from pytest_padbias.index import index_rows

    row = next(r for r in index_rows(doc) if r["name"] == "claim: pads unevenly")
    assert row["cells"]["tiny.py:broken"]["verdict"] == "error"
    assert "this factory is broken" in row["cells"]["tiny.py:broken"]["summary"]


@pytest.mark.parametrize("args, message", [
    (["--padbias-model=torchvision:nothing*"], "*--padbias-model=torchvision:nothing*: no torchvision classification model matches*"),
    (["--padbias-model=tiny.py:even", "--padbias-model=resnet5"], "*--padbias-model=resnet5: not a torchvision classification model*"),
    (["--padbias-device=cpu,tpu"], "*'tpu' is not a device; accepted: cpu, cuda, auto, or a comma-separated list*"),
])
def test_bad_matrix_options_are_usage_errors(project, args, message):
    result = project.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_device_that_is_not_available_is_a_usage_error_naming_it(project):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = project.runpytest(*MODELS, "--padbias-device=cpu,cuda", *ARGS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--padbias-device=cpu,cuda: cuda is not available here*"])


def test_models_and_devices_from_the_ini_file_and_the_device_in_the_id(project):
    project.makeini("[pytest]\npadbias_model = tiny.py:uneven\n    tiny.py:even\npadbias_device = cpu,auto\n")
    result = project.runpytest(*ARGS, "--padbias-json=all.json", "-v")
    result.assert_outcomes(passed=9, failed=1)  # auto is the CPU here: one device
    result = project.runpytest(*ARGS, "--padbias-device=cpu", "--padbias-model=tiny.py:even", "-v")
    result.stdout.fnmatch_lines(["*test_audit.py::test_gated PASSED*"])  # the command line wins


def test_torchvision_star_is_every_torchvision_classifier():
    from pytest_padbias.matrix import expand_models
    from pytest_padbias.models import torchvision_classifiers

    every = expand_models(["torchvision:*"])
    assert list(every) == torchvision_classifiers() and "resnet50" in every and len(every) > 50
    assert expand_models(["resnet18", "torchvision:resnet*", "x.py:f"])[:3] == ("resnet18", "resnet101", "resnet152")


def test_ids_and_groups():
    from pytest_padbias.matrix import make_targets, strip_group, strip_target, target_of

    targets = make_targets(["a/b.py:f", "a_b.py:f", "resnet18"], ["cpu", "cuda"])
    assert [t.id for t in targets] == ["a_b.py:f-cpu", "a_b.py:f-cuda", "a_b.py:f-cpu~2", "a_b.py:f-cuda~2",
                                       "resnet18-cpu", "resnet18-cuda"]
    assert strip_target("t.py::t[resnet18-cpu]", "resnet18-cpu") == "t.py::t"
    assert strip_target("t.py::t[33-resnet18-cpu]", "resnet18-cpu") == "t.py::t[33]"
    assert strip_group("t.py::t[x]@x") == "t.py::t[x]" and strip_group("a@b/t.py::t") == "a@b/t.py::t"
    assert target_of("t.py::t[33-resnet18-cpu]", [t.id for t in targets]) == "resnet18-cpu"
    assert target_of("t.py::t[33]", [t.id for t in targets]) is None


def test_compare_per_model_against_a_combined_or_a_single_earlier_json(project):
    project.runpytest(*MODELS, *ARGS, "--padbias-json=old.json")
    old = json.loads((project.path / "old.json").read_text())
    # doctor the earlier even model: it had one uneven op less (-1) under the gate
    even = next(r for r in old["runs"] if r["id"] == "tiny.py:even")
    gated = next(t for t in even["tests"] if t["nodeid"] == "test_audit.py::test_gated")
    gated["checks"][0]["value"] = -1
    (project.path / "old.json").write_text(json.dumps(old))
    result = project.runpytest(*MODELS, *ARGS, "--padbias-compare=old.json", "--padbias-compare-fail=uneven:+0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*padbias: tiny.py:uneven * checks compared with old.json*", "*padbias: tiny.py:even * checks compared with old.json*",
        "*REGRESSION: tiny.py:even: no_uneven_padding of test_audit.py::test_gated went from -1 to 0*"])
    assert "REGRESSION: tiny.py:uneven" not in result.stdout.str()
    # A single earlier JSON of one of the models is that model's baseline only.
    project.runpytest("--padbias-model=tiny.py:even", *ARGS, "--padbias-json=even.json")
    result = project.runpytest(*MODELS, *ARGS, "--padbias-compare=even.json", "--padbias-compare-fail=uneven:+0")
    result.stdout.fnmatch_lines(["*padbias: tiny.py:uneven 0 checks compared with even.json (no run of tiny.py:uneven in it)*",
                                 "*padbias: tiny.py:even * checks compared with even.json*"])


def test_changed_claim_verdicts_are_shown_by_the_comparison(project):
    from pytest_padbias.compare import comparison_html, format_row, verdict_changes

    def doc(verdict):
        return {"tests": [{"nodeid": "t::claim", "outcome": "passed", "checks": [
            {"check": "claim: x", "passed": True, "value": 1.0, "limit": None, "details": {"verdict": verdict}}]}]}

    assert verdict_changes(doc("reproduced"), doc("reproduced")) == []
    (row,) = verdict_changes(doc("reproduced"), doc("contradicted"))
    assert (row["old"], row["new"], row["verdict"]) == ("reproduced", "contradicted", "verdict changed")
    assert " ".join(format_row(row).split()) == "claim: x reproduced -> contradicted verdict changed t::claim"
    page = comparison_html('<div id="padbias-summary"><table></table></div>', "old.json", [row])
    assert "<td>reproduced</td><td>contradicted</td><td>-</td><td>verdict changed</td>" in page
    # through the plugin: the printed table and the page
    pytest.importorskip("pytest_html")
    project.makepyfile(test_audit=TESTS.replace('{"paper": "uneven at 32"', '{"verdict": "reproduced" if n else "contradicted", "paper": "uneven at 32"'))
    project.runpytest("--padbias-model=tiny.py:uneven", *ARGS, "--padbias-json=old.json")
    result = project.runpytest("--padbias-model=tiny.py:even", *ARGS, "--padbias-compare=old.json", "--padbias-report-dir=reports")
    result.stdout.fnmatch_lines(["*claim: pads unevenly*reproduced -> contradicted*verdict changed*test_audit.py::test_claim*"])
    page = (project.path / "reports" / "padbias-tiny.py_even-32x32.html").read_text()
    assert "<td>reproduced</td><td>contradicted</td><td>-</td><td>verdict changed</td>" in page


def test_the_memory_budget_is_shared_by_the_workers_of_a_machine(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_budget="""
import os
from pytest_padbias.resources import memory_budget

def test_a(padbias_settings):
    print("BUDGET", os.environ.get("PYTEST_XDIST_WORKER"), memory_budget(padbias_settings.max_memory))

def test_b(padbias_settings):
    print("BUDGET", os.environ.get("PYTEST_XDIST_WORKER"), memory_budget(padbias_settings.max_memory))
""")
    result = pytester.runpytest_subprocess("-n", "2", "--padbias-max-memory=1GiB", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=2)
    assert budgets(result) == {"gw0": 2**29, "gw1": 2**29}  # two workers on this machine: half of 1 GiB each
    serial = pytester.runpytest_subprocess("--padbias-max-memory=1GiB", "-p", "no:cacheprovider", "-s")
    assert budgets(serial) == {"None": 2**30}


def budgets(result) -> dict:
    import re

    return {m.group(1): int(m.group(2)) for m in re.finditer(r"BUDGET (\S+) (\d+)", result.stdout.str())}


def test_host_counts_group_workers_by_machine():
    execnet = pytest.importorskip("execnet")
    from pytest_padbias.matrix import host_counts, host_key

    specs = [execnet.XSpec(s) for s in ("popen", "popen//chdir=a", "ssh=gpu1//python=python3", "ssh=gpu1", "ssh=gpu2",
                                        "socket=10.0.0.5:8888")]
    assert host_counts(specs) == {"local": 2, "ssh:gpu1": 2, "ssh:gpu2": 1, "socket:10.0.0.5:8888": 1}
    assert host_key(execnet.XSpec("popen//via=gw9")) == "via:gw9"


# --------------------------------------------------------------------------- xdist
def test_n2_writes_the_same_reports_as_a_serial_run_with_each_model_on_one_worker(project):
    pytest.importorskip("xdist")
    project.runpytest_subprocess(*MODELS, *ARGS, "--padbias-report-dir=serial").assert_outcomes(passed=9, failed=1)
    (project.path / "computed.log").unlink()
    result = project.runpytest_subprocess(*MODELS, *ARGS, "--padbias-report-dir=parallel", "-n", "2")
    result.assert_outcomes(passed=9, failed=1)
    # each model's analyses are computed once, on the one worker that ran its tests
    computed = lines(project.path / "computed.log")
    assert len(computed) == 4
    assert len({line.split()[0] for line in computed if line.endswith("(1, 1)")}) == 1
    assert len({line.split()[0] for line in computed if line.endswith("(2, 2)")}) == 1
    for name in ("padbias-index.json", "padbias-tiny.py_uneven-32x32.json", "padbias-tiny.py_even-32x32.json"):
        assert json.loads((project.path / "parallel" / name).read_text()) == json.loads((project.path / "serial" / name).read_text())
    assert sorted(p.name for p in (project.path / "parallel").glob("*.html")) == sorted(
        p.name for p in (project.path / "serial").glob("*.html"))
    assert not list((project.path / "parallel").glob(".*"))


GATEWAY_TESTS = """
import json, os
from pathlib import Path
import pytest
import torch
from pytest_padbias import zoo

CONFIG = {"name": "tiny", "size": 8, "padding_mode": "zeros", "batch_norm": False, "seed": 3, "width": 2}


def train(_progress):
    torch.manual_seed(3)
    return torch.nn.Conv2d(1, 2, 3, padding=1)


def zoo_model(tag):
    state, path, origin = zoo.load_or_train(CONFIG, train, "tiny zoo model")
    record = Path(os.environ["PADBIAS_TEST_RECORD"]) / f"{tag}.json"
    record.write_text(json.dumps([os.getcwd(), os.environ.get("PYTEST_XDIST_WORKER", "main"), origin, str(path)]))
    return state


@pytest.mark.parametrize("k", [0, 1, 2])
def test_needs_the_zoo_model(padbias_model, padbias_settings, k):
    state = zoo_model(f"{padbias_settings.model.split(':')[-1]}-{k}")
    assert float(state["weight"].abs().sum()) > 0
"""


def test_two_gateways_standing_for_two_machines_write_the_serial_runs_json(pytester, tmp_path, monkeypatch):
    """``--tx popen//chdir=A//env:PADBIAS_ZOO_DIR=... --tx popen//chdir=B//env:...``: each
    gateway has its own directory (the project copied there by ``--rsyncdir``) and zoo
    cache; each model's tests run on one of them; the zoo model both need is trained once
    per cache and never half-written; the controller writes what a serial run writes."""
    pytest.importorskip("xdist")
    pytester.makepyfile(tiny=TINY, test_gateways=GATEWAY_TESTS)
    pytester.makeconftest("")  # its folder goes on sys.path where the project is copied
    pytester.makeini("[pytest]\n")
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("PADBIAS_TEST_RECORD", str(record))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    models = ["--padbias-model=tiny:uneven", "--padbias-model=tiny:even"]
    test_file = str(pytester.path / "test_gateways.py")
    monkeypatch.setenv("PADBIAS_ZOO_DIR", str(tmp_path / "serial-zoo"))
    serial = pytester.runpytest_subprocess(test_file, *models, *ARGS, "--padbias-json=serial.json")
    serial.assert_outcomes(passed=6)
    for f in record.iterdir():
        f.unlink()
    machines = {name: tmp_path / name for name in ("A", "B")}
    tx = []
    for name, home in machines.items():
        home.mkdir()
        tx += ["--tx", f"popen//chdir={home}//env:PADBIAS_ZOO_DIR={home / 'zoo'}"]
    result = pytester.runpytest_subprocess(test_file, *models, *ARGS, "--padbias-json=parallel.json", *tx,
                                           "--dist", "loadgroup", f"--rsyncdir={pytester.path}",
                                           "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=6)
    assert json.loads((pytester.path / "parallel.json").read_text()) == json.loads((pytester.path / "serial.json").read_text())
    runs = [json.loads(f.read_text()) for f in sorted(record.iterdir())]
    assert len(runs) == 6
    by_machine = {}
    for cwd, worker, origin, path in runs:
        name = next(n for n, home in machines.items() if cwd.startswith(str(home)))
        by_machine.setdefault(name, []).append((worker, origin, path))
        assert path.startswith(str(machines[name] / "zoo"))  # its own cache
    assert sorted(by_machine) == ["A", "B"]  # a model per machine
    for name, seen in by_machine.items():
        assert len({w for w, _o, _p in seen}) == 1 and len(seen) == 3
        assert sorted(o for _w, o, _p in seen) == ["cached", "cached", "trained"]  # trained once per cache
        from pytest_padbias import zoo

        (weights,) = (machines[name] / "zoo").glob("*.safetensors")
        assert zoo.load_verified(weights) is not None
        assert not list((machines[name] / "zoo").glob("*.tmp"))
    assert not (pytester.path / "parallel.json").with_name(".parallel.json.tmp").exists()


# --------------------------------------------------------------------------- browser
def test_index_and_pages_in_headless_chromium(project, tmp_path_factory):
    """The index loads without console errors, has a column per model, and each cell's
    link opens the model's page at that check's row."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    project.runpytest(*MODELS, *ARGS, "--padbias-report-dir=reports").assert_outcomes(passed=9, failed=1)
    index = project.path / "reports" / "padbias-index.html"
    artefacts = tmp_path_factory.mktemp("browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        heads = page.locator("#padbias-index thead th[data-run]").all_inner_texts()
        assert [h.split("\n")[0] for h in heads] == ["tiny.py:uneven", "tiny.py:even"]
        row = page.locator("#padbias-index tbody tr", has_text="pads unevenly")
        assert row.locator("td[data-verdict]").evaluate_all("cells => cells.map(c => c.dataset.verdict)") == ["reproduced", "contradicted"]
        (artefacts / "index.png").write_bytes(page.screenshot(full_page=True))
        row.locator("td[data-verdict] a").nth(1).click()
        page.wait_for_load_state("load")
        assert "/padbias-tiny.py_even-32x32.html" in page.url and "#padbias-row-" in page.url  # (pytest-html adds ?sort=)
        target = page.evaluate("document.getElementById(location.hash.slice(1)).innerText")
        assert "pads unevenly" in target and "contradicted" in target
        assert page.locator("#padbias-summary").count() == 1
        (artefacts / "page.png").write_bytes(page.screenshot(full_page=True))
        browser.close()
    assert errors == []


def test_markdown_tables_from_the_combined_json(project):
    project.runpytest(*MODELS, *ARGS, "--padbias-json=all.json")
    import subprocess

    out = subprocess.run([sys.executable, "-m", "pytest_padbias.index", str(project.path / "all.json")],
                         capture_output=True, text=True, check=True, env=dict(os.environ)).stdout.splitlines()
    assert out[0] == "| claim or gate | tiny.py:uneven | tiny.py:even |"
    assert "| pads unevenly | reproduced: 1 uneven ops | contradicted: 0 uneven ops |" in out


def test_an_html_page_of_the_whole_run_has_the_index_as_its_summary(project):
    pytest.importorskip("pytest_html")
    project.runpytest(*MODELS, *ARGS, "--html=whole.html", "--self-contained-html").assert_outcomes(passed=9, failed=1)
    page = (project.path / "whole.html").read_text()
    assert 'id="padbias-index"' in page and "test_gated[tiny.py:even]" in page and "test_gated[tiny.py:uneven]" in page


def test_random_init_torchvision_models_build_quietly_at_a_size_they_accept():
    """``torchvision:*`` with ``--padbias-weights=none``: GoogLeNet builds without its
    FutureWarning, and ViT-H/14 (518 px with its default weights, built for 224 without)
    is audited at 224."""
    from pytest_padbias.models import default_input_size, load_model

    assert default_input_size("vit_h_14", "none") == (224, 224) and default_input_size("vit_h_14") == (518, 518)
    assert default_input_size("inception_v3", "none") == (299, 299)
    assert load_model("googlenet", "none").input_size == (224, 224)  # warnings are errors in this suite


def test_architecture_table_lists_every_model_and_why_a_claim_was_not_measured():
    from pytest_padbias.index import architecture_table

    def claim(name, measured, **details):
        return {"check": f"claim: {name}", "passed": True, "value": 1.0, "limit": None, "details": {"measured": measured, **details}}

    ok = {"id": "m1", "page": None, "model": "m1", "input_size": [224, 224], "tests": [
        {"nodeid": "s.py::test_default_size_pads_unevenly", "outcome": "passed", "checks": [claim("uneven padding at the default size", 5)]},
        {"nodeid": "s.py::test_suggested_size_pads_evenly", "outcome": "passed",
         "checks": [claim("the suggested size pads evenly", "224x224 -> 225x225", nearest={"below": [193, 193], "above": [225, 225]})]},
        {"nodeid": "s.py::test_zero_padding_marginalises_the_periphery", "outcome": "passed",
         "checks": [claim("foveation under zero padding", 0.2549)]},
        {"nodeid": "s.py::test_even_sizes_are_spaced_by_the_total_stride", "outcome": "passed",
         "checks": [claim("even sizes every 2^d pixels", [33, 65, 97, 129, 161])]}]}
    broken = {"id": "m2", "page": None, "model": "m2", "input_size": [518, 518], "tests": [
        {"nodeid": f"s.py::test_{name}", "outcome": "failed", "reason": "PadbiasError: the model cannot run", "checks": []}
        for name in ("default_size_pads_unevenly", "zero_padding_marginalises_the_periphery")]}
    lines = architecture_table({"runs": [ok, broken], "torch_version": "t", "weights": "none"}).splitlines()
    assert lines[2] == "| m1 | 224x224 | 5 | 225x225 | 0.255 | 33, 65, 97, 129, ... |  |"
    assert lines[3] == ("| m2 | 518x518 | - | - | - | - | default_size_pads_unevenly, zero_padding_marginalises_the_periphery: "
                        "PadbiasError: the model cannot run |")
    assert lines[-1] == "2 models; 1 measured at their default size, 1 of them pad unevenly there; torch t, weights none."
