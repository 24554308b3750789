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
        source="Mind the Pad slides (001), 'uneven padding'; report (000) Sec. 3",
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
    padbias_record(claim(
        "claim: the suggested size pads evenly", not remaining, paper="224 -> 225 for ResNet-50 and MobileNetV2",
        measured=f"{padbias_input_size[0]}x{padbias_input_size[1]} -> {above[0]}x{above[1]}",
        summary=f"nearest even size above the default: {above[0]}x{above[1]}", nearest=nearest,
        source="Mind the Pad slides (001), ImageNet 224 vs 225 table",
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
        "claim: even sizes every 2^d pixels", regular,
        paper="sizes k * 2^d + 1 (e.g. 225 = 7 * 32 + 1 for 5 stride-2 layers)", measured=sizes[:8],
        summary=f"even sizes in 32..512, {step} apart: {sizes[:6]}...",
        source="reading notes (003): 2^d + 1 sizes",
    ))
    assert regular, f"even sizes are not k * 2^d + 1 with one step: {sizes[:8]}"


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


def test_zero_padding_marginalises_the_periphery(padbias_model, padbias_input_size, padbias_record):
    """Claim: zero padding mildly foveates: border pixels have fewer paths to the output
    than central ones (slides, 'mild foveation')."""
    counts, ratio = foveation_map(padbias_model, padbias_input_size)
    padbias_record(claim(
        "claim: foveation under zero padding", ratio < 1.0, paper="periphery used less than the centre",
        measured=round(ratio, 4), summary=f"periphery/centre path ratio {ratio:.3f}",
        source="Mind the Pad slides (001), 'mild foveation'",
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
        source="Mind the Pad slides (001), 'skewed filters'", figures=[kernel_skew_figure(skews)], **summary,
    ))
    assert uneven > stride1, f"uneven strided layers skew {uneven:.3f}, no more than stride-1 layers ({stride1:.3f})"


def test_zero_padding_makes_line_artifacts_that_mirror_padding_reduces(padbias_model, padbias_input_size, padbias_record):
    """Claim: under zero padding the mean feature maps show lines along the borders, even for
    a constant input; mirror padding reduces them (slides, 'Feature maps under 0-padding /
    under mirror padding'; reading notes 003: from the second conv on)."""
    from pytest_padbias.artifacts import line_artifact_figure, line_artifacts

    zero = line_artifacts(padbias_model, padbias_input_size)
    mirror = line_artifacts(padbias_model, padbias_input_size, padding_mode="reflect")

    def mean_score(result):
        scores = [s for _layer, s in result.by_depth("zeros") if s is not None]
        return sum(scores) / len(scores)

    z, m = mean_score(zero), mean_score(mirror)
    padbias_record(claim(
        "claim: zero padding makes line artifacts, mirror reduces them", z > m,
        paper="border lines in mean feature maps under zero padding, far weaker under mirror padding",
        measured=f"mean artifact score on a constant input {z:.3f} (zeros) vs {m:.3f} (reflect)",
        summary=f"line-artifact score {z:.3f} under zero padding, {m:.3f} under reflect",
        source="Mind the Pad slides (001), 'line artifacts'", figures=[line_artifact_figure([zero, mirror])],
    ))
    assert z > m


def test_stimulus_detectability_varies_with_location(padbias_model, padbias_input_size, padbias_settings, padbias_record):
    """Claim: how well a small object is detected depends on where it is; near the borders
    it can fall to a blind spot (slides, 'blind spots'; report's SSD section)."""
    import pytest

    from pytest_padbias.blindspots import detectability_figure, detectability_map

    if padbias_settings.weights == "none":
        pytest.skip("detectability needs a trained model (--padbias-weights is none)")
    result = detectability_map(padbias_model, padbias_input_size, seed=padbias_settings.seed)
    ratio = result.min_median_ratio
    padbias_record(claim(
        "claim: detectability varies with location", ratio < 0.9,
        paper="blind spots near the borders (SSD: zero vs mirror padding AP 80.24% vs 83.20%)",
        measured=f"min/median detectability {ratio:.3f}, {len(result.regions)} region(s) below half the median",
        summary=f"min/median detectability {ratio:.3f}", source="Mind the Pad slides (001); report (000) SSD section",
        figures=[detectability_figure([result])], regions=[r.to_json() for r in result.regions],
    ))
    assert ratio < 0.9, f"detectability is nearly uniform (min/median {ratio:.3f})"
