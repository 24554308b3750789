"""The review report: report folder naming, the summary, comparison runs, a real browser."""
import base64
import io
import json
import shutil

import pytest


try:  # imported here, not in a test: pytester forgets modules imported during a test,
    # and greenlet's extension module crashes when imported a second time.
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

TINY = """
import torch.nn as nn
def uneven():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1))
def other():
    return nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.AdaptiveAvgPool2d(1))
"""
GATED = """
from pytest_padbias import padbias

@padbias.no_uneven_padding
def test_gated():
    pass
"""
ARGS = ["--padbias-images=2", "--padbias-input-size=33", "-p", "no:cacheprovider"]


@pytest.fixture
def project(pytester):
    pytester.makepyfile(tiny=TINY, test_gated=GATED)
    return pytester


def test_report_folder_gets_html_and_json_named_after_model_and_size(project):
    pytest.importorskip("pytest_html")
    project.runpytest("--padbias-model=tiny.py:uneven", "--padbias-report-dir=reports", *ARGS).assert_outcomes(passed=1)
    reports = project.path / "reports"
    assert sorted(p.name for p in reports.glob("padbias-*")) == ["padbias-tiny.py_uneven-33x33.html", "padbias-tiny.py_uneven-33x33.json"]
    page = (reports / "padbias-tiny.py_uneven-33x33.html").read_text()
    assert 'id="padbias-summary"' in page and 'id="padbias-checks"' in page and "tiny.py:uneven" in page


def test_another_models_report_is_never_overwritten(project):
    reports = project.path / "reports"
    reports.mkdir()
    foreign = reports / "padbias-tiny.py_uneven-33x33.json"
    foreign.write_text(json.dumps({"model": "someone/else.py:uneven", "tests": []}))
    project.runpytest("--padbias-model=tiny.py:uneven", "--padbias-report-dir=reports", *ARGS).assert_outcomes(passed=1)
    assert json.loads(foreign.read_text())["model"] == "someone/else.py:uneven"
    assert json.loads((reports / "padbias-tiny.py_uneven-33x33-2.json").read_text())["model"] == "tiny.py:uneven"
    # The same model again reuses its own name instead of piling up copies.
    project.runpytest("--padbias-model=tiny.py:uneven", "--padbias-report-dir=reports", *ARGS).assert_outcomes(passed=1)
    assert not (reports / "padbias-tiny.py_uneven-33x33-3.json").exists()


def run_json(project, name, *extra):
    result = project.runpytest("--padbias-model=tiny.py:uneven", f"--padbias-json={name}", *ARGS, *extra)
    return result, json.loads((project.path / name).read_text())


def test_comparing_a_run_with_itself_passes(project):
    run_json(project, "old.json")
    result = project.runpytest("--padbias-model=tiny.py:uneven", "--padbias-compare=old.json",
                               "--padbias-compare-fail=uneven:+0", *ARGS)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*padbias: 1 checks compared with old.json*", "*no_uneven_padding*0 -> 0*ok*"])


def test_a_regression_against_a_doctored_older_run_fails_clearly(project):
    _, doc = run_json(project, "old.json")
    doc["tests"][0]["checks"][0]["value"] = -1  # pretend the old model had fewer uneven layers
    (project.path / "old.json").write_text(json.dumps(doc))
    result = project.runpytest("--padbias-model=tiny.py:uneven", "--padbias-compare=old.json",
                               "--padbias-compare-fail=uneven:+0", *ARGS, "--padbias-input-size=32")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*REGRESSION: no_uneven_padding of test_gated.py::test_gated went from -1 to 1 (+2; rule no_uneven_padding:+0 allows +0)*"])


def test_percent_rules_on_fractions_are_percentage_points():
    from pytest_padbias.compare import compare, parse_rules

    old = {"tests": [{"nodeid": "t", "checks": [{"check": "max_pans", "value": 0.020}, {"check": "shift_robust", "value": 0.90}]}]}
    new = {"tests": [{"nodeid": "t", "checks": [{"check": "max_pans", "value": 0.024}, {"check": "shift_robust", "value": 0.89}]}]}
    _, failures = compare(old, new, parse_rules("pans:+0.5%,consistency:-2%"))
    assert failures == []
    _, failures = compare(old, new, parse_rules("pans:+0.3%,consistency:-0.5%"))
    assert len(failures) == 2 and "max_pans of t went from 0.02 to 0.024" in failures[0]


def decode_png(data: bytes):
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


@pytest.mark.parametrize("self_contained", [True, False])
def test_page_in_headless_chromium(project, self_contained, tmp_path_factory):
    """Load the page in Debian's Chromium: no console errors, the summary table is
    there, every image decodes and is not blank; keep a screenshot as an artefact."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    args = ["--padbias-model=tiny.py:uneven", "--padbias-report-dir=reports", *ARGS, "--padbias-input-size=32"]
    if self_contained:
        args.append("--self-contained-html")
    project.runpytest(*args).assert_outcomes(failed=1)
    page_path = project.path / "reports" / "padbias-tiny.py_uneven-32x32.html"
    artefacts = tmp_path_factory.mktemp("browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        page.locator("text=Show all details").first.click()
        assert page.locator("#padbias-checks tbody tr").count() == 1
        assert "FAIL" in page.locator("#padbias-checks").inner_text()
        images = page.evaluate("""Array.from(document.images).filter(i => i.getAttribute('src'))
            .map(i => ({src: i.currentSrc, w: i.naturalWidth, h: i.naturalHeight}))""")
        shot = page.screenshot(full_page=True)
        browser.close()
    (artefacts / "report.png").write_bytes(shot)
    assert errors == []
    assert len(images) >= 2  # the summary's figure and the test row's figure
    for img in images:
        assert img["w"] > 100 and img["h"] > 100, img["src"][:80]
        if img["src"].startswith("data:image/png;base64,"):
            pixels = decode_png(base64.b64decode(img["src"].split(",", 1)[1]))
        else:
            pixels = decode_png((page_path.parent / img["src"].split("/reports/", 1)[1]).read_bytes())
        assert pixels.std() > 0.01, "blank image"
    assert decode_png(shot).std() > 0.01


def test_json_follows_the_published_schema(project):
    jsonschema = pytest.importorskip("jsonschema")
    from importlib.resources import files

    schema = json.loads(files("pytest_padbias").joinpath("report.schema.json").read_text())
    _, doc = run_json(project, "run.json", "--padbias-input-size=32")
    jsonschema.validate(doc, schema)
    assert doc["tests"][0]["checks"][0]["passed"] is False
    doc["tests"][0]["checks"][0]["value"] = "5"  # a number written as a string must be caught
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_same_seed_same_json(project):
    """Deterministic: the same command and seed write the same JSON."""
    _, first = run_json(project, "a.json", "--padbias-input-size=32", "--padbias-seed=3")
    _, second = run_json(project, "b.json", "--padbias-input-size=32", "--padbias-seed=3")
    assert first == second and first["seed"] == 3


def test_paper_claims_are_printed_beside_the_measured_figure(pytester):
    pytester.makepyfile(test_inner_claims='''
import pytest
from pytest_padbias.result import CheckResult

def test_holds(padbias_record):
    padbias_record(CheckResult("claim: it holds", True, 0.93, None, {"paper": "93.0%"}, "measured 93.1%"))

@pytest.mark.xfail(raises=AssertionError, strict=False, reason="not at this budget")
def test_not_reproduced(padbias_record):
    padbias_record(CheckResult("claim: it does not", False, 0.1, None, {"paper": "0.8 points"}, "measured -1.2 points"))
    assert False

def test_a_gate_is_not_a_claim(padbias_record):
    padbias_record(CheckResult("max_pans", True, 0.02, 0.05, {}, "2% PANs"))
''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, xfailed=1)
    # a claim without a verdict of its own is an exact measurement: its check decides it
    result.stdout.fnmatch_lines(["*padbias: 2 paper claims, measured*", "reproduced it holds", "*measured: measured 93.1%",
                                 "*paper:    93.0%", "contradicted it does not", "*measured: measured -1.2 points"])
    assert "2% PANs" not in result.stdout.str()


def test_markdown_claims_table_from_a_json_file():
    from pytest_padbias.summary import markdown_table

    doc = {"model": "m", "weights": "w", "seed": 3, "torch_version": "t", "tests": [
        {"nodeid": "a::ok", "outcome": "passed", "checks": [
            {"check": "claim: holds", "passed": True, "value": 1.0, "limit": None, "summary": "measured 93.1% | sure",
             "details": {"paper": "93.0%", "source": "Table 1"}}]},
        {"nodeid": "b::x", "outcome": "xfailed", "checks": [
            {"check": "claim: does not", "passed": False, "value": 0.0, "limit": None, "details": {"measured": "-1.2", "paper": "+0.8"}}]},
    ]}
    lines = markdown_table(doc).splitlines()
    assert lines[2] == "| holds | Table 1 | 93.0% | measured 93.1% / sure | pass |"
    assert lines[3] == "| does not |  | +0.8 | -1.2 | not reproduced (xfail) |"
    assert lines[-1] == "Measured on m (w), seed 3, torch t."
