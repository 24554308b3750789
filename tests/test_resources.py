"""Memory bounds (issue #8): the activation estimate, the budget, chunk plans, and gates
that run in chunks within --padbias-max-memory or refuse before any forward pass."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from pytest_padbias.pan_gate import max_pans_check
from pytest_padbias.pans import pan_census
from pytest_padbias.resources import (
    AUTO_FRACTION, OPTION, SAFETY_FACTOR, activation_profile, available_memory, census_chunk_size, census_costs,
    memory_budget, parse_max_memory, parse_memory, plan_chunks,
)
from pytest_padbias.result import GateContext, PadbiasError
from pytest_padbias.shift_gate import run_shift_robust

MiB = 2**20


class Counting(nn.Module):
    """A small classifier that counts its real (non-meta) forward passes and their batch sizes."""

    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
        self.batches = []

    def forward(self, x):
        if x.device.type != "meta":
            self.batches.append(int(x.shape[0]))
        return self.head(self.body(x))


def context(model, images, budget, **kw):
    return GateContext(model=model.eval(), images=images, input_size=tuple(images.shape[-2:]), device="cpu",
                       seed=0, max_examples=kw.pop("max_examples", 5), derandomize=True, max_memory=budget, **kw)


# --------------------------------------------------------------------------- the option


@pytest.mark.parametrize("text, size", [("8GiB", 8 * 2**30), ("512MiB", 512 * MiB), ("1.5GB", 1_500_000_000),
                                        ("2 gib", 2 * 2**30), ("1048576", MiB), ("3e9", 3_000_000_000)])
def test_memory_sizes_parse(text, size):
    assert parse_memory(text) == size and parse_max_memory(text) == text.strip()


@pytest.mark.parametrize("text", ["", "lots", "-1GiB", "8 GiBs", "0", "12", "1e999", "nan", "inf MiB", "1e30GiB"])
def test_bad_memory_sizes_name_the_option_and_the_accepted_forms(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=rf"{OPTION}=.*accepted: auto, or a size such as 512MiB"):
        parse_max_memory(text)


def test_auto_is_a_fraction_of_available_memory():
    assert parse_max_memory(" AUTO ") == "auto"
    available = available_memory()
    assert 0 < available <= 2**50
    assert abs(memory_budget("auto") - AUTO_FRACTION * available) <= 0.05 * available  # free memory moves
    assert memory_budget("512MiB") == 512 * MiB


# --------------------------------------------------------------------------- the estimate


def test_the_meta_replay_counts_live_tensors_not_all_tensors():
    # conv output 8 x 64 x 64 float32 = 128 KiB; a ReLU that is not in place keeps a second one alive
    conv = lambda: nn.Conv2d(3, 8, 3, padding=1)  # noqa: E731
    assert activation_profile(nn.Sequential(conv()), 64).peak == 131072
    assert activation_profile(nn.Sequential(conv(), nn.ReLU()), 64).peak == 2 * 131072
    assert activation_profile(nn.Sequential(conv(), nn.ReLU(inplace=True)), 64).peak == 131072
    three = activation_profile(nn.Sequential(conv(), nn.ReLU(), nn.ReLU(), nn.ReLU()), 64)
    assert three.peak == 2 * 131072 and three.total == 4 * 131072 and three.input_bytes == 3 * 64 * 64 * 4


MEASURE = Path(__file__).resolve().parent.parent / "bench" / "measure_peak.py"


@pytest.mark.parametrize("name, size, batch", [("resnet18", 1024, 1), ("mobilenet_v2", 224, 16)])
def test_estimate_is_within_the_stated_factor_of_the_measured_peak(name, size, batch):
    """Measured peak RSS of a real forward pass (fresh process, VmHWM / ru_maxrss) against the meta
    estimate: measured <= the plan (SAFETY_FACTOR x estimate + input + per-pass overhead)
    and >= 0.8 x the raw estimate (the estimate is not an inflated guess)."""
    import torchvision

    out = subprocess.run([sys.executable, str(MEASURE), name, str(size), str(batch)], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    measured = json.loads(out.stdout)
    assert measured["rose"], "the forward pass did not raise the peak RSS; the measurement says nothing"
    profile = activation_profile(getattr(torchvision.models, name)(weights=None).eval(), size)
    estimate = batch * profile.peak
    planned = batch * profile.per_image() + profile.overhead
    assert 0.8 * estimate <= measured["extra"] <= planned, (measured, estimate, planned)
    assert SAFETY_FACTOR * estimate + profile.overhead >= measured["extra"]


# --------------------------------------------------------------------------- plans


def test_plan_chunks_numbers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    profile = activation_profile(model, 64)
    per_image = 3 * 64 * 64 * 4 + int(SAFETY_FACTOR * 131072)
    assert profile.per_image() == per_image and profile.overhead == 32 * MiB + 2 * 8 * 3 * 3 * 3 * 4
    base = profile.overhead
    assert plan_chunks(model, 64, 32, base + 10 * per_image) == 10
    assert plan_chunks(model, 64, 32, base + 10 * per_image + per_image // 2) == 10
    assert plan_chunks(model, 64, 4, base + 10 * per_image) == 4
    assert plan_chunks(model, 64, 32, base + per_image) == 1
    assert plan_chunks(model, 64, 32, base + 10 * per_image + 5 * MiB, fixed=5 * MiB) == 10
    assert plan_chunks(model, 64, 32, base + 10 * per_image, per_image_extra=per_image) == 5
    with pytest.raises(PadbiasError, match=r"input 64x64 needs about 240 KiB per image and 32 MiB per forward pass for Sequential; the budget is "
                                           r".* \(--padbias-max-memory\); use a smaller --padbias-input-size or raise the budget"):
        plan_chunks(model, 64, 32, base + per_image - 1)


def test_resnet50_plans_at_224_1024_2048():
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    budget = 8 * 2**30
    assert [plan_chunks(model, s, 32, budget) for s in (224, 1024, 2048)] == [32, 25, 6]
    with pytest.raises(PadbiasError, match=r"input 8192x8192 needs about 20 GiB per image for ResNet; the budget is 8.0 GiB"):
        plan_chunks(model, 8192, 1, budget)


@pytest.mark.parametrize("gate", ["max_pans", "shift_robust", "no_blind_spot"])
def test_a_request_that_cannot_fit_is_refused_before_any_forward_pass(gate):
    from pytest_padbias.blindspot_gate import no_blind_spot_check
    from pytest_padbias.shift_gate import shift_robust_check

    model = Counting()
    ctx = context(model, torch.randn(2, 3, 512, 512), budget=8 * MiB)
    check = {"max_pans": lambda: max_pans_check(ctx, 0.5), "shift_robust": lambda: shift_robust_check(ctx, 0.5),
             "no_blind_spot": lambda: no_blind_spot_check(ctx)}[gate]
    with pytest.raises(PadbiasError, match=r"input 512x512 needs about .* per image .*for Counting; the budget is 8.0 MiB "
                                           r"\(--padbias-max-memory\); use a smaller --padbias-input-size"):
        check()
    assert model.batches == []


# --------------------------------------------------------------------------- chunked == whole


def census_budget(model, images, chunk):
    """A budget under which the census runs ``chunk`` images per pass."""
    n, size = images.shape[0], tuple(images.shape[-2:])
    profile = activation_profile(model, size)
    extra, fixed = census_costs(model, size, n, torch.get_num_threads())["chunked"]
    return profile.overhead + fixed + chunk * (profile.per_image() + extra) + 1


def test_chunked_census_and_gate_equal_the_single_pass():
    torch.manual_seed(0)
    model = Counting(6).eval()
    images = torch.randn(5, 3, 40, 40)
    budget = census_budget(model, images, 2)
    assert census_chunk_size(model, images, budget, torch.get_num_threads()) == 2
    assert census_chunk_size(model, images, 2**40, torch.get_num_threads()) is None
    whole = pan_census(model, images)
    chunked = pan_census(model, images, chunk_size=2)
    for a in ("ks", "ks_plus", "ks_minus"):
        np.testing.assert_array_equal(getattr(whole, a), getattr(chunked, a))
    model.batches.clear()
    small = max_pans_check(context(model, images, budget), 0.5)
    assert max(model.batches) == 2  # every pass of the gate, the figure's included, kept to the plan
    model.batches.clear()
    large = max_pans_check(context(model, images, 2**40), 0.5)
    assert max(model.batches) == 5
    assert small.to_json() == large.to_json()


def test_chunked_shift_gate_equals_the_unchunked_one():
    torch.manual_seed(1)
    model = Counting(6).eval()
    images = torch.randn(3, 3, 48, 48)
    profile = activation_profile(model, (48, 48))
    results = []
    for budget, most in ((profile.overhead + 2 * profile.per_image() + 1, 2), (2**40, None)):
        model.batches.clear()
        result = run_shift_robust(context(model, images, budget), 0.5, None, "reflect")
        assert most is None or max(model.batches) == most
        results.append(result)
    assert max(model.batches) > 2  # the unconstrained run did batch more views
    small, large = results
    assert small.value == large.value
    assert small.details["per_image_consistency"] == large.details["per_image_consistency"]
    assert small.details["border_map"] == large.details["border_map"]


# --------------------------------------------------------------------------- a large input


BIG_RUN = textwrap.dedent("""
    import json, resource, sys
    import torch, torch.nn as nn
    from pytest_padbias.pan_gate import max_pans_check
    from pytest_padbias.result import GateContext

    torch.set_num_threads(1)
    torch.manual_seed(0)
    sys.path.insert(0, sys.argv[1])
    from counting import Counting

    def run(model, images, budget):
        ctx = GateContext(model=model, images=images, input_size=tuple(images.shape[-2:]), device="cpu", seed=0,
                          max_memory=budget)
        return max_pans_check(ctx, 0.5)

    model = Counting().eval()
    run(model, torch.randn(2, 3, 64, 64), 2**30)  # import and warm up everything first
    images = torch.randn(4, 3, 2048, 2048)
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    def maxrss():  # VmHWM: ru_maxrss also keeps the parent's peak from before exec
        try:
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = rss()
    model.batches.clear()
    result = run(model, images, int(sys.argv[2]))
    peak = maxrss()
    print(json.dumps({"extra": peak - before, "batches": model.batches, "neurons": result.details["neurons"]}))
""")


def test_a_2048_gate_run_on_a_small_model_stays_within_the_budget(tmp_path):
    import inspect

    (tmp_path / "counting.py").write_text("import torch.nn as nn\n\n" + inspect.getsource(Counting))
    (tmp_path / "big.py").write_text(BIG_RUN)
    budget = 512 * MiB
    out = subprocess.run([sys.executable, str(tmp_path / "big.py"), str(tmp_path), str(budget)], capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads(out.stdout)
    assert run["neurons"] == 8 and max(run["batches"]) < 4  # chunked: all 4 images at once would not fit
    assert run["extra"] <= budget, f"peak {run['extra'] / MiB:.0f} MiB above the start, budget {budget / MiB:.0f} MiB"


# --------------------------------------------------------------------------- through pytest


def test_a_tiny_budget_fails_the_gate_clearly(pytester):
    import pytest_padbias.pans  # noqa: F401  (keep it loaded across pytester runs)

    pytester.makepyfile(tiny_net="""
import torch.nn as nn
def net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
""", test_budget_inner="""
from pytest_padbias import padbias

@padbias.max_pans(0.5)
def test_pans():
    pass
""")
    result = pytester.runpytest("--padbias-model=tiny_net.py:net", "--padbias-images=2", "--padbias-input-size=64",
                                "--padbias-max-memory=2MiB", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*@padbias.max_pans could not check this model: input 64x64 needs about * per image *"
                                 "for Sequential; the budget is 2.0 MiB (--padbias-max-memory); use a smaller*"])
    assert "Traceback" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()


def test_intervention_runs_in_planned_chunks_with_the_same_result():
    from pytest_padbias.intervention import pan_reflect_experiment

    torch.manual_seed(2)
    model = Counting(6).eval()
    images = torch.randn(5, 3, 32, 32)
    census = pan_census(model, images, theta=0.4)
    profile = activation_profile(model, (32, 32))
    whole = pan_reflect_experiment(model, images, census, theta=0.4)
    model.batches.clear()
    chunked = pan_reflect_experiment(model, images, census, theta=0.4, budget=profile.overhead + 2 * profile.per_image() + 1)
    assert max(model.batches) == 2

    # the same channels are switched; agreement, log-odds and distances agree up to the last
    # bits batch-size-dependent CPU kernels round differently (orderings of near-ties may not)
    for key in ("pan_channels", "random_channels", "switched_neurons"):
        assert chunked[key] == whole[key]
    for variant in ("pan_reflect", "random_reflect", "all_reflect"):
        w, c = whole[variant], chunked[variant]
        assert c["top1_agreement"] == w["top1_agreement"]
        assert c["mean_manhattan"] == pytest.approx(w["mean_manhattan"], rel=1e-4, abs=1e-6)
        assert c["log_odds"] == pytest.approx(w["log_odds"], rel=1e-4, abs=1e-6)
    model.batches.clear()
    with pytest.raises(PadbiasError, match=r"the budget is 8.0 MiB \(--padbias-max-memory\)"):
        pan_reflect_experiment(model, images, census, theta=0.4, budget=8 * MiB)
    assert model.batches == []
