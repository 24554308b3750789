"""Padding Aware Neurons (shared/papers/002_04f7fbebcc15f157.txt): the claims as tests on the
model of ``--padbias-model`` with its trained weights.
"""
import pytest

from pytest_padbias import padbias
from pytest_padbias.result import CheckResult


@pytest.fixture
def trained_only(padbias_settings):
    if padbias_settings.weights == "none":
        pytest.skip("PANs are learnt: this claim needs trained weights (--padbias-weights is none)")


@pytest.fixture
def census(trained_only, padbias_model, padbias_images, padbias_settings, padbias_analysis_cache):
    """The run's census of the model on padbias_images at theta 0.4 and 0.5, shared with the
    max_pans gate (the slowest step here), in chunks that fit --padbias-max-memory."""
    import torch

    from pytest_padbias.pan_gate import shared_census
    from pytest_padbias.resources import census_chunk_size, memory_budget

    budget = memory_budget(padbias_settings.max_memory)
    chunk = census_chunk_size(padbias_model, padbias_images, budget, workers=torch.get_num_threads())
    return shared_census(padbias_model, padbias_images, (0.4, 0.5), chunk, padbias_analysis_cache)


def _bars(title, labels, values, ylabel):
    """A small bar chart for a claim's HTML row."""
    from pytest_padbias.figures import figure, to_png
    from pytest_padbias.result import Figure

    fig, ax = figure(figsize=(6.4, 3.0))
    bars = ax.bar(range(len(labels)), values, color="tab:purple")
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    return Figure(title=title, png=to_png(fig))


@padbias.max_pans(0.05)
def test_pans_are_a_small_fraction_of_the_filters(trained_only, padbias_model):
    """Claim: PANs are roughly 1.5-3% of the conv filters with kernels larger than 1x1
    (Sec. 3.2, Table 1: 'about 2% of all convolutional filters'); the gate holds the
    model to at most 5%."""


def test_pans_exist(census, padbias_record):
    """Claim: pretrained CNNs contain dozens of PANs (Sec. 3.2: 'dozens of PANs per model',
    ResNet-50: 81 at theta 0.5)."""
    from pytest_padbias.pan_figures import layer_bar_figure

    count = int(census.is_pan(0.5).sum())
    fraction = census.fraction(0.5)
    padbias_record(CheckResult(
        "claim: PANs exist", passed=count > 0, value=count, limit=None,
        details={"paper": "ResNet-50: 81 PANs (theta 0.5), about 2% of filters", "measured": f"{count} PANs ({fraction:.2%})",
                 "source": "Padding Aware Neurons, Table 1", "of": census.n_neurons, "type_counts": census.type_counts(0.5)},
        summary=f"{count} of {census.n_neurons} neurons are PANs at theta 0.5 ({fraction:.2%})",
        figures=[layer_bar_figure(census, 0.5)]))
    assert count > 0, f"no PAN among {census.n_neurons} neurons at theta 0.5"


def test_a_lower_threshold_finds_more_pans(census, padbias_record):
    """Claim: weakening the threshold from 0.5 to 0.4 easily doubles the PANs (Sec. 3.2:
    ResNet-50 has 193 PANs at theta 0.4 against 81 at 0.5)."""
    strict, loose = int(census.is_pan(0.5).sum()), int(census.is_pan(0.4).sum())
    ratio = loose / strict if strict else float("inf")
    padbias_record(CheckResult(
        "claim: theta 0.4 finds more PANs", passed=loose > strict, value=loose, limit=None,
        details={"paper": "81 -> 193 (x2.4) for ResNet-50", "measured": f"{strict} -> {loose} (x{ratio:.2f})",
                 "source": "Padding Aware Neurons, Sec. 3.2"},
        summary=f"{strict} PANs at theta 0.5, {loose} at theta 0.4",
        figures=[_bars("PANs at each KS threshold", ["theta 0.5", "theta 0.4"], [strict, loose], "PANs")]))
    assert loose > strict, f"theta 0.4 finds {loose} PANs, theta 0.5 {strict}: no more"


def test_reflect_padding_on_pans_moves_outputs_more_than_on_random_neurons(census, padbias_model, padbias_images,
                                                                           padbias_settings, padbias_record):
    """Claim: switching only the PANs to reflect padding changes the model's outputs more
    than switching an equally sized, equally distributed random set of neurons (Sec. 4,
    PAN-reflect vs RAND-reflect, Eq. 1)."""
    from pytest_padbias.intervention import pan_reflect_experiment

    if not census.is_pan(0.5).any():
        pytest.skip("the model has no PAN at theta 0.5 to switch")
    from pytest_padbias.resources import memory_budget

    result = pan_reflect_experiment(padbias_model, padbias_images, census, theta=0.5, seed=padbias_settings.seed,
                                    budget=memory_budget(padbias_settings.max_memory))
    pan, rand = result["pan_reflect"], result["random_reflect"]
    padbias_record(CheckResult(
        "claim: PAN-reflect > RAND-reflect", passed=pan["mean_manhattan"] > rand["mean_manhattan"],
        value=pan["mean_manhattan"], limit=rand["mean_manhattan"],
        details={"paper": "PAN-reflect shifts class odds and logits more than RAND-reflect",
                 "measured": f"mean logit L1 change {pan['mean_manhattan']:.3f} vs {rand['mean_manhattan']:.3f}; "
                             f"top-1 agreement {pan['top1_agreement']:.3f} vs {rand['top1_agreement']:.3f}",
                 "source": "Padding Aware Neurons, Sec. 4", "switched": result["switched_neurons"],
                 "log_odds_std": {"pan": pan["log_odds"]["std"], "random": rand["log_odds"]["std"],
                                  "all": result["all_reflect"]["log_odds"]["std"]}},
        summary=f"{result['switched_neurons']['pan']} neurons switched: logit change {pan['mean_manhattan']:.3f} "
                f"(PANs) vs {rand['mean_manhattan']:.3f} (random)",
        figures=[_bars("Mean L1 change of the logits when the padding of these neurons becomes reflect",
                       ["PAN-reflect", "RAND-reflect"], [pan["mean_manhattan"], rand["mean_manhattan"]], "mean |logit change| (L1)")]))
    assert pan["mean_manhattan"] > rand["mean_manhattan"], (
        f"switching the PANs changed the logits by {pan['mean_manhattan']:.3f} on average, "
        f"no more than random neurons ({rand['mean_manhattan']:.3f})")


def test_single_border_pans_dominate(census, padbias_record):
    """Claim: single-border detectors (T, B, L, R) are the most frequent PAN types, about
    75% of all PANs (Sec. 3.3, Table 2)."""
    from pytest_padbias.pan_figures import type_table_figure

    types = census.type_counts(0.5)
    pans = sum(v for k, v in types.items() if k != "none")
    if not pans:
        pytest.skip("the model has no PAN at theta 0.5")
    single = sum(types[k] for k in ("T", "B", "L", "R"))
    share = single / pans
    most = max((k for k in types if k != "none"), key=types.get)
    passed = share > 0.5 and len(most) == 1
    padbias_record(CheckResult(
        "claim: single-border PANs dominate", passed=passed, value=share, limit=0.5,
        details={"paper": "about 75% of PANs detect one border (T, B, L or R)",
                 "measured": f"{single} of {pans} PANs ({share:.0%}) detect one border; most frequent type {most}",
                 "source": "Padding Aware Neurons, Sec. 3.3, Table 2", "type_counts": types},
        summary=f"{share:.0%} of {pans} PANs are single-border (paper about 75%)",
        figures=[type_table_figure(census, (0.5,))]))
    assert passed, f"single-border PANs are {share:.0%} of {pans} and the most frequent type is {most}: {types}"


def test_a_pan_stops_detecting_the_border_under_reflect_padding(census, padbias_model, padbias_images, padbias_record):
    """Claim: when a PAN's padding becomes reflect, it no longer separates border from
    centre: its border activations align with the rest (Sec. 3.3, Figure 7, middle)."""
    import numpy as np

    from pytest_padbias.padding import restore_padding, switch_padding
    from pytest_padbias.pans import pan_census

    pan = census.is_pan(0.5)
    if not pan.any():
        pytest.skip("the model has no PAN at theta 0.5")
    previous = switch_padding(padbias_model, "reflect")
    try:
        reflected = pan_census(padbias_model, padbias_images, theta=(0.5,))
    finally:
        restore_padding(padbias_model, previous)
    still = float(reflected.is_pan(0.5)[pan].mean())
    before = float(census.border_scores().max(axis=1)[pan].mean())
    after = float(reflected.border_scores().max(axis=1)[pan].mean())
    passed = still < 0.1 and after < 0.5 * before
    padbias_record(CheckResult(
        "claim: reflect padding silences PANs", passed=passed, value=still, limit=0.1,
        details={"paper": "under reflect padding the neuron no longer detects padding",
                 "measured": f"{still:.1%} of {int(pan.sum())} PANs still PANs; border score {before:.3f} -> {after:.3f}",
                 "source": "Padding Aware Neurons, Sec. 3.3, Figure 7", "pans_under_reflect": int(reflected.is_pan(0.5).sum()),
                 "score_before": round(before, 4), "score_after": round(after, 4),
                 "per_neuron_after": np.round(reflected.border_scores().max(axis=1)[pan], 3).tolist()[:50]},
        summary=f"with every conv reflect-padded, {still:.1%} of the PANs remain PANs (mean border score {before:.2f} -> {after:.2f})",
        figures=[_bars("Mean border score of the PANs, zero vs reflect padding (PAN when >= 0.5)",
                       ["zero padding", "reflect padding"], [before, after], "min(KS, max(KS+, KS-))")]))
    assert passed, (f"{still:.1%} of the PANs still detect the border under reflect padding "
                    f"(mean score {before:.3f} -> {after:.3f})")


def test_models_trained_with_reflect_or_circular_padding_have_fewer_pans(letters_zoo, padbias_record):
    """Claim: PANs come from static zero padding: models trained with reflect, replicate or
    circular padding have far fewer than zero-padded ones (Padding Aware Neurons, Sec. 5
    discussion; measured on the letters zoo, every mode trained with the same data and seeds).

    Decided per seed on how many fewer PANs the mode with the most PANs after zeros has
    than the zero-padded model, relative to the zero-padded count: reproduced when the
    interval lies above 0, contradicted when it lies below one half ("far fewer")."""
    import numpy as np

    from pytest_padbias.padding import PADDING_MODES
    from pytest_padbias.pans import pan_census
    from pytest_padbias.verdicts import decide_directional, record_verdict

    z = letters_zoo
    images, _labels = z.test(29, 260)
    counts = {mode: [int(pan_census(z.model(29, mode, s), images, theta=(0.5,)).is_pan(0.5).sum()) for s in z.seeds]
              for mode in PADDING_MODES}
    neurons = pan_census(z.model(29, "zeros", z.seeds[0]), images[:8], theta=(0.5,)).n_neurons
    others = [m for m in PADDING_MODES if m != "zeros"]
    units = [(counts["zeros"][i] - max(counts[m][i] for m in others)) / max(1, counts["zeros"][i]) for i in range(len(z.seeds))]
    decision = decide_directional(units, minimal=0.5, what="per-seed relative reductions")
    mean = {m: float(np.mean(c)) for m, c in counts.items()}
    result = padbias_record(CheckResult(
        "claim: non-zero padding trains fewer PANs", passed=decision.verdict == "reproduced", value=mean["zeros"],
        limit=max(mean[m] for m in others),
        details={"paper": "PANs arise from static (zero) padding; other padding policies avoid them",
                 "measured": "PANs at theta 0.5 per model: " + ", ".join(f"{m} {v:.1f}" for m, v in mean.items()),
                 "per_seed": counts, "neurons_per_model": neurons, "zoo": z.describe(),
                 "source": "Padding Aware Neurons, Sec. 5; letters zoo (29x29)"},
        summary=f"{decision.verdict}: PANs at theta 0.5 in letters CNNs by padding mode (mean of {len(z.seeds)} seeds, "
                f"{neurons} neurons each): " + ", ".join(f"{m} {v:.1f}" for m, v in mean.items()),
        figures=[_bars(f"PANs (theta 0.5) of the letters CNN by training padding mode, mean of {len(z.seeds)} seeds",
                       list(mean), list(mean.values()), "PANs")]))
    record_verdict(result, decision)


def test_a_line_of_zeros_inside_the_input_makes_pans_fire(census, padbias_model, padbias_images, padbias_settings,
                                                           padbias_record):
    """Claim: adding a one-row/column of zeros anywhere in the input makes PANs fire and
    pushes predictions into unpredictability (Sec. 5, safety note). Measured twice: a zero
    line in the middle of each PAN layer's own input (do PANs read it as their border, by
    the census's KS test?) and a zero row/column in the image (does the top-1 change?)."""
    from pytest_padbias.pan_probes import zero_line_predictions, zero_line_probe

    if not census.is_pan(0.5).any():
        pytest.skip("the model has no PAN at theta 0.5")
    probe = zero_line_probe(padbias_model, padbias_images[:8], census, theta=0.5, seed=padbias_settings.seed)
    changed = zero_line_predictions(padbias_model, padbias_images)
    passed = probe.pan_rate > 0.5 and probe.pan_rate > 2 * probe.other_rate and max(changed.values()) > 0
    padbias_record(CheckResult(
        "claim: a zero line inside the input makes PANs fire", passed=passed, value=probe.pan_rate, limit=probe.other_rate,
        details={"paper": "a one-row/column of zeros anywhere in the input causes PANs to fire",
                 "measured": f"{probe.pans_detecting} of {probe.pans} PANs ({probe.pan_rate:.0%}) read a zero line in their "
                             f"input as their border, against {probe.other_rate:.0%} of {probe.others} other neurons on any side; "
                             f"top-1 changes on {changed['row']:.0%} (row) / {changed['column']:.0%} (column) of the images",
                 "source": "Padding Aware Neurons, Sec. 5", "per_layer": probe.per_layer, "prediction_change": changed},
        summary=f"{probe.pan_rate:.0%} of PANs fire on an inner zero line (other neurons {probe.other_rate:.0%}); "
                f"a zero row in the image changes {changed['row']:.0%} of top-1 predictions",
        figures=[_bars("Share reading an inner zero line as a border, and top-1 changed by a zero row/column in the image",
                       ["PANs", "other neurons", "top-1 changed (row)", "top-1 changed (column)"],
                       [probe.pan_rate, probe.other_rate, changed["row"], changed["column"]], "fraction")]))
    assert passed, (f"{probe.pan_rate:.0%} of PANs and {probe.other_rate:.0%} of other neurons detect an inner zero line; "
                    f"top-1 changes {changed}")
