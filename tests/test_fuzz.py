"""Fuzzing (issue #8): random option values, marker arguments, input sizes and small random
architectures. Every run ends in a result or a PadbiasError / usage error naming the
problem, never another exception, an INTERNALERROR or a traceback. Each bug the fuzzing
found is kept as an @example."""
import argparse
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from pytest_padbias.geometry import even_sizes, foveation_map, trace_padding, uneven_layers
from pytest_padbias.gates import GATE_MODULES, validate_marker
from pytest_padbias.options import OPTIONS
from pytest_padbias.pans import pan_census
from pytest_padbias.result import GateContext, PadbiasError
from pytest_padbias.trace import axis_read
from pytest_padbias.uneven_padding import no_uneven_padding_check

CI = bool(os.environ.get("CI"))
#: PADBIAS_FUZZ_SCALE=20 runs twenty times the examples (a longer fuzzing session).
SCALE = float(os.environ.get("PADBIAS_FUZZ_SCALE", "1"))


def fuzz(n, **kw):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=CI, database=None, **kw)


# --------------------------------------------------------------------------- (a) options

EDGE_TEXT = ["", " ", "0", "-1", "1e999", "nan", "inf", "-0", "00", "9" * 5000, "１２", "٣", "1_000", "0x10",
             "224x", "x224", "224x224x3", "224,320", "1×1", "\x00", "a\x00b", "../..", "/", ".", "auto", "AUTO",
             "8GiB", "512 MiB", "0.5KiB", "1e30GiB", "-8GiB", "GiB", "8 G i B", "cpu", "CUDA", "default", "none",
             "w.pth", "w.safetensors", "pans:+1%", ":+1", "pans:+", ",", "resnet5", "x.py:f"]
option_text = st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=30), st.integers().map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr),
                        st.from_regex(r"\s*-?\d{1,6}\s*([xX×,]\s*-?\d{1,6})?\s*", fullmatch=True),
                        st.from_regex(r"\d{1,4}(\.\d{0,3})?\s*[KMGT]?i?[Bb]?", fullmatch=True))
# Options whose parser touches the file system or imports modules are fuzzed at parse
# level with names that stay inside the test's folder.
PARSE_ONLY = {"model", "weights", "json", "report-dir", "compare"}


@fuzz(400)
@given(name=st.sampled_from(sorted(OPTIONS)), text=option_text)
@example(name="input-size", text="9" * 5000)  # int() refuses more than 4300 digits: was a ValueError
@example(name="input-size", text="9" * 4000)  # 4000-digit sizes: was accepted
@example(name="max-memory", text="1e30GiB")
def test_option_parsers_return_or_raise_argument_type_errors(name, text):
    parse = OPTIONS[name][0]  # reads files relative to the working directory, never writes
    try:
        value = parse(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc)
        return
    assert isinstance(value, (str, int, tuple))  # plain values that xdist can ship
    if name == "input-size":
        assert all(1 <= v <= 2**20 for v in value)


SAFE_TEXT = st.text(st.characters(codec="ascii", exclude_characters="\x00\r\n"), max_size=12)


@pytest.fixture(scope="module")
def trivial_project(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_options")


@fuzz(8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(set(OPTIONS) - PARSE_ONLY)),
       text=st.one_of(st.sampled_from(EDGE_TEXT[:40]), SAFE_TEXT), ini=st.booleans())
@example(name="input-size", text="9" * 5000, ini=True)  # was an INTERNALERROR from the ini path
@example(name="max-memory", text="12", ini=False)
def test_option_values_through_pytest_are_ok_or_usage_errors(pytester, name, text, ini):
    if "\x00" in text and not ini:
        text = text.replace("\x00", "")  # no NUL bytes in a command line
    pytester.makepyfile(test_trivial_fuzz_inner="def test_ok():\n    pass\n")
    if ini:
        if text != text.strip() or any(c in text for c in "#;%\x00") or text.splitlines() not in ([], [text]):
            return  # not representable as one ini value
        pytester.makeini(f"[pytest]\npadbias_{name.replace('-', '_')} = {text}\n")
        result = pytester.runpytest("-p", "no:cacheprovider")
    else:
        pytester.makeini("[pytest]\n")
        result = pytester.runpytest(f"--padbias-{name}={text}", "-p", "no:cacheprovider")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.USAGE_ERROR), out[-3000:]
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-3000:]
    if result.ret == pytest.ExitCode.USAGE_ERROR:
        assert f"padbias-{name}" in out or f"padbias_{name.replace('-', '_')}" in out, out[-3000:]


# --------------------------------------------------------------------------- (b) markers

leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2, 2**40), st.floats(), st.text(max_size=8),
                 st.sampled_from([10**400, -(10**400), float("nan"), float("inf"), np.int64(3), np.float32(0.5),
                                  np.bool_(True), "reflect", "zeros", "edge", "x.png", "", b"bytes", object()]))
value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                                   st.dictionaries(st.text(max_size=3), inner, max_size=2)), max_leaves=6)
NAMES = ["fraction", "theta", "threshold", "max_shift", "fill", "ratio", "stride", "stimulus", "min_area", "input_size", "x"]


@fuzz(600)
@given(gate=st.sampled_from(sorted(GATE_MODULES)), args=st.lists(value, max_size=3),
       kwargs=st.dictionaries(st.sampled_from(NAMES), value, max_size=3))
@example(gate="max_pans", args=[10**400], kwargs={})  # float(10**400): was an OverflowError
@example(gate="max_pans", args=[0.5], kwargs={"theta": 10**400})
@example(gate="shift_robust", args=[10**400], kwargs={})
@example(gate="no_blind_spot", args=[10**400], kwargs={})
@example(gate="no_blind_spot", args=[], kwargs={"stimulus": [[1, 2], [3]]})
def test_marker_arguments_are_normalised_or_refused(gate, args, kwargs):
    try:
        out = validate_marker(gate, args, kwargs)
    except PadbiasError as exc:
        assert str(exc)
        return
    assert isinstance(out, dict)


# --------------------------------------------------------------------------- (c) input sizes

ARCHS = ("resnet18", "mobilenet_v2", "squeezenet1_0")


@pytest.fixture(scope="module")
def archs():
    torch.manual_seed(0)
    return {name: getattr(torchvision.models, name)(weights=None).eval() for name in ARCHS}


side = st.one_of(st.integers(1, 40), st.integers(1, 4096), st.sampled_from([1, 2, 31, 32, 33, 224, 225, 4096]))


@fuzz(40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(ARCHS), h=side, w=side)
@example(name="resnet18", h=1, w=1)
@example(name="squeezenet1_0", h=4096, w=17)
def test_geometry_on_any_input_size_gives_a_result_or_a_clear_error(archs, name, h, w):
    model = archs[name]
    try:
        records = trace_padding(model, (h, w))
    except PadbiasError as exc:
        assert "too small" in str(exc) or "cannot run" in str(exc), str(exc)
        with pytest.raises(PadbiasError):
            uneven_layers(model, (h, w))
        return
    assert records and all(len(r.pad_read) == 4 for r in records)
    assert [r.layer for r in uneven_layers(model, (h, w))] == [r.layer for r in records if r.uneven]
    if h == w and h <= 1024:
        assert (h in even_sizes(model, max(1, h - 2), h + 2)) == (not any(r.uneven for r in records))
    if h * w <= 1024 * 1024:
        counts, ratio = foveation_map(model, (h, w))
        assert tuple(counts.shape) == (h, w) and bool((counts >= 0).all())
        assert math.isnan(ratio) or ratio >= 0


# --------------------------------------------------------------------------- (d) random architectures


@st.composite
def architectures(draw):
    """A small nn.Sequential of convs, pools, ReLU, BatchNorm and explicit pads, plus the
    per-layer description the oracle needs."""
    layers, specs = [], []
    channels = 3
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "conv", "maxpool", "avgpool", "pad", "relu", "bn"]))
        if kind == "conv":
            groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
            out = groups * draw(st.integers(1, 3))
            k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
            s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
            d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
            p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
            mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
            layers.append(nn.Conv2d(channels, out, k, s, p, d, groups, padding_mode=mode))
            channels = out
            specs.append(("conv", k, s, d, p, False, mode))
        elif kind in ("maxpool", "avgpool"):
            k = draw(st.integers(1, 4))
            s = draw(st.integers(1, 3))
            p = draw(st.integers(0, k // 2))
            ceil = draw(st.booleans())
            if kind == "maxpool":
                d = draw(st.integers(1, 2))
                layers.append(nn.MaxPool2d(k, s, p, dilation=d, ceil_mode=ceil))
            else:
                d = 1
                layers.append(nn.AvgPool2d(k, s, p, ceil_mode=ceil))
            specs.append((kind, (k, k), (s, s), (d, d), (p, p), ceil, "zeros"))
        elif kind == "pad":
            pads = tuple(draw(st.integers(0, 3)) for _ in range(4))  # left, right, top, bottom
            layers.append(draw(st.sampled_from([nn.ZeroPad2d, nn.ReplicationPad2d]))(pads))
            specs.append(("pad", pads))
        elif kind == "relu":
            layers.append(nn.ReLU())
            specs.append(("same",))
        else:
            layers.append(nn.BatchNorm2d(channels))
            specs.append(("same",))
    if not any(s[0] == "conv" for s in specs):  # geometry needs a conv to know the input channels
        layers.append(nn.Conv2d(channels, 2, 3, padding=1))
        specs.append(("conv", (3, 3), (1, 1), (1, 1), (1, 1), False, "zeros"))
    return nn.Sequential(*layers).eval(), specs


def oracle(model, specs, size):
    """Per window op and unfolded pad: (output size, even?) from a real forward pass's
    shapes and window arithmetic written out here (not geometry's): the windows start at
    0, s, 2s, ...; the last one ends at index (n_out - 1) * s + d * (k - 1) of the padded
    axis; an axis is even when the same number of padding positions lie inside the
    windows' span on both sides and no input position lies after it. An explicit pad that
    feeds a window op is folded into it; a conv with padding_mode != 'zeros' is, as in
    PyTorch, an F.pad of its padding and an unpadded conv."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, a, o: shapes.append((tuple(a[0].shape[-2:]), tuple(o.shape[-2:]))))
             for m in model]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
    expected, pending = [], None  # pending: explicit pad (before, after per axis) folded into the next window op
    for spec, (n_in, n_out) in zip(specs, shapes):
        if spec[0] == "same":
            continue
        if spec[0] == "pad":
            l, r, t, b = spec[1]
            if pending is not None:  # a pad feeding a pad is not folded
                expected.append((pending[2], pending[0][0][0] == pending[0][0][1] and pending[0][1][0] == pending[0][1][1]))
            pending = (((t, b), (l, r)), n_in, n_out)
            continue
        kind, k, s, d, p, ceil, mode = spec
        if mode != "zeros":
            if pending is not None:  # the explicit pad feeds the conv's own pad: not folded
                expected.append((pending[2], pending[0][0][0] == pending[0][0][1] and pending[0][1][0] == pending[0][1][1]))
            pending = (((p[0], p[0]), (p[1], p[1])), n_in, (n_in[0] + 2 * p[0], n_in[1] + 2 * p[1]))
            p = (0, 0)
        before_after = [(p[i], p[i]) for i in range(2)]
        source = n_in
        if pending is not None:
            before_after = [(pending[0][i][0] + p[i], pending[0][i][1] + p[i]) for i in range(2)]
            source = pending[1]
            pending = None
        even = True
        for i in range(2):
            before, after = before_after[i]
            end = (n_out[i] - 1) * s[i] + d[i] * (k[i] - 1)
            padding_before_read = sum(1 for j in range(before) if j <= end)
            padding_after_read = sum(1 for j in range(before + source[i], before + source[i] + max(after, end + 1)) if j <= end)
            unread = sum(1 for j in range(before, before + source[i]) if j > end)
            even &= padding_before_read == padding_after_read and unread == 0
        expected.append((n_out, even))
    if pending is not None:
        expected.append((pending[2], pending[0][0][0] == pending[0][0][1] and pending[0][1][0] == pending[0][1][1]))
    return expected


def runs(model, size) -> bool:
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, *size))
        return True
    except RuntimeError:
        return False


def _pad_then_ceil_pool():
    # an explicit pad folded into a ceil_mode pool: PyTorch's "last window starts inside the
    # input" counts the pad as input; geometry counted it as the pool's own padding (size 1, even)
    return (nn.Sequential(nn.Conv2d(3, 1, 1), nn.ZeroPad2d((0, 0, 0, 1)), nn.AvgPool2d(1, 1, 0, ceil_mode=True)),
            [("conv", (1, 1), (1, 1), (1, 1), (0, 0), False, "zeros"), ("pad", (0, 0, 0, 1)),
             ("avgpool", (1, 1), (1, 1), (1, 1), (0, 0), True, "zeros")])


@fuzz(60)
@example(arch=_pad_then_ceil_pool(), h=1, w=1)
@given(arch=architectures(), h=st.integers(1, 48), w=st.integers(1, 48))
def test_random_architectures_match_the_oracle(arch, h, w):
    model, specs = arch
    if not runs(model, (h, w)):
        with pytest.raises(PadbiasError):
            trace_padding(model, (h, w))
        return
    records = trace_padding(model, (h, w))
    expected = oracle(model, specs, (h, w))
    assert [(tuple(r.output_size), not r.uneven) for r in records] == expected
    assert [r for r in uneven_layers(model, (h, w))] == [r for r in records if r.uneven]
    counts, _ratio = foveation_map(model, (h, w))
    assert tuple(counts.shape) == (h, w)


@fuzz(25)
@given(arch=architectures(), h=st.integers(4, 24), w=st.integers(4, 24), n=st.integers(2, 3), seed=st.integers(0, 9))
def test_random_architectures_census_matches_scipy_and_gate_runs(arch, h, w, n, seed):
    model, _specs = arch
    torch.manual_seed(seed)
    images = torch.randn(n, 3, h, w)
    try:
        census = pan_census(model, images, theta=0.5)
    except PadbiasError as exc:
        assert str(exc)
    else:
        maps = {}
        hooks = [m.register_forward_hook(lambda m, a, o, i=i: maps.__setitem__(str(i), o)) for i, m in enumerate(model)]
        try:
            with torch.no_grad():
                model(images)
        finally:
            for hk in hooks:
                hk.remove()
        for row in range(0, census.n_neurons, max(1, census.n_neurons // 3)):
            layer = census.layers[int(census.layer_index[row])].name
            out = maps[layer][:, int(census.channel[row])].double().numpy()
            centre = np.sort(out[:, 1:-1, 1:-1].ravel())
            for b, border in enumerate((out[:, 0, :], out[:, -1, :], out[:, :, 0], out[:, :, -1])):
                border = border.ravel()
                k = min(len(border), len(centre))
                assert census.ks[row, b] == pytest.approx(ks_2samp(border, centre).statistic, abs=1e-6)
                assert census.ks_plus[row, b] == pytest.approx(ks_2samp(border, centre[-k:], alternative="less").statistic, abs=1e-6)
                assert census.ks_minus[row, b] == pytest.approx(ks_2samp(border, centre[:k], alternative="greater").statistic, abs=1e-6)
    ctx = GateContext(model=model, images=images, input_size=(h, w), device="cpu", seed=0)
    try:
        result = no_uneven_padding_check(ctx)
    except PadbiasError as exc:
        assert str(exc)
    else:
        assert result.passed == (result.value == 0)


# a row of axis_read for the record
@fuzz(300)
@example(n=1, before=0, after=0, k=2, s=2, d=1, ceil=True)  # ceil_mode window longer than the input: was None ("too small")
@given(n=st.integers(1, 64), before=st.integers(0, 4), after=st.integers(0, 4), k=st.integers(1, 6), s=st.integers(1, 4),
       d=st.integers(1, 3), ceil=st.booleans())
def test_axis_read_agrees_with_pytorch_output_sizes(n, before, after, k, s, d, ceil):
    assume(not ceil or before == after)  # PyTorch pools take symmetric padding
    assume(2 * before <= k or not ceil)
    got = axis_read(n, before, after, k, s, d, ceil)
    x = torch.zeros(1, 1, 1, n)
    try:
        if ceil:
            y = nn.functional.max_pool2d(x, (1, k), (1, s), (0, before), (1, d), ceil_mode=True)
        else:
            y = nn.functional.conv2d(nn.functional.pad(x, (before, after)), torch.ones(1, 1, 1, k), stride=(1, s), dilation=(1, d))
    except RuntimeError:
        assert got is None or ceil
        return
    assert got is not None and got[0] == y.shape[-1]
