"""Under pytest-xdist the controller alone writes the JSON, with the same results."""
import json

import pytest

pytest.importorskip("xdist")

TESTS = """
from pytest_padbias import padbias

@padbias.no_uneven_padding
def test_uneven(padbias_model):
    pass

@padbias.no_uneven_padding(input_size=33)
def test_even(padbias_model):
    pass

def test_plain():
    pass
"""


def test_parallel_run_reports_the_same_as_a_serial_run(pytester):
    pytester.makepyfile(tiny="import torch.nn as nn\n"
                             "def model():\n    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1))\n")
    pytester.makepyfile(test_three=TESTS)
    args = ["--padbias-model=tiny.py:model", "--padbias-input-size=32", "--padbias-images=2", "-p", "no:cacheprovider"]
    serial = pytester.runpytest_subprocess(*args, "--padbias-json=serial.json")
    serial.assert_outcomes(passed=2, failed=1)
    parallel = pytester.runpytest_subprocess(*args, "-n", "2", "--padbias-json=parallel.json")
    parallel.assert_outcomes(passed=2, failed=1)
    a = json.loads((pytester.path / "serial.json").read_text())
    b = json.loads((pytester.path / "parallel.json").read_text())
    assert a == b
    assert [t["outcome"] for t in a["tests"]] == ["passed", "passed", "failed"]
    assert not list(pytester.path.glob(".*.json.*")), "a temporary report file was left behind"
