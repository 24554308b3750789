"""The PAN census (Padding Aware Neurons, shared/papers/002 §3), its gate and intervention.

Known answers come from hand-set kernels on hand-built images, where every activation
and so every KS statistic can be worked out on paper; scipy.stats.ks_2samp is the
reference for the statistics on a real network and on generated samples with ties.
"""
from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_padbias import pan_figures, pans_compiled, pans_counts, pans_maxima, pans_scan
from pytest_padbias.intervention import pan_reflect_experiment, random_control
from pytest_padbias.pan_gate import max_pans_arguments, max_pans_check
from pytest_padbias.pans import BORDERS, PAN_TYPES, ks_from_counts, pan_census
from pytest_padbias.result import GateContext, PadbiasError

SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]


def conv_with_kernels(kernels, bias=None) -> nn.Conv2d:
    """A 1-input-channel 3x3 conv (zero padding 1) whose output channel i has kernel i."""
    conv = nn.Conv2d(1, len(kernels), 3, padding=1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(kernels, dtype=torch.float32).unsqueeze(1))
        if bias is not None:
            conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return conv.eval()


def scipy_statistics(border, centre):
    """(KS, KS+, KS-) as the paper defines them, computed by a plain scipy call (method 'auto':
    exact lattice rounding up to 10000 values per sample, float ECDF differences above)."""
    centre = np.sort(centre)
    k = len(border)
    return (
        scipy.stats.ks_2samp(border, centre).statistic,
        scipy.stats.ks_2samp(border, centre[-k:], alternative="less").statistic,
        scipy.stats.ks_2samp(border, centre[:k], alternative="greater").statistic,
    )


def border_samples(out: np.ndarray):
    """Per channel: the four border samples and the centre, as the paper slices them."""
    return ([out[:, 0, :].ravel(), out[:, -1, :].ravel(), out[:, :, 0].ravel(), out[:, :, -1].ravel()],
            out[:, 1:-1, 1:-1].ravel())


def assert_matches_scipy(census, activations):
    """Every statistic of every neuron equal to scipy's, bit for bit."""
    differ = []
    for row in range(census.n_neurons):
        layer = census.layers[census.layer_index[row]].name
        borders, centre = border_samples(activations[layer][:, census.channel[row]])
        for b, border in enumerate(borders):
            mine = (census.ks[row, b], census.ks_plus[row, b], census.ks_minus[row, b])
            differ += [(layer, row, b, x, y) for x, y in zip(mine, scipy_statistics(border, centre)) if x != y]
    assert not differ, differ[:5]


KERNELS = ["compiled", "numpy"]


def kernel(name: str):
    """The census's counting kernel: the compiled one (numba) or the numpy fallback that
    runs where numba is missing. Both must give scipy's statistics."""
    if name == "compiled" and not pans_compiled.available():
        pytest.skip("numba is not installed")
    return mock.patch.object(pans_compiled, "available", lambda: name == "compiled")


def conv_outputs(model, images):
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, o.detach().numpy().copy()))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return outputs


# ------------------------------------------------------------------ known by construction


def test_hand_set_pan_kernels_on_flat_images_have_their_types():
    """On flat images only the padding makes borders differ, so each kernel's PAN type
    follows from where its weights meet the zeros (the paper's Figure 1 kernels)."""
    kernels = [
        [[0, 1, 0], [0, 0, 0], [0, 0, 0]],      # reads the pixel above: 0 on the top row only -> T
        [[-1, 1, 0], [-1, 1, 0], [-1, 1, 0]],   # left PAN: 3 on the left column, 0 elsewhere -> L
        [[-2, 1, 1], [-2, 1, 1], [-2, 1, 1]],   # Figure 1 left kernel: +6 left, -3 right -> LR
        [[1 / 9] * 3] * 3,                      # blur: every border sees zeros -> TBLR
        [[0, 0, 0]] * 3,                        # constant output (bias only) -> none
    ]
    conv = conv_with_kernels(kernels, bias=[0, 0, 0, 0, 0.5])
    census = pan_census(conv, torch.ones(2, 1, 16, 16))
    assert census.types(0.5) == ["T", "L", "LR", "TBLR", "none"]
    # T kernel: top row all 0 < centre all 1; the left column holds one 0 (the corner) in 16
    np.testing.assert_array_equal(census.ks[0], [1.0, 0.0, 1 / 16, 1 / 16])
    assert census.ks_minus[0, 0] == 1.0 and census.ks_plus[0, 0] == 0.0
    np.testing.assert_array_equal(census.ks[4], [0.0] * 4)
    np.testing.assert_array_equal(census.ks_plus[4] + census.ks_minus[4], [0.0] * 4)
    assert census.fraction(0.5) == 0.8
    assert census.type_counts(0.5) == {t: {"T": 1, "L": 1, "LR": 1, "TBLR": 1, "none": 1}.get(t, 0) for t in PAN_TYPES}


def test_sobel_edge_detector_is_flagged_by_full_ks_but_cleared_by_truncated_ks():
    """Images with a bright vertical band: the Sobel response is +-8 on interior edges and
    +-4 on the padded left/right columns. Against the whole centre (mostly 0) the left
    column looks distinct, KS = 6/7; against the k highest centre values (all 8) it does
    not, KS+ = 0 (the paper's Figure 5 argument), so it is no PAN."""
    image = torch.ones(16, 16)
    image[:, 6:10] = 3.0
    census = pan_census(conv_with_kernels([SOBEL_X]), image.expand(3, 1, 16, 16).contiguous())
    left, right = BORDERS.index("L"), BORDERS.index("R")
    assert census.ks[0, left] == census.ks[0, right] == 6 / 7
    assert census.ks_plus[0, left] == census.ks_minus[0, left] == 0.0
    assert census.ks_plus[0, right] == census.ks_minus[0, right] == 0.0
    assert census.ks[0, BORDERS.index("T")] == pytest.approx(1 / 7)
    assert census.types(0.5) == ["none"] and census.types(0.4) == ["none"]


# ------------------------------------------------------------------------- scipy equality


@pytest.mark.parametrize("counting", KERNELS)
def test_every_neuron_of_a_real_network_matches_scipy(counting):
    """torchvision's ResNet-18 (random init) up to layer1: 64 + 4*64 neurons on 20x20 and
    10x10 maps; every KS, KS+ and KS- against scipy.stats.ks_2samp."""
    torch.manual_seed(0)
    import torchvision

    net = torchvision.models.resnet18(num_classes=10).eval()
    model = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1).eval()
    images = torch.randn(2, 3, 40, 40)
    with kernel(counting):
        census = pan_census(model, images)
    assert census.n_neurons == 64 + 4 * 64
    assert_matches_scipy(census, conv_outputs(model, images))


@pytest.mark.parametrize("counting", KERNELS)
def test_every_neuron_matches_scipy_where_rounding_is_asymptotic(counting):
    """ResNet-18's stem on 3 images of 128x128: the 64x64 maps have 11532 centre values,
    above which ks_2samp rounds ECDF differences in float64 instead of its exact lattice
    (and the histogram has its most bins per channel). Every statistic equals scipy's."""
    torch.manual_seed(0)
    import torchvision

    net = torchvision.models.resnet18(num_classes=10).eval()
    model = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1).eval()
    images = torch.randn(3, 3, 128, 128)
    with kernel(counting):
        census = pan_census(model, images)
    assert census.layers[0].centre_count > 10000 and census.layers[0].out_size == (64, 64)
    assert_matches_scipy(census, conv_outputs(model, images))


@pytest.mark.parametrize("levels", [50, None])
@pytest.mark.parametrize("bins", [None, 2])
def test_bucket_counts_differ_from_the_full_counts_but_give_the_same_statistics(levels, bins):
    """Counts that no maximum depends on are left as bounds (so the histogram prunes), yet
    every statistic is the one of the full counts; with few levels, ties everywhere; with
    2 bins per channel, nearly everything is refined. Zeros (a bin of their own) included."""
    rng = np.random.default_rng(levels or 0)
    rows, m, sizes = 6, 40000, [400, 400, 300, 300]
    values = rng.integers(-levels // 2, levels // 2, (rows, m + sum(sizes))) if levels else rng.standard_normal((rows, m + sum(sizes)))
    values = values.astype(np.float32)
    values[:, m:m + 400] += 0.3  # one border shifted: a large KS somewhere
    values[:2, ::3] = 0.0
    centre = values[:, :m]
    queries = np.concatenate([np.sort(part, axis=1) for part in np.split(values[:, m:], np.cumsum(sizes)[:-1], axis=1)], axis=1)
    full = pans_counts.exact_counts(np.sort(centre, axis=1), queries)
    with mock.patch.multiple(pans_counts, MIN_BINS=bins or pans_counts.MIN_BINS, MAX_BINS=bins or pans_counts.MAX_BINS):
        bounded = pans_counts.bucket_counts(np.ascontiguousarray(centre), queries, sizes)
    if levels is None:  # (50 levels: the bounds, or the refinement, are exact everywhere)
        assert any((p != f).any() for p, f in zip(bounded, full))
    start = 0
    for size in sizes:
        seg = slice(start, start + size)
        for mine, ref in zip(ks_from_counts(bounded[0][:, seg], bounded[1][:, seg], size, m),
                             ks_from_counts(full[0][:, seg], full[1][:, seg], size, m)):
            np.testing.assert_array_equal(mine, ref)
        start += size


identity = nn.Conv2d(1, 1, 1, bias=False).eval()
with torch.no_grad():
    identity.weight.fill_(1.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 4), h=st.integers(3, 9), w=st.integers(3, 9), levels=st.integers(1, 6),
       scale=st.sampled_from([1.0, 1e-30, -2.5]), seed=st.integers(0, 2**16))
def test_generated_samples_with_ties_match_scipy(n, h, w, levels, scale, seed):
    """An identity 1x1 conv puts generated maps through the census unchanged; few levels
    make many ties between and within border and centre (k > centre size included). Both
    kernels, the numpy one on both of its paths, single pass and chunked."""
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy((rng.integers(0, levels, size=(n, 1, h, w)) * scale).astype(np.float32))
    maps[maps == 0] = -0.0 if seed % 2 else 0.0  # -0.0 and +0.0 are equal to scipy too
    census = pan_census(identity, maps, min_kernel=1)
    assert_matches_scipy(census, {"": maps.numpy()[:, 0][:, None]})
    others = [pan_census(identity, maps, min_kernel=1, chunk_size=1)]
    with mock.patch.object(pans_compiled, "available", lambda: False):
        others += [pan_census(identity, maps, min_kernel=1), pan_census(identity, maps, min_kernel=1, chunk_size=1)]
        # maps this small are sorted (as many border as centre values): force the histogram too
        with mock.patch.object(pans_scan, "SORT_FROM", float("inf")):
            others.append(pan_census(identity, maps, min_kernel=1))
            with mock.patch.multiple(pans_counts, MIN_BINS=1, MAX_BINS=1):  # one bin per channel: everything refined
                others.append(pan_census(identity, maps, min_kernel=1))
    for other in others:
        np.testing.assert_array_equal(other.ks, census.ks)
        np.testing.assert_array_equal(other.ks_plus, census.ks_plus)
        np.testing.assert_array_equal(other.ks_minus, census.ks_minus)


@pytest.mark.skipif(not pans_compiled.available(), reason="numba is not installed")
@settings(max_examples=150, deadline=None)
@given(n=st.sampled_from([1, 7, 500, 9999, 10000, 10001, 12000]), m=st.sampled_from([3, 800, 10000, 10001, 40000]),
       ties=st.booleans(), seed=st.integers(0, 2**16))
def test_compiled_statistics_round_as_ks_from_counts_in_every_regime(n, m, ties, seed):
    """The kernel's statistics from given counts equal ``ks_from_counts``' (so scipy's)
    bit for bit in each of ks_2samp's regimes: both samples at most 10000 (lattice), a
    larger centre (KS in floats, KS+/KS- still on the lattice: they compare the border
    with the k = min(n, m) extreme centre values), a larger border (all in floats)."""
    rng = np.random.default_rng(seed)
    lt = np.sort(rng.integers(0, m + 1, n))
    le = np.minimum(lt + (rng.integers(0, 3, n) if ties else 0), m)
    le = np.maximum.accumulate(le)
    stats = np.empty((3, 1, 1))
    pans_maxima.hit_statistics(lt, le, np.arange(n), np.array([n]), m, pans_counts.AUTO_EXACT_MAX, stats, 0)
    for mine, ref in zip(stats[:, 0, 0], ks_from_counts(lt[None], le[None], n, m)):
        assert mine == ref[0], (mine, ref[0])


def _runs(out):
    """The four borders of every channel of ``out`` [N, C, H, W], each sorted, side by side."""
    n, c, h, w = out.shape
    sides = (out[:, :, 0, :], out[:, :, h - 1, :], out[:, :, :, 0], out[:, :, :, w - 1])
    runs = [np.sort(np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(c, -1), axis=1) for b in sides]
    return np.concatenate(runs, axis=1), [r.shape[1] for r in runs]


@pytest.mark.skipif(not pans_compiled.available(), reason="numba is not installed")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 4), c=st.integers(1, 4), h=st.integers(3, 24), w=st.integers(3, 24),
       kind=st.sampled_from(["normal", "relu", "levels", "heavy tails", "tiny", "dead", "pan"]),
       bins=st.sampled_from([None, 16]), seed=st.integers(0, 2**16))
def test_compiled_counts_are_exact_where_a_maximum_can_be(n, c, h, w, kind, bins, seed):
    """The compiled kernel's counts: with ``exact`` equal to the sorted-centre counts
    everywhere; otherwise bounds (lt never above, le never below the true counts) that
    give the same statistics. Distributions that crowd its bins (heavy tails, values of
    many magnitudes near 0, a dead channel, 16 bins for everything) included."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, c, h, w)).astype(np.float32)
    out = {"normal": out, "relu": np.maximum(out, 0), "levels": np.round(out * 2) / 2, "heavy tails": np.exp(4 * out),
           "tiny": np.where(out > 0, out * 1e-30, out), "dead": out * 0, "pan": out + 3 * (np.arange(h) == 0)[:, None]}[kind]
    out = np.ascontiguousarray(np.where(rng.random(out.shape) < 0.1, -0.0, out), dtype=np.float32)
    queries, sizes = _runs(out)
    m = n * (h - 2) * (w - 2)
    centre = np.sort(np.ascontiguousarray(out[:, :, 1:-1, 1:-1].transpose(1, 0, 2, 3)).reshape(c, -1), axis=1)
    lt, le = pans_counts.exact_counts(centre, queries)
    with mock.patch.object(pans_compiled, "MAX_BINS", bins or pans_compiled.MAX_BINS):
        exact = pans_compiled.compiled_counts(out, 0, c, queries, sizes, exact=True)
        bounded = pans_compiled.compiled_counts(out, 0, c, queries, sizes)
    np.testing.assert_array_equal(exact[0], lt)
    np.testing.assert_array_equal(exact[1], le)
    assert (bounded[0] <= lt).all() and (bounded[1] >= le).all()
    start = 0
    for size in sizes:
        seg = slice(start, start + size)
        for mine, ref in zip(ks_from_counts(bounded[0][:, seg], bounded[1][:, seg], size, m),
                             ks_from_counts(lt[:, seg], le[:, seg], size, m)):
            np.testing.assert_array_equal(mine, ref)
        start += size


@pytest.mark.parametrize("counting", KERNELS)
def test_chunked_census_is_identical_on_a_real_network(counting):
    """The chunked mode counts everything exactly; the single pass only where a maximum
    can be; the statistics are the same."""
    torch.manual_seed(1)
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(3, 3, 96, 96)
    with kernel(counting):
        whole, chunked = pan_census(model, images), pan_census(model, images, chunk_size=2)
    for name in ("ks", "ks_plus", "ks_minus"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))


@pytest.mark.parametrize("counting", KERNELS)
def test_chunked_census_matches_scipy_on_every_neuron_of_a_real_network(counting):
    """The chunked mode (what --padbias-max-memory picks when a batch does not fit) sums
    each chunk's exact counts: every statistic equals scipy's on the whole batch, with
    chunks of unequal size (3 + 2 images) and in ks_2samp's exact and asymptotic regimes."""
    torch.manual_seed(2)
    import torchvision

    net = torchvision.models.resnet18(num_classes=10).eval()
    model = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1).eval()
    images = torch.randn(5, 3, 96, 96)
    with kernel(counting):
        census = pan_census(model, images, chunk_size=3)
    assert census.layers[0].centre_count > 10000 > census.layers[1].centre_count
    assert_matches_scipy(census, conv_outputs(model, images))


def test_exact_mode_statistics_equal_the_general_formula():
    """``ks_from_counts``' exact-mode shortcut gives the floats of the general ``_sup`` path."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, m = int(rng.integers(1, 300)), int(rng.integers(1, 2000))
        lt = np.sort(rng.integers(0, m + 1, (4, n)), axis=1)
        le = np.maximum.accumulate(np.minimum(lt + rng.integers(0, 3, (4, n)), m), axis=1)
        j, k = np.arange(1, n + 1), min(n, m)
        general = (np.maximum(pans_counts._sup(j, n, le, m), pans_counts._sup(lt, m, j - 1, n)),
                   pans_counts._sup(np.maximum(lt - (m - k), 0), k, j - 1, n), pans_counts._sup(j, n, np.minimum(le, k), k))
        for mine, ref in zip(ks_from_counts(lt, le, n, m), general):
            np.testing.assert_array_equal(mine, ref)


# --------------------------------------------------------------------------- records, json


def test_records_tables_and_json_are_plain():
    conv = conv_with_kernels([[[0, 1, 0], [0, 0, 0], [0, 0, 0]], [[0, 0, 0]] * 3], bias=[0, 1])
    census = pan_census(conv, torch.ones(2, 1, 8, 8), theta=[0.5, 0.4])
    assert census.thetas == (0.4, 0.5)
    report = json.loads(json.dumps(census.to_json("all")))
    assert report["by_theta"]["0.5"]["fraction"] == 0.5
    assert report["by_theta"]["0.5"]["layer_counts"] == [
        {"layer": "", "channels": 2, "pans": 1, "percent": 50.0, "types": {"T": 1}}]
    assert report["neurons"][0]["type"] == {"0.4": "T", "0.5": "T"} and report["neurons"][1]["type"]["0.5"] == "none"
    assert census.top_pans(0.5)[0]["channel"] == 0 and census.top_pans(0.5)[0]["score"] == 1.0
    assert report["layers"][0]["border_counts"] == [16, 16, 16, 16] and report["layers"][0]["centre_count"] == 72


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("images, match", [
    (torch.ones(1, 1, 8, 8), "at least 2 images"),
    (torch.ones(2, 8, 8), "float tensor"),
    (torch.ones(2, 3, 8, 8), "3 channels"),
    (torch.ones(2, 1, 8, 8, dtype=torch.int64), "float tensor"),
])
def test_bad_images_are_refused(images, match):
    with pytest.raises(PadbiasError, match=match):
        pan_census(conv_with_kernels([SOBEL_X]), images)


@pytest.mark.parametrize("kwargs, match", [
    ({"theta": 0.0}, "theta"), ({"theta": 1.5}, "theta"), ({"theta": "0.5"}, "theta"),
    ({"min_kernel": 0}, "min_kernel"), ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(PadbiasError, match=match):
        pan_census(conv_with_kernels([SOBEL_X]), torch.ones(2, 1, 8, 8), **kwargs)


def test_model_without_eligible_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(128, 2))
    with pytest.raises(PadbiasError, match="no Conv2d layer with a kernel of at least 2"):
        pan_census(model, torch.ones(2, 1, 8, 8))
    ctx = GateContext(model=model, images=torch.ones(2, 1, 8, 8), input_size=(8, 8), device="cpu", seed=0)
    with pytest.raises(PadbiasError, match="no Conv2d layer"):
        max_pans_check(ctx, 0.5)


def test_maps_too_small_and_nan_activations_are_refused():
    with pytest.raises(PadbiasError, match="at least 3x3"):
        pan_census(conv_with_kernels([SOBEL_X]), torch.ones(2, 1, 2, 2))
    with pytest.raises(PadbiasError, match="NaN or infinite"):
        pan_census(conv_with_kernels([SOBEL_X]), torch.full((2, 1, 8, 8), float("nan")))


def test_layer_run_twice_is_refused():
    conv = conv_with_kernels([SOBEL_X])
    with pytest.raises(PadbiasError, match="more than once"):
        pan_census(nn.Sequential(conv, conv), torch.ones(2, 1, 8, 8))


# ------------------------------------------------------------------------------ the gate


@pytest.mark.parametrize("fraction, theta, match", [
    (-0.1, 0.5, "fraction"), (1.5, 0.5, "fraction"), ("1%", 0.5, "fraction"), (True, 0.5, "fraction"),
    (float("nan"), 0.5, "fraction"), (0.1, 0.0, "theta"), (0.1, 1.01, "theta"), (0.1, None, "theta"),
])
def test_gate_arguments_are_validated(fraction, theta, match):
    with pytest.raises(PadbiasError, match=match):
        max_pans_arguments(fraction, theta)


def test_gate_arguments_are_normalised():
    assert max_pans_arguments(0, 1) == {"fraction": 0.0, "theta": 1.0}


def test_gate_passes_at_the_measured_fraction_and_fails_below_it():
    conv = conv_with_kernels([[[0, 1, 0], [0, 0, 0], [0, 0, 0]], [[-1, 1, 0]] * 3, [[0, 0, 0]] * 3, [[0, 0, 0]] * 3],
                             bias=[0, 0, 1, 2])
    model = nn.Sequential(conv).eval()
    ctx = GateContext(model=model, images=torch.ones(2, 1, 12, 12), input_size=(12, 12), device="cpu", seed=0)
    passed = max_pans_check(ctx, 0.5)
    assert passed.passed and passed.value == 0.5 and passed.limit == 0.5 and passed.message == ""
    failed = max_pans_check(ctx, 0.25)
    assert not failed.passed and failed.value == 0.5
    assert "0: 2 of 4 (" in failed.message and "T x1" in failed.message and "L x1" in failed.message
    assert failed.summary.startswith("2 of 4 neurons are PANs")
    report = json.loads(json.dumps(failed.to_json()))
    assert report["details"]["layer_counts"][0]["pans"] == 2
    assert [p["channel"] for p in report["details"]["top_pans"]] == [0, 1]
    assert len(failed.figures) == 2 and all(f.png.startswith(b"\x89PNG") for f in failed.figures)


# ------------------------------------------------------------------------ figures, §4


def test_figures_are_pngs_with_titles():
    conv = conv_with_kernels([[[0, 1, 0], [0, 0, 0], [0, 0, 0]], SOBEL_X])
    images = torch.ones(2, 1, 16, 16)
    images[:, :, :, 6:10] = 3.0  # the band that keeps the Sobel channel from being a PAN
    census = pan_census(conv, images)
    figures = [pan_figures.layer_bar_figure(census), pan_figures.type_table_figure(census),
               *pan_figures.strongest_pan_figures(conv, images, census, 0.5, n=3)]
    assert len(figures) == 3  # one PAN only
    assert all(f.png.startswith(b"\x89PNG") and f.title for f in figures)
    assert "channel 0: PAN type T" in figures[-1].title


def small_classifier():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_intervention_reports_odds_agreement_and_restores_the_model():
    model = small_classifier()
    images = torch.rand(6, 3, 1, 1) + 0.05 * torch.rand(6, 3, 12, 12)  # nearly flat: the padding stands out
    with torch.no_grad():
        before = model(images)
    census = pan_census(model, images)
    result = json.loads(json.dumps(pan_reflect_experiment(model, images, census, theta=0.4, seed=3)))
    with torch.no_grad():
        assert torch.equal(model(images), before)
    assert result["switched_neurons"]["pan"] == int(census.is_pan(0.4).sum()) > 0
    for name, chosen in result["random_channels"].items():
        pans = result["pan_channels"][name]
        assert len(chosen) == min(len(pans), 8 - len(pans))  # as many as the layer's non-PANs allow
        assert not set(chosen) & set(pans)
    for variant in ("pan_reflect", "random_reflect", "all_reflect"):
        assert 0.0 <= result[variant]["top1_agreement"] <= 1.0
        assert len(result[variant]["largest_logit_change"]) == 6
    assert random_control(census, result["pan_channels"], seed=3) == result["random_channels"]


def test_intervention_refuses_a_non_classifier_and_bad_mode():
    conv = conv_with_kernels([[[0, 1, 0], [0, 0, 0], [0, 0, 0]]])
    images = torch.ones(2, 1, 8, 8)
    census = pan_census(conv, images)
    with pytest.raises(PadbiasError, match="logits"):
        pan_reflect_experiment(conv, images, census)
    with pytest.raises(PadbiasError, match="reflect, replicate, circular"):
        pan_reflect_experiment(conv, images, census, mode="zeros")


def test_shared_census_is_computed_once_per_model_and_images():
    import torch

    from pytest_padbias.pan_gate import shared_census

    torch.manual_seed(0)
    calls = []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    model[0].register_forward_hook(lambda *a: calls.append(1))
    images = torch.rand(3, 3, 12, 12)
    cache = {}
    first = shared_census(model, images, (0.5, 0.4), None, cache)
    assert shared_census(model, images, [0.4, 0.5], None, cache) is first and len(calls) == 1
    assert shared_census(model, images.clone(), (0.4, 0.5), None, cache) is not first  # other images
    assert shared_census(model, images, (0.5,), None, cache) is not first  # other thresholds
    assert shared_census(model, images, (0.4, 0.5), None, None) is not first  # no cache: afresh
    assert len(calls) == 4
