"""The plugin as a user meets it, through pytester: options, markers, gates, JSON, HTML."""
import json
import subprocess
import sys

import pytest
import torch


TINY = """
import torch.nn as nn

def head(c):
    return [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]

def stride2():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), *head(4))

def not_a_module():
    return 42

def dense_only():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 33 * 33, 10))
"""

GATED = """
from pytest_padbias import padbias

@padbias.no_uneven_padding
def test_gated(padbias_model):
    assert padbias_model.training is False
"""

FAST = ["--padbias-model=tiny.py:stride2", "--padbias-images=2", "-p", "no:cacheprovider"]


@pytest.fixture
def project(pytester):
    pytester.makepyfile(tiny=TINY)
    pytester.makepyfile(test_gated=GATED)
    return pytester


def test_help_lists_every_option_in_one_group(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*pytest-padbias*", "*--padbias-model=MODEL*", "*--padbias-weights=WEIGHTS*",
                                 "*--padbias-input-size=INPUT_SIZE*", "*--padbias-device=DEVICE*",
                                 "*--padbias-seed=SEED*", "*--padbias-images=IMAGES*", "*--padbias-dataset=DATASET*",
                                 "*--padbias-zoo-seeds=ZOO_SEEDS*", "*--padbias-zoo-epochs=ZOO_EPOCHS*",
                                 "*--padbias-zoo-train-images=ZOO_TRAIN_IMAGES*", "*--padbias-json=JSON*",
                                 "*--padbias-max-memory=MAX_MEMORY*",
                                 "*padbias_model (args)*", "*padbias_input_size (string)*"])


def test_markers_are_registered_with_help(pytester):
    result = pytester.runpytest("--markers")
    for marker in ("padbias_no_uneven_padding", "padbias_shift_robust", "padbias_max_pans", "padbias_no_blind_spot"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{marker}(*"])


@pytest.mark.parametrize("option, message", [
    ("--padbias-input-size=0", "*input size 0x0 must be positive*"),
    ("--padbias-input-size=-5x3", "*must be positive*"),
    ("--padbias-input-size=big", "*'big' is not an input size; use H or HxW*"),
    ("--padbias-device=tpu", "*'tpu' is not a device; accepted: cpu, cuda, auto*"),
    ("--padbias-seed=-1", "*--padbias-seed must be an integer >= 0*"),
    ("--padbias-images=0", "*--padbias-images must be an integer >= 1*"),
    ("--padbias-weights=weights.txt", "*use default, none, or a path to a .pth/.pt/.safetensors*"),
    ("--padbias-weights=missing.pth", "*weights file missing.pth does not exist*"),
    ("--padbias-compare-fail=pans+1", "*'pans+1' is not a comparison rule; use CHECK:+X% or CHECK:-X*"),
    ("--padbias-compare=nothing.json", "*comparison file nothing.json does not exist*"),
    ("--padbias-max-memory=lots", "*--padbias-max-memory='lots': 'lots' is not a memory size; accepted: auto, or a size such as 512MiB*"),
    ("--padbias-max-memory=0.5KiB", "*--padbias-max-memory='0.5KiB': '0.5KiB' is less than 1 MiB; accepted: auto*"),
    ("--padbias-zoo-seeds=0", "*--padbias-zoo-seeds must be an integer >= 1*"),
    ("--padbias-zoo-epochs=two", "*'two' is not an integer; --padbias-zoo-epochs must be an integer >= 1*"),
    ("--padbias-zoo-train-images=10", "*--padbias-zoo-train-images must be an integer >= 26*"),
    ("--padbias-dataset-limit=-1", "*--padbias-dataset-limit must be an integer >= 0*"),
])
def test_bad_option_values_are_usage_errors(pytester, option, message):
    result = pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_bad_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\npadbias_input_size = 12y\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option padbias_input_size = '12y'*not an input size*"])


def test_unknown_model_lists_close_matches(pytester):
    result = pytester.runpytest("--padbias-model=resnet5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--padbias-model=resnet5: not a torchvision classification model; close matches: *resnet50*"])


@pytest.mark.parametrize("spec, message", [
    ("tiny.py:nope", "*tiny.py has no callable 'nope'*"),
    ("no_such_pkg.mod:factory", "*cannot import 'no_such_pkg.mod'*"),
    ("tiny.py:not_a_module", "*returned int, not a torch.nn.Module*"),
])
def test_bad_model_specs_are_usage_errors(project, spec, message):
    result = project.runpytest(f"--padbias-model={spec}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_gate_fails_with_layers_sides_and_fix(project):
    result = project.runpytest(*FAST, "--padbias-input-size=32")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*@padbias.no_uneven_padding failed: uneven padding at input size 32x32: 1 of 1 conv/pool ops*",
        "*0 (conv2d, kernel 3x3, stride 2x2, on 32x32) reads 1 padding row(s) on top but 0 at the bottom*",
        "*fix: use input size 31x31 or 33x33*",
    ])


def test_gate_passes_at_an_even_size_and_cli_wins_over_ini(project):
    project.makeini("[pytest]\npadbias_input_size = 32\n")
    project.runpytest(*FAST, "--padbias-input-size=33").assert_outcomes(passed=1)
    project.runpytest(*FAST).assert_outcomes(failed=1)


def test_marker_argument_overrides_the_input_size(project):
    project.makepyfile(test_gated=GATED.replace("@padbias.no_uneven_padding", "@padbias.no_uneven_padding(input_size=(33, 65))"))
    project.runpytest(*FAST, "--padbias-input-size=32").assert_outcomes(passed=1)


@pytest.mark.parametrize("marker, message", [
    ("@padbias.no_uneven_padding(sizes=3)", "*test_gated.py::test_gated: @padbias.no_uneven_padding: got an unexpected keyword argument 'sizes'; accepted arguments: (input_size=None)*"),
    ("@padbias.no_uneven_padding(input_size=-2)", "*no_uneven_padding(input_size=(-2, -2)): give an int or (height, width) of positive ints*"),
])
def test_bad_marker_arguments_fail_at_collection(project, marker, message):
    project.makepyfile(test_gated=GATED.replace("@padbias.no_uneven_padding", marker))
    result = project.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_gate_runs_after_the_body_and_a_failing_body_wins(project):
    project.makepyfile(test_gated=GATED.replace("assert padbias_model.training is False", "assert 0, 'body failed'"))
    result = project.runpytest(*FAST, "--padbias-input-size=32")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*body failed*"])
    assert "no_uneven_padding failed" not in result.stdout.str()


def test_json_records_run_and_checks(project):
    out = project.path / "out" / "run.json"
    project.runpytest(*FAST, "--padbias-input-size=32", f"--padbias-json={out}").assert_outcomes(failed=1)
    doc = json.loads(out.read_text())
    assert list(doc)[:8] == ["model", "weights", "weights_sha256", "input_size", "device", "seed", "torch_version", "padbias_version"]
    assert doc["model"] == "tiny.py:stride2" and doc["input_size"] == [32, 32] and doc["torch_version"] == torch.__version__
    (entry,) = doc["tests"]
    assert entry["nodeid"] == "test_gated.py::test_gated" and entry["outcome"] == "failed"
    (check,) = entry["checks"]
    assert check["check"] == "no_uneven_padding" and check["passed"] is False and check["value"] == 1 and check["limit"] == 0
    assert check["details"]["uneven_layers"] == [{"layer": "0", "op": "conv2d", "pad_read": [1, 0, 1, 0], "dropped": [0, 0],
                                                 "input_size": [32, 32], "kernel": [3, 3], "stride": [2, 2], "mode": "zeros"}]
    assert check["details"]["nearest_even_sizes"] == {"below": [31, 31], "above": [33, 33]}


def test_html_row_has_summary_and_figure(project):
    pytest.importorskip("pytest_html")
    report = project.path / "report.html"
    project.runpytest(*FAST, "--padbias-input-size=32", f"--html={report}", "--self-contained-html")
    page = report.read_text()
    assert "no_uneven_padding" in page and "1 of 1 conv/pool ops pad unevenly at 32x32" in page
    assert "data:image/png;base64," in page


def test_user_conftest_overrides_the_model(project):
    project.makeconftest("""
import pytest, tiny

@pytest.fixture
def padbias_model():
    return tiny.stride2().eval()
""")
    project.runpytest("--padbias-input-size=33", "--padbias-images=2").assert_outcomes(passed=1)


def test_model_without_convolutions_fails_the_gate_clearly(project):
    result = project.runpytest("--padbias-model=tiny.py:dense_only", "--padbias-input-size=33", "--padbias-images=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*@padbias.no_uneven_padding could not check this model: the model has no convolution*"])


def test_input_too_small_fails_clearly(project):
    project.makepyfile(tiny2="""
import torch.nn as nn
def deep():
    return nn.Sequential(nn.Conv2d(3, 4, 7, stride=2), nn.Conv2d(4, 4, 7, stride=2), nn.AdaptiveAvgPool2d(1))
""")
    result = project.runpytest("--padbias-model=tiny2.py:deep", "--padbias-input-size=16", "--padbias-images=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*input size 16x16 is too small for the model: layer 1 gets a 5x5 input*"])


class TestWeightsFiles:
    def model(self):
        import importlib.util

        spec = importlib.util.spec_from_loader("tiny_src", loader=None)
        module = importlib.util.module_from_spec(spec)
        exec(TINY, module.__dict__)
        return module.stride2()

    def test_state_dict_and_safetensors_load(self, project):
        from safetensors.torch import save_file

        state = self.model().state_dict()
        torch.save(state, project.path / "good.pth")
        save_file(state, str(project.path / "good.safetensors"))
        for name in ("good.pth", "good.safetensors"):
            project.runpytest(*FAST, f"--padbias-weights={name}", "--padbias-input-size=33").assert_outcomes(passed=1)

    def test_state_dict_that_does_not_fit_names_the_keys(self, project):
        state = self.model().state_dict()
        state["extra.weight"] = state.pop("0.weight")
        torch.save(state, project.path / "other.pth")
        result = project.runpytest(*FAST, "--padbias-weights=other.pth")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*weights file other.pth do not fit the model: 1 missing keys (0.weight); 1 unexpected keys (extra.weight)*"])

    def test_corrupt_file_is_named(self, project):
        (project.path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
        result = project.runpytest(*FAST, "--padbias-weights=broken.pth")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*weights file broken.pth is truncated or corrupt*"])

    def test_truncated_safetensors_is_named(self, project):
        from safetensors.torch import save_file

        save_file(self.model().state_dict(), str(project.path / "cut.safetensors"))
        data = (project.path / "cut.safetensors").read_bytes()
        (project.path / "cut.safetensors").write_bytes(data[: len(data) // 2])
        result = project.runpytest(*FAST, "--padbias-weights=cut.safetensors")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*weights file cut.safetensors is not a readable safetensors file*"])

    def test_a_file_whose_hash_does_not_match_its_name_is_refused(self, project):
        import hashlib

        torch.save(self.model().state_dict(), project.path / "tiny.pth")
        digest = hashlib.sha256((project.path / "tiny.pth").read_bytes()).hexdigest()
        (project.path / f"tiny-{digest[:8]}.pth").write_bytes((project.path / "tiny.pth").read_bytes())
        project.runpytest(*FAST, f"--padbias-weights=tiny-{digest[:8]}.pth", "--padbias-input-size=33").assert_outcomes(passed=1)
        wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
        (project.path / f"tiny-{wrong}.pth").write_bytes((project.path / "tiny.pth").read_bytes())
        result = project.runpytest(*FAST, f"--padbias-weights=tiny-{wrong}.pth")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*weights file tiny-{wrong}.pth is corrupt or not what its name says: SHA-256 {digest[:12]}... "
                                     f"does not start with {wrong}*"])

    def test_pickle_that_runs_code_is_refused(self, project):
        marker = project.path / "pwned"
        project.makepyfile(evil=f"""
import os, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"0.weight": Evil()}}, "evil.pth")
""")
        subprocess.run([sys.executable, "evil.py"], cwd=project.path, check=True)
        result = project.runpytest(*FAST, "--padbias-weights=evil.pth")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*weights file evil.pth was refused: it holds pickled Python objects*"])
        assert not marker.exists()

    def test_non_state_dict_is_named(self, project):
        torch.save([1, 2, 3], project.path / "list.pth")
        result = project.runpytest(*FAST, "--padbias-weights=list.pth")
        result.stderr.fnmatch_lines(["*weights file list.pth is not a state dict*"])


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, pytest_padbias, pytest_padbias.plugin; from pytest_padbias import padbias; " \
           "padbias.max_pans; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_plain_pytest_run_does_not_import_torch(pytester):
    pytester.makepyfile(test_plain="import sys\ndef test_x():\n    assert 'torch' not in sys.modules\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_gate_that_is_not_implemented_errors_and_never_passes(project, monkeypatch):
    from pytest_padbias import gates

    monkeypatch.setitem(gates.GATE_MODULES, "max_pans", "pytest_padbias.not_there")
    project.makepyfile(test_gated=GATED.replace("@padbias.no_uneven_padding", "@padbias.max_pans(0.02)"))
    result = project.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*@padbias.max_pans is not implemented in this version of pytest-padbias*"])


def test_stacked_gates_all_run(project):
    project.makepyfile(test_gated=GATED.replace(
        "@padbias.no_uneven_padding", "@padbias.no_uneven_padding\n@padbias.no_uneven_padding(input_size=33)"))
    out = project.path / "run.json"
    result = project.runpytest(*FAST, "--padbias-input-size=32", f"--padbias-json={out}")
    result.assert_outcomes(failed=1)
    checks = json.loads(out.read_text())["tests"][0]["checks"]
    assert [c["passed"] for c in checks] == [True, False] or [c["passed"] for c in checks] == [False, True]
    assert sorted(c["details"]["input_size"] for c in checks) == [[32, 32], [33, 33]]


PAN_MODEL = """
import torch, torch.nn as nn

class Constant(nn.Module):
    def forward(self, x):
        return torch.ones_like(x)

def top_detector():
    # On a constant input, channel 0 (the row above each pixel) is 0 on the top row, where
    # that row is zero padding, and 3 everywhere inside: a padding-aware neuron. Channel 1
    # reads only the centre tap: constant everywhere, not one.
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, :] = 1.0
        conv.weight[1, :, 1, 1] = 1.0
    return nn.Sequential(Constant(), conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
"""


@pytest.mark.parametrize("limit, outcome", [(0.5, "passed"), (0.0, "failed")])
def test_max_pans_gate_through_the_plugin(pytester, limit, outcome):
    import pytest_padbias.pan_gate  # noqa: F401  (keep it loaded across pytester runs)
    import pytest_padbias.pans  # noqa: F401

    pytester.makepyfile(pan_model=PAN_MODEL, test_pan_gate_inner=f"""
from pytest_padbias import padbias

@padbias.max_pans({limit})
def test_pans():
    pass
""")
    out = pytester.path / "run.json"
    result = pytester.runpytest("--padbias-model=pan_model.py:top_detector", "--padbias-images=4",
                                "--padbias-input-size=32", f"--padbias-json={out}", "-p", "no:cacheprovider")
    result.assert_outcomes(**{outcome: 1})
    (check,) = json.loads(out.read_text())["tests"][0]["checks"]
    assert check["check"] == "max_pans" and check["value"] == 0.5 and check["limit"] == limit
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*@padbias.max_pans failed*0*"])
