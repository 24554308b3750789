"""Mind the Pad (Alsallakh et al., ICLR 2021; shared/papers/001_0c67f33abde3bd60.txt and the
reproducibility report 000_873c4a5f441dd0f4.txt): its padding-geometry claims as tests on
the model of ``--padbias-model``. Each test records the paper's figure beside the measured one.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_padbias.geometry import even_sizes, foveation_map, nearest_even_sizes, trace_padding, uneven_layers
from pytest_padbias.result import CheckResult, GateContext
from pytest_padbias.uneven_padding import no_uneven_padding_check


def claim(name, passed, paper, measured, summary, source, figures=(), **details):
    return CheckResult(check=name, passed=bool(passed), value=float(measured) if isinstance(measured, (int, float)) else float(passed),
                       limit=None, details={"paper": paper, "measured": measured, "source": source, **details},
                       summary=summary, figures=list(figures))


def test_default_size_pads_unevenly(padbias_model, padbias_input_size, padbias_record):
    """Claim: at the usual 224x224 input, the strided layers of ResNet and MobileNet read
    padding on the top/left only (slides, 'uneven application of padding'; report Sec. 3)."""
    ctx = GateContext(model=padbias_model, images=None, input_size=padbias_input_size, device="cpu", seed=0)
    result = no_uneven_padding_check(ctx)
    uneven = result.details["uneven_layers"]
    padbias_record(claim(
        "claim: uneven padding at the default size", bool(uneven),
        paper="ResNet-50 and MobileNetV2 at 224x224: every stride-2 layer pads unevenly",
        measured=len(uneven), summary=f"{len(uneven)} uneven ops at {padbias_input_size[0]}x{padbias_input_size[1]}",
        source="Mind the Pad, slides: 'uneven padding'; Reproducibility report, Sec. 3",
        figures=result.figures, layers=[u["layer"] for u in uneven],
    ))
    assert uneven, f"no layer pads unevenly at {padbias_input_size}: the paper's claim does not apply to this model"


def test_suggested_size_pads_evenly(padbias_model, padbias_input_size, padbias_record):
    """Claim: a slightly larger input, 225 instead of 224 (2^d + 1 sizes; reading notes
    003), removes all uneven padding (slides, '224 vs 225')."""
    nearest = nearest_even_sizes(padbias_model, padbias_input_size)
    above = nearest["above"]
    assert above is not None, "no input size within 512 px above the default pads evenly"
    remaining = uneven_layers(padbias_model, above)
    at_above = no_uneven_padding_check(GateContext(model=padbias_model, images=None, input_size=tuple(above), device="cpu", seed=0))
    padbias_record(claim(
        "claim: the suggested size pads evenly", not remaining, paper="224 -> 225 for ResNet-50 and MobileNetV2",
        measured=f"{padbias_input_size[0]}x{padbias_input_size[1]} -> {above[0]}x{above[1]}",
        summary=f"nearest even size above the default: {above[0]}x{above[1]}", nearest=nearest,
        source="Mind the Pad, slides: ImageNet 224 vs 225 table", figures=at_above.figures,
    ))
    assert not remaining


def test_even_sizes_are_spaced_by_the_total_stride(padbias_model, padbias_record):
    """Claim: even sizes come every 2^d pixels, 2^d + 1 being the first (reading notes 003:
    'input sizes of the form 2^d + 1 avoid uneven padding')."""
    sizes = even_sizes(padbias_model, 32, 512)
    assert len(sizes) >= 2, f"fewer than two even sizes in 32..512: {sizes}"
    step = sizes[1] - sizes[0]
    regular = (step & (step - 1) == 0 and all(b - a == step for a, b in zip(sizes, sizes[1:]))
               and all((s - 1) % step == 0 for s in sizes))
    padbias_record(claim(
        "claim: even sizes every 2^d pixels", regular, figures=[_uneven_by_size_figure(padbias_model, 32, 512, sizes)],
        paper="sizes k * 2^d + 1 (e.g. 225 = 7 * 32 + 1 for 5 stride-2 layers)", measured=sizes[:8],
        summary=f"even sizes in 32..512, {step} apart: {sizes[:6]}...",
        source="Reading notes on Mind the Pad: 2^d + 1 sizes",
    ))
    assert regular, f"even sizes are not k * 2^d + 1 with one step: {sizes[:8]}"


def _uneven_by_size_figure(model, low, high, even):
    from pytest_padbias.figures import figure, to_png
    from pytest_padbias.result import Figure

    sizes = list(range(low, high + 1))
    counts = [len(uneven_layers(model, (s, s))) for s in sizes]
    fig, ax = figure(figsize=(7.0, 2.8))
    ax.plot(sizes, counts, lw=0.8, color="tab:red")
    ax.scatter(even, [0] * len(even), color="tab:green", zorder=3, s=14, label="pads evenly")
    ax.set_xlabel("input size (square, px)")
    ax.set_ylabel("uneven conv/pool ops")
    ax.legend(fontsize=8)
    return Figure(title=f"Uneven ops by input size, {low}..{high}: none only at the green sizes", png=to_png(fig))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(33, 400))
def test_replayed_sizes_match_a_fresh_trace(padbias_model, size):
    """Property: for every generated input size, the per-layer arithmetic replay equals a
    fresh meta-device trace of the model at that size."""
    from pytest_padbias.trace import trace_spatial_ops

    replay = [r.output_size for r in trace_padding(padbias_model, (size, size + 1))]
    fresh = [op.traced_out for op in trace_spatial_ops(padbias_model, (size, size + 1)).ops
             if op.op not in ("fixed", "opaque", "pad")]
    assert replay == fresh


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_layer_is_flagged_at_a_size_the_model_pads_evenly(padbias_model, data):
    """Property: for every generated height and width among the sizes the model pads evenly
    (listed by the fast stride arithmetic), the per-layer replay flags no layer; one pixel
    less brings uneven padding back unless that size is even too (report Sec. 3)."""
    sizes = even_sizes(padbias_model, 32, 1024)
    if not sizes:
        import pytest

        pytest.skip("no input size in 32..1024 pads evenly for this model")
    h, w = data.draw(st.sampled_from(sizes), label="height"), data.draw(st.sampled_from(sizes), label="width")
    assert not uneven_layers(padbias_model, (h, w))
    if h - 1 not in sizes and h - 1 >= 32:
        assert uneven_layers(padbias_model, (h - 1, w)), f"{h - 1}x{w} is not listed as even but no layer is flagged"


def test_zero_padding_marginalises_the_periphery(padbias_model, padbias_input_size, padbias_record):
    """Claim: zero padding mildly foveates: border pixels have fewer paths to the output
    than central ones (slides, 'mild foveation')."""
    from pytest_padbias.foveation import maps_figure

    counts, ratio = foveation_map(padbias_model, padbias_input_size)
    padbias_record(claim(
        "claim: foveation under zero padding", ratio < 1.0, paper="periphery used less than the centre",
        measured=round(ratio, 4), summary=f"periphery/centre path ratio {ratio:.3f}",
        source="Mind the Pad, slides: 'mild foveation'",
        figures=[maps_figure({"zero padding": counts}, f"Paths from each input pixel to the last feature map, "
                             f"{padbias_input_size[0]}x{padbias_input_size[1]}")],
    ))
    assert ratio < 1.0


def test_uneven_padding_skews_the_mean_filters_of_strided_layers(padbias_model, padbias_input_size, padbias_settings,
                                                                 padbias_record):
    """Claim: strided layers that pad unevenly learn mean kernels whose mass leans away from
    the padded side, while other layers stay nearly symmetric (slides, 'Uneven padding =>
    skewed filters', 'Padding Mode and Symmetry of Average Filter')."""
    import pytest

    from pytest_padbias.artifacts import kernel_skew, kernel_skew_figure, skew_summary

    if padbias_settings.weights == "none":
        pytest.skip("filters are skewed by training: this claim needs trained weights (--padbias-weights is none)")
    skews = kernel_skew(padbias_model, padbias_input_size)
    summary = skew_summary(skews)
    uneven, stride1 = summary["mean_score_uneven_strided"], summary["mean_score_stride_1"]
    if uneven is None or stride1 is None:
        pytest.skip(f"no strided layer pads unevenly at {padbias_input_size}, or no stride-1 layer to compare with")
    padbias_record(claim(
        "claim: uneven strided layers have skewed mean filters", uneven > stride1,
        paper="mean filters of uneven strided layers are asymmetric", measured=f"skew {uneven:.3f} vs {stride1:.3f} (stride 1)",
        summary=f"mean-kernel skew: {uneven:.3f} in uneven strided layers, {stride1:.3f} in stride-1 layers",
        source="Mind the Pad, slides: 'skewed filters'", figures=[kernel_skew_figure(skews)], **summary,
    ))
    assert uneven > stride1, f"uneven strided layers skew {uneven:.3f}, no more than stride-1 layers ({stride1:.3f})"


def _line_artifacts(model, input_size, mode, cache):
    """One line-artifact analysis per model, size and mode in a run (two tests read it)."""
    from pytest_padbias.artifacts import line_artifacts
    from pytest_padbias.result import cached_analysis

    return cached_analysis(cache, "line_artifacts", (model,), (tuple(input_size), mode),
                           lambda: line_artifacts(model, input_size, padding_mode=mode))


def _needs_trained_filters(settings):
    import pytest

    if settings.weights == "none":
        pytest.skip("line artifacts come from trained filters and biases; an untrained model without biases maps "
                    "a constant input to zero everywhere (--padbias-weights is none)")


def test_zero_padding_makes_line_artifacts_that_mirror_padding_reduces(padbias_model, padbias_input_size, padbias_settings,
                                                                       padbias_record, padbias_analysis_cache):
    """Claim: under zero padding the mean feature maps show lines along the borders, even for
    a constant input; mirror padding reduces them (slides, 'Feature maps under 0-padding /
    under mirror padding'; reading notes 003: from the second conv on)."""
    from pytest_padbias.artifacts import line_artifact_figure

    _needs_trained_filters(padbias_settings)
    zero = _line_artifacts(padbias_model, padbias_input_size, "zeros", padbias_analysis_cache)
    mirror = _line_artifacts(padbias_model, padbias_input_size, "reflect", padbias_analysis_cache)

    def mean_score(result):
        scores = [s for _layer, s in result.by_depth("zeros") if s is not None]
        return sum(scores) / len(scores)

    z, m = mean_score(zero), mean_score(mirror)
    padbias_record(claim(
        "claim: zero padding makes line artifacts, mirror reduces them", z > m,
        paper="border lines in mean feature maps under zero padding, far weaker under mirror padding",
        measured=f"mean artifact score on a constant input {z:.3f} (zeros) vs {m:.3f} (reflect)",
        summary=f"line-artifact score {z:.3f} under zero padding, {m:.3f} under reflect",
        source="Mind the Pad, slides: 'line artifacts'", figures=[line_artifact_figure([zero, mirror])],
    ))
    assert z > m


def test_line_artifacts_start_after_the_first_layer_and_grow_with_depth(padbias_model, padbias_input_size,
                                                                        padbias_settings, padbias_record,
                                                                        padbias_analysis_cache):
    """Claim: on a constant (zero) input the first conv's output has no border lines, the
    lines appear from the second conv on and are stronger in the deeper layers (reading
    notes 003, 'from the second conv on'; slides, 'Feature maps under 0-padding')."""
    from pytest_padbias.figures import figure, to_png
    from pytest_padbias.result import Figure

    _needs_trained_filters(padbias_settings)
    zero = _line_artifacts(padbias_model, padbias_input_size, "zeros", padbias_analysis_cache)
    by_depth = [(layer, s) for layer, s in zero.by_depth("zeros") if s is not None]
    scores = [s for _layer, s in by_depth]
    third = max(1, len(scores) // 3)
    first, shallow, deep = scores[0], sum(scores[:third]) / third, sum(scores[-third:]) / third
    passed = len(scores) >= 3 and first < 0.05 and max(scores[1:]) > 0.05 and deep > shallow
    fig, ax = figure(figsize=(6.4, 3.0))
    ax.plot(range(1, len(scores) + 1), scores, marker=".")
    ax.set_xlabel("conv layer (execution order)")
    ax.set_ylabel("border-line score, zero input")
    padbias_record(claim(
        "claim: line artifacts start after the first layer and grow with depth", passed,
        paper="lines appear from the second conv on and compound with depth",
        measured=f"first layer {first:.3f}; mean of the shallowest third {shallow:.3f}, deepest third {deep:.3f}",
        value=deep - shallow, source="Reading notes on Mind the Pad; Mind the Pad, slides: 'line artifacts'",
        summary=f"line-artifact score on a zero input: first conv {first:.3f}, shallow third {shallow:.3f}, deep third {deep:.3f}",
        figures=[Figure(title="Border-line score of each conv layer's mean feature map on a zero input", png=to_png(fig))],
        by_depth=[[layer, round(s, 4)] for layer, s in by_depth],
    ))
    assert passed, (f"line artifacts on a zero input: first layer {first:.3f} (claim: ~0), shallow third {shallow:.3f}, "
                    f"deep third {deep:.3f} (claim: deeper is stronger)")


def test_stimulus_detectability_varies_with_location(padbias_model, padbias_input_size, padbias_settings, padbias_record):
    """Claim: how well a small object is detected depends on where it is; near the borders
    it can fall to a blind spot (slides, 'blind spots'; report's SSD section)."""
    import pytest

    from pytest_padbias.blindspot_figures import detectability_figure
    from pytest_padbias.blindspots import detectability_map

    if padbias_settings.weights == "none":
        pytest.skip("detectability needs a trained model (--padbias-weights is none)")
    result = detectability_map(padbias_model, padbias_input_size, seed=padbias_settings.seed)
    ratio = result.min_median_ratio
    padbias_record(claim(
        "claim: detectability varies with location", ratio < 0.9,
        paper="blind spots near the borders (SSD: zero vs mirror padding AP 80.24% vs 83.20%)",
        measured=f"min/median detectability {ratio:.3f}, {len(result.regions)} region(s) below half the median",
        summary=f"min/median detectability {ratio:.3f}", source="Mind the Pad, slides; Reproducibility report, SSD section",
        figures=[detectability_figure([result])], regions=[r.to_json() for r in result.regions],
    ))
    assert ratio < 0.9, f"detectability is nearly uniform (min/median {ratio:.3f})"


def test_foveation_grows_with_depth(padbias_model, padbias_input_size, padbias_record):
    """Claim: the deeper the network, the more the periphery is marginalised: the
    periphery/centre path ratio up to each conv layer falls with depth (slides, "SAME
    0-padding mildly marginalizes the periphery: deeper CNN => more foveation")."""
    from scipy.stats import spearmanr

    from pytest_padbias.foveation import depth_figure, foveation_by_depth

    by_depth = foveation_by_depth(padbias_model, padbias_input_size)
    ratios = [r for _layer, r in by_depth]
    rho = float(spearmanr(range(len(ratios)), ratios).statistic) if len(ratios) > 2 else float("nan")
    passed = len(ratios) > 2 and ratios[-1] < ratios[0] and rho < -0.5
    padbias_record(claim(
        "claim: foveation grows with depth", passed,
        paper="deeper CNN => more foveation (VGG-19, 512x512 input space)",
        measured=f"periphery/centre {ratios[0]:.3f} after {by_depth[0][0]} -> {ratios[-1]:.3f} after {by_depth[-1][0]}; "
        f"Spearman rho(depth, ratio) = {rho:.2f}",
        value=ratios[-1], summary=f"periphery/centre path ratio falls from {ratios[0]:.3f} to {ratios[-1]:.3f} over "
        f"{len(ratios)} conv layers (rho {rho:.2f})", source="Mind the Pad, slides: 'Deeper CNN => more foveation'",
        figures=[depth_figure(by_depth, f"Periphery/centre path ratio after each conv layer, {padbias_input_size[0]}x{padbias_input_size[1]} input")],
        by_depth=[[layer, round(r, 4)] for layer, r in by_depth],
    ))
    assert passed, f"foveation does not grow with depth: ratio {ratios[0]:.3f} -> {ratios[-1]:.3f}, Spearman rho {rho:.2f}"


def _even_sizes_for_foveation(model):
    return [s for s in even_sizes(model, 64, 456)]


def test_smaller_inputs_are_marginalised_more(padbias_model, padbias_record, padbias_analysis_cache):
    """Claim: relative to the input size, boundary marginalisation is more extensive in
    smaller inputs: the fraction of pixels with fewer than half an interior pixel's paths
    falls as the input grows (slides, "computed for ResNet-50")."""
    from pytest_padbias.foveation import MARGINAL_FRACTION, size_figure

    sizes = _even_sizes_for_foveation(padbias_model)
    if len(sizes) < 3:
        sizes = [97, 161, 225, 321, 449]
    sizes = sizes[:: max(1, len(sizes) // 6)]
    fractions = {s: _marginalised(padbias_model, s, padbias_analysis_cache) for s in sizes}
    values = [fractions[s] for s in sizes]
    passed = all(a >= b for a, b in zip(values, values[1:])) and values[0] > values[-1]
    padbias_record(claim(
        "claim: smaller inputs are marginalised more", passed,
        paper="boundary marginalisation is more extensive in smaller inputs, relative to input size (ResNet-50)",
        measured={f"{s}x{s}": round(f, 3) for s, f in fractions.items()}, value=values[0] - values[-1],
        summary=f"pixels with < {MARGINAL_FRACTION:.0%} of interior paths: " + ", ".join(f"{s}px {f:.1%}" for s, f in fractions.items()),
        source="Mind the Pad, slides: 'Boundary marginalization is more extensive in smaller inputs'",
        figures=[size_figure(fractions, "Fraction of marginalised pixels by input size (sizes that pad evenly)")],
        note="sizes that pad evenly (k * 2^d + 1) are compared; between them uneven sizes marginalise more",
    ))
    assert passed, f"the marginalised fraction does not fall with input size: {fractions}"


def _marginalised(model, size, cache):
    """The marginalised fraction at one size, against the model's interior count; both are
    computed once per model in a run (three tests read them)."""
    from pytest_padbias.foveation import interior_count, marginalised_fraction
    from pytest_padbias.result import cached_analysis

    reference = cached_analysis(cache, "interior_count", (model,), (), lambda: interior_count(model))
    return cached_analysis(cache, "marginalised_fraction", (model,), (size,),
                           lambda: marginalised_fraction(model, [size], reference)[size])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_larger_even_size_is_never_marginalised_more(padbias_model, padbias_analysis_cache, data):
    """Property: for any two generated input sizes that pad evenly, the larger one has no
    larger fraction of marginalised pixels (slides, foveation by input size)."""
    sizes = _even_sizes_for_foveation(padbias_model)[:8]
    if len(sizes) < 2:
        import pytest

        pytest.skip("fewer than two sizes in 64..456 pad evenly for this model")
    small, large = sorted(data.draw(st.lists(st.sampled_from(sizes), min_size=2, max_size=2, unique=True)))
    assert (_marginalised(padbias_model, small, padbias_analysis_cache)
            >= _marginalised(padbias_model, large, padbias_analysis_cache)), (small, large)


def test_reflect_and_replicate_padding_also_foveate(padbias_model, padbias_input_size, padbias_record):
    """Claim: other padding schemes also make pixel usage depend on the distance to the
    border: replicate padding over-uses the outer line, reflect padding under-uses it and
    over-uses the next ones (slides' backup, "Other padding schemes can also incur
    foveation")."""
    from pytest_padbias.foveation import edge_usage, foveation_by_padding, maps_figure

    maps = foveation_by_padding(padbias_model, padbias_input_size)
    usage = {mode: edge_usage(counts) for mode, (counts, _ratio) in maps.items()}
    outer = {mode: u["outer line"] for mode, u in usage.items()}
    non_uniform = {mode: abs(outer[mode] - 1.0) > 0.1 for mode in ("reflect", "replicate")}
    passed = all(non_uniform.values())
    padbias_record(claim(
        "claim: reflect and replicate padding also foveate", passed,
        paper="replicate and mirror (reflect) padding also use border pixels unevenly",
        measured={mode: {k: round(v, 3) for k, v in u.items() if k in ("outer line", "second line")} for mode, u in usage.items()},
        value=max(abs(outer["reflect"] - 1), abs(outer["replicate"] - 1)),
        summary="outer-line use relative to the centre: " + ", ".join(f"{m} {v:.2f}" for m, v in outer.items()),
        source="Mind the Pad, slides: backup 'Other padding schemes can also incur foveation'",
        figures=[maps_figure({m: c for m, (c, _r) in maps.items()},
                             f"Paths from each input pixel by padding mode, {padbias_input_size[0]}x{padbias_input_size[1]}")],
        periphery_ratio={m: round(r, 4) for m, (_c, r) in maps.items()},
    ))
    assert passed, f"outer-line use under reflect/replicate is within 10% of the centre's: {outer}"


#: The slides' ImageNet table, "Symmetric filters => higher accuracy": top-1 (top-5) at
#: 224x224 (uneven padding) and 225x225 (even padding).
PAPER_IMAGENET = {
    "mobilenet_v2": {"224": (68.19, 88.44), "225": (68.80, 88.78)},
    "resnet18": {"224": (69.93, 89.22), "225": (70.27, 89.52)},
    "resnet34": {"224": (73.30, 91.42), "225": (73.72, 91.58)},
    "resnet50": {"224": (75.65, 92.47), "225": (76.01, 92.90)},
    "resnet101": {"224": (77.37, 93.56), "225": (77.67, 93.81)},
}


def test_even_padding_gives_higher_accuracy(padbias_model, padbias_loaded_model, padbias_input_size, padbias_settings,
                                            padbias_record):
    """Claim: symmetric (even) padding gives higher accuracy: the same ImageNet model scores
    better at 225x225 than at 224x224, e.g. ResNet-50 75.65 -> 76.01 top-1 (slides,
    "Symmetric filters => higher accuracy"; reading notes 003: about +0.4 on average).

    Needs labelled images (--padbias-dataset). The test fails when the even size is less
    accurate beyond two standard errors of the paired per-image difference; the summary
    says whether the gain itself is resolved on this many images."""
    import math

    import numpy as np
    import pytest

    from pytest_padbias.dataset import evaluate, labelled_folder

    if padbias_settings.dataset is None:
        pytest.skip("needs labelled images: --padbias-dataset PATH (an ImageFolder, e.g. ImageNet val); "
                    "the letters zoo's Table 1 test covers the claim without one")
    if padbias_settings.weights == "none":
        pytest.skip("accuracy needs trained weights (--padbias-weights is none)")
    loaded = padbias_loaded_model if padbias_loaded_model.module is padbias_model else None
    categories = loaded.categories if loaded else None
    mean, std = (loaded.mean, loaded.std) if loaded else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    folder = labelled_folder(padbias_settings.dataset, categories, limit=padbias_settings.dataset_limit,
                             seed=padbias_settings.seed)
    above = nearest_even_sizes(padbias_model, padbias_input_size)["above"]
    if not uneven_layers(padbias_model, padbias_input_size) or above is None:
        pytest.skip(f"the model already pads evenly at {padbias_input_size}, or no even size lies above it")
    sizes = {"default": tuple(padbias_input_size), "even": tuple(above)}
    results = {k: evaluate(padbias_model, folder, s, mean, std) for k, s in sizes.items()}
    n = len(folder.samples)
    acc = {k: (100 * float(t1.mean()), 100 * float(t5.mean())) for k, (t1, t5) in results.items()}
    paired = 100 * (results["even"][0].astype(float) - results["default"][0].astype(float))
    gain = float(paired.mean())
    se = float(paired.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    passed = gain + 2 * se >= 0
    resolved = gain - 2 * se > 0
    label = {k: f"{s[0]}x{s[1]}" for k, s in sizes.items()}
    name = padbias_settings.model.split(":")[-1]
    padbias_record(claim(
        "claim: even padding gives higher accuracy", passed,
        paper=PAPER_IMAGENET.get(name, PAPER_IMAGENET["resnet50"]) | {"model": name if name in PAPER_IMAGENET else "resnet50"},
        measured={label[k]: {"top1": round(a[0], 2), "top5": round(a[1], 2)} for k, a in acc.items()}
        | {"images": n, "top1 gain (points)": round(gain, 2)},
        value=gain, source="Mind the Pad, slides: ImageNet table 224 vs 225",
        summary=f"top-1 {acc['default'][0]:.2f}% at {label['default']} -> {acc['even'][0]:.2f}% at {label['even']} "
        f"({gain:+.2f} +- {2 * se:.2f} points, {n} images from {folder.root})" + ("" if resolved else "; gain not resolved"),
        figures=[_accuracy_figure(acc, label)],
        dataset=folder.root, matched_by=folder.matched_by, images=n, gain_resolved=resolved,
        top1_both_sizes=int(np.sum(results["even"][0] & results["default"][0])),
    ))
    assert passed, f"the even size {label['even']} is less accurate than {label['default']}: {gain:+.2f} +- {2 * se:.2f} points"


def _accuracy_figure(acc, label):
    from pytest_padbias.figures import figure, to_png
    from pytest_padbias.result import Figure

    fig, ax = figure(figsize=(5.0, 3.0))
    for i, (key, colour) in enumerate((("default", "tab:red"), ("even", "tab:green"))):
        ax.bar([i, i + 3], acc[key], color=colour, label=label[key])
        for x, v in zip((i, i + 3), acc[key]):
            ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks([0.5, 3.5], ["top-1", "top-5"])
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    return Figure(title="Accuracy at the default size and at the nearest size that pads evenly", png=to_png(fig))
