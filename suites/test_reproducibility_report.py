"""The reproducibility report of Mind the Pad (shared/papers/000_873c4a5f441dd0f4.txt): its
letters-classifier claims as tests on the trained zoo (:mod:`pytest_padbias.zoo`), and its SSD
blind-spot claim on the zoo's tiny traffic-light detector (:mod:`pytest_padbias.detector`, 4
more models, about a minute to train cold).

The report trains a small CNN on EMNIST letters; the zoo trains the same kind of network on
synthetic letters rendered offline from matplotlib's DejaVu fonts (no download), on a CPU
budget of seconds per model (4800 images, 3 epochs, 2 seeds where the report used 60 000
images, early stopping and 3 seeds). These tests do not use ``--padbias-model``; they skip
under ``--padbias-weights=none`` because they need trained weights. The first run trains and
caches 20 small models (a few minutes on 2 CPU cores); later runs read them.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from pytest_padbias.padding import PADDING_MODES
from pytest_padbias.result import CheckResult, Figure
from pytest_padbias.strategies import shifts

SEEDS = (0, 1)  # replaced by the zoo fixture from --padbias-seed and --padbias-zoo-seeds
LETTERS_BUDGET: dict = {}  # replaced by the zoo fixture from --padbias-zoo-epochs and --padbias-zoo-train-images
SIZES = (28, 29)
TEST_N = 2600  # 100 test images per letter
SHIFT_N = 260  # 10 images per letter, as the report's shift protocol
MAX_SHIFT = 4  # px: a letter's free margin in the 28/29 frame (a 20 px glyph box, jittered)

#: The report's numbers (Tables 1-3, Figure 9).
PAPER_T1 = {"29x29": {"circular": 92.7, "reflect": 93.1, "replicate": 93.0, "zeros": 93.0, "mean": 93.0},
            "28x28": {"circular": 92.0, "reflect": 92.3, "replicate": 92.2, "zeros": 92.1, "mean": 92.2}}
PAPER_T2 = {"train 29 / test 28": 92.0, "train 29 / test 29": 93.0, "train 28 / test 28": 92.1, "train 28 / test 29": 72.9}
PAPER_T3_PERPLEXITY = {"batch norm": {"28x28": 14.61, "29x29": 13.81}, "no batch norm": {"28x28": 15.56, "29x29": 14.28}}


def claim(name, passed, paper, measured, summary, source, figures=(), value=None, **details):
    v = value if value is not None else (float(measured) if isinstance(measured, (int, float)) else float(passed))
    return CheckResult(check=name, passed=bool(passed), value=float(v), limit=None,
                       details={"paper": paper, "measured": measured, "source": source, **details},
                       summary=summary, figures=list(figures))


def not_reproduced_at_zoo_budget(why):
    """The claim is asserted as the paper states it; at the zoo's CPU budget it does not
    hold, so a failure is reported as xfailed (with the reason) rather than hidden behind a
    weaker assertion. An XPASS means it now holds. Other errors still fail."""
    return pytest.mark.xfail(raises=AssertionError, strict=False, reason=f"not reproduced at the zoo's CPU budget: {why}")


@pytest.fixture
def zoo(padbias_settings):
    """The zoo module, after a skip when trained weights are switched off; torch uses one
    CPU thread meanwhile."""
    if padbias_settings.weights == "none":
        pytest.skip("needs the trained letters zoo; --padbias-weights=none runs the architecture-only claims")
    from pytest_padbias import zoo as zoo_module

    # The zoo's training seeds follow --padbias-seed: that seed and the next ones
    # (--padbias-zoo-seeds, 0 and 1 by default); the letters budget follows the zoo options.
    global SEEDS, DET_SEEDS, LETTERS_BUDGET
    SEEDS = DET_SEEDS = tuple(range(padbias_settings.seed, padbias_settings.seed + padbias_settings.zoo_seeds))
    LETTERS_BUDGET = {"n_train": padbias_settings.zoo_train_images, "epochs": padbias_settings.zoo_epochs}

    with zoo_module.cpu_threads(1):  # small models on a shared CPU: one thread is fastest
        yield zoo_module


@lru_cache(maxsize=None)
def _model(size, mode, seed, batch_norm=False):
    from pytest_padbias import zoo

    return zoo.trained_model("letters", size, mode, seed, batch_norm=batch_norm, **LETTERS_BUDGET)


@lru_cache(maxsize=None)
def _test(size, n=TEST_N):
    from pytest_padbias import zoo

    return zoo.test_batch(size, n)


@lru_cache(maxsize=None)
def _logits(train_size, mode, seed, test_size, batch_norm=False):
    """The model's logits on the test batch, computed once for accuracy and perplexity."""
    import torch

    x, _y = _test(test_size)
    model = _model(train_size, mode, seed, batch_norm)
    with torch.inference_mode():  # batches of 512 keep the activations in cache
        return torch.cat([model(chunk) for chunk in torch.split(x, 512)])


@lru_cache(maxsize=None)
def _acc(train_size, mode, seed, test_size, batch_norm=False):
    """Test accuracy in percent."""
    _x, y = _test(test_size)
    return 100.0 * float((_logits(train_size, mode, seed, test_size, batch_norm).argmax(1) == y).float().mean())


def _bars(title, groups, series, ylabel):
    """A grouped bar chart: ``series`` maps a label to one value per group."""
    from pytest_padbias.figures import figure, to_png

    fig, ax = figure(figsize=(6.4, 3.4))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    lo = min(min(v) for v in series.values())
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return Figure(title=title, png=to_png(fig))


@not_reproduced_at_zoo_budget("the seed-to-seed spread (several points) exceeds the paper's +0.8 point gain")
def test_even_padding_beats_uneven_padding(zoo, padbias_record):
    """Claim: the letters CNN is more accurate at 29x29 (every strided conv pads evenly) than
    at 28x28 (they read padding on the top/left only), for every padding mode, by about
    0.8 points on average over modes and seeds (report, Table 1).

    Asserted: 29x29 beats 28x28 beyond two standard errors of the paired (mode, seed) gains.
    The seed-to-seed spread on the zoo's CPU budget is several points, far above 0.8, so
    this is expected to xfail here; the entry also says whether 29x29 is at least not worse."""
    from pytest_padbias.geometry import uneven_layers

    assert uneven_layers(zoo.letters_cnn(), (28, 28)) and not uneven_layers(zoo.letters_cnn(), (29, 29))
    acc = {s: {m: [_acc(s, m, seed, s) for seed in SEEDS] for m in PADDING_MODES} for s in SIZES}
    diff = {m: float(np.mean(acc[29][m]) - np.mean(acc[28][m])) for m in PADDING_MODES}
    mean_diff = float(np.mean(list(diff.values())))
    measured = {f"{s}x{s}": {m: round(float(np.mean(acc[s][m])), 2) for m in PADDING_MODES}
                | {"mean": round(float(np.mean(list(acc[s].values()))), 2)} for s in SIZES}
    gains = np.array([a29 - a28 for m in PADDING_MODES for a28, a29 in zip(acc[28][m], acc[29][m])])
    se = float(gains.std(ddof=1) / np.sqrt(len(gains)))
    # Seed-to-seed spread on this CPU budget is several points, far above the paper's 0.8:
    # the test fails only when 29x29 is worse than 28x28 beyond two standard errors.
    not_worse = mean_diff + 2 * se > 0
    resolved = mean_diff - 2 * se > 0
    passed = resolved  # the claim: 29x29 is more accurate, beyond two standard errors
    fig = _bars("Table 1: test accuracy by padding mode, trained and tested at 28x28 (uneven) or 29x29 (even), "
                f"mean of {len(SEEDS)} seeds", list(PADDING_MODES),
                {f"{s}x{s}": [measured[f"{s}x{s}"][m] for m in PADDING_MODES] for s in SIZES}, "test accuracy (%)")
    padbias_record(claim(
        "claim: even padding (29x29) beats uneven (28x28)", passed,
        paper={"accuracy": PAPER_T1, "mean gain (points)": 0.8}, measured={"accuracy": measured, "mean gain (points)": round(mean_diff, 2)},
        value=mean_diff, source="000_873c4a5f441dd0f4.txt, Table 1",
        summary=f"29x29 minus 28x28: {mean_diff:+.2f} +- {2 * se:.2f} points (2 s.e.; paper +0.8)"
        + ("" if resolved else ", not resolved at this budget") + "; per mode " + ", ".join(f"{m} {d:+.2f}" for m, d in diff.items()),
        figures=[fig], per_seed={f"{s}x{s}": {m: [round(a, 2) for a in acc[s][m]] for m in PADDING_MODES} for s in SIZES},
        seeds=list(SEEDS), test_images=TEST_N, two_standard_errors=round(2 * se, 2), gain_resolved=resolved,
        not_worse_beyond_noise=not_worse,
        note="passes when 29x29 beats 28x28 beyond 2 standard errors of the paired (mode, seed) gains; "
        "the paper's +0.8 is below this budget's seed-to-seed noise, so it is expected to xfail here",
    ))
    assert passed, f"29x29 does not beat 28x28 beyond the noise: {mean_diff:+.2f} +- {2 * se:.2f} points ({diff})"


def test_uneven_training_collapses_at_the_even_size(zoo, padbias_record):
    """Claim: a model trained at 28x28 (uneven padding) collapses when tested at 29x29
    (92.1% -> 72.9%), while one trained at 29x29 barely moves when tested at 28x28
    (93.0% -> 92.0%): training with uneven padding skews the filters (report, Table 2)."""
    table = {}
    for train in SIZES:
        for test in SIZES:
            table[f"train {train} / test {test}"] = round(float(np.mean([_acc(train, "zeros", s, test) for s in SEEDS])), 2)
    drop28 = table["train 28 / test 28"] - table["train 28 / test 29"]
    drop29 = table["train 29 / test 29"] - table["train 29 / test 28"]
    per_mode = {m: {f"drop train 28 -> test 29": round(float(np.mean([_acc(28, m, s, 28) - _acc(28, m, s, 29) for s in SEEDS])), 2),
                    f"drop train 29 -> test 28": round(float(np.mean([_acc(29, m, s, 29) - _acc(29, m, s, 28) for s in SEEDS])), 2)}
                for m in PADDING_MODES}
    # What this budget supports: the 28-trained model loses more at 29 than the 29-trained one
    # at 28, and clearly (> 3 points). The paper's contrast (19 vs 1 point) is sharper: here
    # the 29-trained models also lose several points at 28 (reflect ones most, see per_mode).
    passed = drop28 > drop29 and drop28 > 3.0
    fig = _bars("Table 2: test accuracy of zero-padded models by training and test size "
                f"(mean of {len(SEEDS)} seeds)", ["trained at 28", "trained at 29"],
                {f"tested at {t}": [table[f"train 28 / test {t}"], table[f"train 29 / test {t}"]] for t in SIZES}, "test accuracy (%)")
    padbias_record(claim(
        "claim: trained at 28, tested at 29 collapses", passed, paper=PAPER_T2, measured=table, value=drop28,
        source="000_873c4a5f441dd0f4.txt, Table 2",
        summary=f"trained 28: {table['train 28 / test 28']:.1f}% -> {table['train 28 / test 29']:.1f}% at 29 "
        f"(paper 92.1 -> 72.9); trained 29: {table['train 29 / test 29']:.1f}% -> {table['train 29 / test 28']:.1f}% at 28 (paper 93.0 -> 92.0)",
        figures=[fig], drops={"train 28 -> test 29": round(drop28, 2), "train 29 -> test 28": round(drop29, 2)}, per_mode=per_mode,
        note="asserted: the 28-trained drop exceeds 3 points and the 29-trained drop; the paper's "
        "'barely moves' (1 point) for the 29-trained model is not reproduced on this budget",
    ))
    assert passed, (f"the 28-trained model drops {drop28:.1f} points at 29 and the 29-trained one {drop29:.1f} at 28; "
                    "the claim needs a drop of more than 3 points, larger than the other")


@lru_cache(maxsize=None)
def _border_map(mode, seed):
    from pytest_padbias.shifts import border_shift_map

    x, y = _test(29, SHIFT_N)
    return border_shift_map(_model(29, mode, seed), x, content_scale=1.0, max_shift=MAX_SHIFT, fill="zeros",
                            labels=y.tolist(), grid=3, view_size=(29, 29))


def _outer(grid) -> float:
    """Mean over the 8 outer positions of a 3 x 3 map."""
    g = np.asarray(grid, dtype=float)
    return float((g.sum() - g[1, 1]) / 8)


def test_circular_padding_is_most_shift_robust(zoo, padbias_record):
    """Claim: under the 9-direction border protocol (letters pushed toward each border and
    corner, zero fill), models with circular padding change their prediction least of the
    four padding modes (report, Figure 9 and section 4.2)."""
    from pytest_padbias.shift_figures import border_map_figure

    rates = {m: float(np.mean([_outer(_border_map(m, s).change_rate) for s in SEEDS])) for m in PADDING_MODES}
    accs = {m: float(np.mean([_outer(_border_map(m, s).accuracy) for s in SEEDS])) for m in PADDING_MODES}
    grids = {m: np.round(np.mean([_border_map(m, s).change_rate for s in SEEDS], axis=0), 3).tolist() for m in PADDING_MODES}
    best = min(rates, key=rates.get)
    passed = best == "circular"
    figs = []
    for m in PADDING_MODES:
        f = border_map_figure(_border_map(m, SEEDS[0]))
        figs.append(Figure(title=f"{m} padding, seed {SEEDS[0]}: " + f.title, png=f.png))
    padbias_record(claim(
        "claim: circular padding is the most shift-robust", passed,
        paper="Figure 9: circular padding eliminates almost all shift bias; zeros, reflect and replicate do not",
        measured={"outer change rate": {m: round(r, 4) for m, r in rates.items()}, "most robust": best},
        value=rates["circular"], source="000_873c4a5f441dd0f4.txt, Figure 9 (protocol: section 4.2, Figure 7a)",
        summary="prediction change rate at the 8 border positions (zero fill, "
        f"{MAX_SHIFT} px): " + ", ".join(f"{m} {r:.3f}" for m, r in rates.items()),
        figures=figs, change_rate_maps=grids, shifted_accuracy={m: round(100 * a, 2) for m, a in accs.items()},
        images=SHIFT_N, seeds=list(SEEDS), max_shift=MAX_SHIFT,
    ))
    assert passed, f"{best} padding changes its prediction least under border shifts, not circular: {rates}"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shift=shifts(MAX_SHIFT).filter(lambda s: max(abs(s[0]), abs(s[1])) >= 2))
def test_circular_model_keeps_its_prediction_under_border_shifts(zoo, shift):
    """Property: for every generated shift toward a border (2-4 px, zero fill), the circular
    model keeps its centred prediction at least as often as the zero-padded one, up to one
    image in 50 (report, Figure 9)."""
    from pytest_padbias.shifts import shifted_views

    x, _ = _test(29, SHIFT_N)
    views = shifted_views(x, [shift] * len(x), fill="zeros")
    kept = {}
    for mode in ("circular", "zeros"):
        model = _model(29, mode, SEEDS[0])
        kept[mode] = float((zoo.predictions(model, views) == zoo.predictions(model, x)).float().mean())
    assert kept["circular"] >= kept["zeros"] - 0.02, f"shift {shift}: circular keeps {kept['circular']:.3f}, zeros {kept['zeros']:.3f}"


def _perplexity(size, seed, batch_norm) -> float:
    """exp(mean cross-entropy) of the zero-padded model trained and tested at ``size``."""
    import torch
    import torch.nn.functional as F

    return float(torch.exp(F.cross_entropy(_logits(size, "zeros", seed, size, batch_norm), _test(size)[1])))


@not_reproduced_at_zoo_budget("the models without batch norm have not converged, so batch norm is several points better")
def test_batch_norm_barely_changes_accuracy(zoo, padbias_record):
    """Claim: adding batch norm after every conv does not change the letters CNN's accuracy
    significantly, at 28x28 or 29x29 (report, section 4.1 and Table 3, which shows perplexity).

    Asserted: the difference is not significant (Welch's t-test). On the zoo's short CPU
    budget the models without batch norm have not converged and batch norm is clearly
    *better* (several points), so this xfails here; the entry says whether batch norm at
    least costs no accuracy."""
    from scipy.stats import ttest_ind

    acc = {bn: {s: [_acc(s, "zeros", seed, s, bn) for seed in SEEDS] for s in SIZES} for bn in (True, False)}
    ppl = {bn: {s: round(float(np.mean([_perplexity(s, seed, bn) for seed in SEEDS])), 3) for s in SIZES}
           for bn in (True, False)}
    with_bn = [a for s in SIZES for a in acc[True][s]]
    without = [a for s in SIZES for a in acc[False][s]]
    diff = float(np.mean(with_bn) - np.mean(without))
    p = float(ttest_ind(with_bn, without, equal_var=False).pvalue)
    significant = p <= 0.05 and abs(diff) > 1.0
    passed = not significant  # the claim: no significant difference
    label = {True: "batch norm", False: "no batch norm"}
    fig = _bars(f"Table 3 / section 4.1: test accuracy with and without batch norm (zero padding, mean of {len(SEEDS)} seeds)",
                [f"{s}x{s}" for s in SIZES], {label[bn]: [float(np.mean(acc[bn][s])) for s in SIZES] for bn in (True, False)},
                "test accuracy (%)")
    padbias_record(claim(
        "claim: batch norm barely changes accuracy", passed,
        paper={"accuracy": "no significant difference", "perplexity (Table 3)": PAPER_T3_PERPLEXITY},
        measured={"accuracy": {label[bn]: {f"{s}x{s}": [round(a, 2) for a in acc[bn][s]] for s in SIZES} for bn in acc},
                  "batch norm minus none (points)": round(diff, 2), "Welch t-test p": round(p, 4),
                  "perplexity exp(mean cross-entropy)": {label[bn]: {f"{s}x{s}": v for s, v in ppl[bn].items()} for bn in ppl}},
        value=diff, source="000_873c4a5f441dd0f4.txt, section 4.1, Table 3",
        summary=f"batch norm minus none: {diff:+.2f} points over sizes and seeds (Welch p = {p:.3f}"
        + ("; significant, unlike the paper: the models without batch norm are not converged on this budget)" if significant
           else "; not significant, as in the paper)"),
        figures=[fig],
        significant=significant,
        costs_no_accuracy=diff > -1.0,
        note="asserted: the difference is not significant (Welch p > 0.05 or below 1 point). The report's perplexity "
        "scale (about 14) is not exp(cross-entropy) of a 92% classifier; its values are for reference only",
    ))
    assert passed, (f"batch norm changes accuracy significantly: {diff:+.2f} points, Welch p = {p:.4f} "
                    f"(with {with_bn}, without {without})")


# --------------------------------------------------------------------------- the small-object detector (report, section 2)
#: The zoo's tiny detector (:mod:`pytest_padbias.detector`) in place of SSD: 2 padding modes x
#: 2 seeds, about 15-40 s of CPU each to train (cached like the letters models).
DET_SEEDS = (0, 1)
DET_MODES = ("zeros", "reflect")
DET_BACKGROUNDS = 8  # held-out backgrounds per placement
DET_GRID = (9, 13)  # placements of the location map (outer rows/columns touch the borders)
DET_HELD_OUT = 256  # held-out scenes (objects anywhere) for the overall detection rate
DET_BORDER_STEP = 3  # px between the border positions scanned (corners always included)
PAPER_SSD = {"blind spot": "SSD (COCO traffic lights): near the right border with zero padding, removed by reflect "
                           "padding (report, Figure 3); Mind the Pad's SSD: near the top border",
             "AP, zero vs mirror padding (slides)": {"zeros": 80.24, "mirror": 83.20}}


@lru_cache(maxsize=None)
def _detector(mode, seed):
    from pytest_padbias import detector

    return detector.trained_detector(mode, seed)


@lru_cache(maxsize=None)
def _location(mode, seed):
    from pytest_padbias import detector

    return detector.location_map(_detector(mode, seed), n_backgrounds=DET_BACKGROUNDS, grid=DET_GRID)


@lru_cache(maxsize=None)
def _border(mode, seed):
    from pytest_padbias import detector

    return detector.border_scan(_detector(mode, seed), n_backgrounds=DET_BACKGROUNDS, step=DET_BORDER_STEP)


def _border_figure():
    """Detection rate along each border (every position touching it), per mode and seed."""
    from pytest_padbias.detector import SIDES, border_positions
    from pytest_padbias.figures import figure, to_png

    found = border_positions(step=DET_BORDER_STEP)
    sides = np.array([side for _, _, side in found])
    along = np.array([left if side in ("top", "bottom") else top for top, left, side in found])
    fig, axes = figure(1, 4, figsize=(12, 3.0))
    for ax, side in zip(axes, SIDES):
        for mode, colour in zip(DET_MODES, ("tab:blue", "tab:orange")):
            for seed, style in zip(DET_SEEDS, ("-", "--")):
                ax.plot(along[sides == side], _border(mode, seed)["detections"][sides == side], style, color=colour, lw=1.2, label=f"{mode}, seed {seed}")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"touching the {side} border", fontsize=9)
        ax.set_xlabel("position along the border (px from " + ("left)" if side in ("top", "bottom") else "top)"), fontsize=8)
    axes[0].set_ylabel(f"detection rate ({DET_BACKGROUNDS} backgrounds)", fontsize=8)
    axes[0].legend(fontsize=7)
    return Figure(title="Detection rate of the traffic light at every position touching a border, zero vs reflect padding",
                  png=to_png(fig))


@not_reproduced_at_zoo_budget("the tiny detector, trained on objects placed uniformly (borders included), has no "
                              "systematic border blind spot under zero padding")
def test_zero_padded_detector_has_a_blind_spot_near_a_border(zoo, padbias_record):
    """Claim: a small-object detector trained with zero padding has a blind spot near a border
    (the report's SSD on COCO traffic lights: near the right border; Mind the Pad: near the top)
    that reflect padding removes (report 000, section 2.2 and Figure 3; slides 001: SSD
    traffic-light AP 80.24% with zero vs 83.20% with mirror padding).

    The zoo's detector (64x64 procedural scenes, one 9x5 traffic light placed uniformly,
    borders included) does not reproduce it at this budget: neither padding leaves a
    systematic blind spot, only isolated weak positions near corners (in both modes), and the
    reflect-padded detectors are, if anything, the weaker ones at the bottom/right borders.
    The right border (the report's) is the weakest side of the location map for all four
    models, with both paddings alike, so it is not what reflect padding removes.
    Asserted, the claim: every zero-padded seed has a blind spot (a border side detected
    < 80% of the time, or > 5% of the border positions detected on fewer than half of the
    backgrounds) and no reflect-padded one does. Expected to xfail at this budget."""
    from pytest_padbias import detector
    from pytest_padbias.blindspots import detectability_figure
    from pytest_padbias.detector import SIDES

    measured, figs = {}, []
    for seed in DET_SEEDS:
        maps = []
        for mode in DET_MODES:
            loc, scan = _location(mode, seed), _border(mode, seed)
            s = loc.summary()
            dm = loc.as_detectability_map()
            maps.append(dm)
            measured[f"{mode}, seed {seed}"] = {
                "detection by side": {side: round(scan[side]["detection"], 3) for side in SIDES},
                "lowest detection on a border": round(scan["min_detection"], 3), "at (top, left)": scan["worst_position"],
                "blind border positions (detected < 50%)": round(scan["blind"], 4),
                "worst side / centre score": [s["worst_side"], round(s["worst_side_ratio"], 3)],
                "detection border ring / centre": [round(s["detection_border"], 3), round(s["detection_centre"], 3)],
                "regions below 0.5 x median": len(dm.regions)}
        figs.append(detectability_figure(maps, title=f"Traffic-light detectability by location, seed {seed}: zero vs reflect padding"))
    figs.append(_border_figure())
    zeros = [_border("zeros", s) for s in DET_SEEDS]
    reflect = [_border("reflect", s) for s in DET_SEEDS]
    worst_side = {m: [min(_border(m, s)[side]["detection"] for side in SIDES) for s in DET_SEEDS] for m in DET_MODES}
    detects_border_objects = all(w >= 0.85 for w in worst_side["zeros"]) and all(z["blind"] < 0.05 for z in zeros)
    # The claim itself: a clear blind spot with zero padding (a border side detected < 80% on
    # average or > 5% of border positions blind) in every seed, and none with reflect.
    blind = {m: [w < 0.8 or b["blind"] > 0.05 for w, b in zip(worst_side[m], bs)] for m, bs in (("zeros", zeros), ("reflect", reflect))}
    reproduced = all(blind["zeros"]) and not any(blind["reflect"])
    passed = reproduced
    padbias_record(claim(
        "claim: zero-padded detector has a blind spot near a border", passed, paper=PAPER_SSD, measured=measured,
        value=min(worst_side["zeros"]), source="000_873c4a5f441dd0f4.txt, section 2.2 and Figure 3; 001 slides (SSD traffic lights)",
        summary="worst border side detection rate, zeros " + ", ".join(f"{w:.3f}" for w in worst_side["zeros"])
        + " vs reflect " + ", ".join(f"{w:.3f}" for w in worst_side["reflect"]) + f" (seeds {list(DET_SEEDS)}); weakest side "
        + ", ".join(f"{m} s{seed} {_location(m, seed).summary()['worst_side']}" for m in DET_MODES for seed in DET_SEEDS) + "; "
        + ("reproduced" if reproduced else "not reproduced: no systematic blind spot with zero padding at this budget"),
        figures=figs, reproduced=reproduced, seeds=list(DET_SEEDS), backgrounds=DET_BACKGROUNDS,
        held_out_detection={f"{m}, seed {seed}": round(detector.evaluate(_detector(m, seed), DET_HELD_OUT)["detection"], 4)
                            for m in DET_MODES for seed in DET_SEEDS},
        zero_padded_detects_border_objects=detects_border_objects,
        note="asserted: a blind spot (a side < 80% or > 5% blind border positions) in every zero-padded seed and none "
        "with reflect. The claim is not reproduced: the tiny detector sees objects touching the borders in training (uniform placement), "
        "and reflect padding does not make it more uniform; see the 'reflect' entries",
    ))
    assert passed, (f"no zero-padding-specific blind spot: worst side detection {worst_side}, "
                    f"blind border positions zeros {[round(z['blind'], 4) for z in zeros]}, "
                    f"reflect {[round(r['blind'], 4) for r in reflect]}")


@not_reproduced_at_zoo_budget("the reflect-padded detectors vary somewhat more over locations than the zero-padded ones")
def test_mirror_padding_reduces_the_variation_of_detectability(zoo, padbias_record):
    """Claim: with mirror (reflect) padding a detector's confidence varies less with the
    object's location than with zero padding (slides 001, 'Stimulus detectability at
    different locations' and 'mitigated artifacts'; report 000, Figure 3).

    Measured as the coefficient of variation (std / mean) and min/median of the mean score over
    the location map of the zoo's detector. At this budget the claim does not hold: the
    reflect-padded detectors vary somewhat *more* than the zero-padded ones, so this xfails;
    the entry says whether detectability is nearly uniform (CV < 0.15) under both."""
    from pytest_padbias.figures import figure, to_png

    cv = {m: [_location(m, s).summary()["cv"] for s in DET_SEEDS] for m in DET_MODES}
    mm = {m: [_location(m, s).summary()["min_median"] for s in DET_SEEDS] for m in DET_MODES}
    reproduced = all(r < z for r, z in zip(cv["reflect"], cv["zeros"]))
    nearly_uniform = all(v < 0.15 for m in DET_MODES for v in cv[m])
    passed = reproduced
    fig, axes = figure(1, 2, figsize=(9, 3.2))
    for mode, colour in zip(DET_MODES, ("tab:blue", "tab:orange")):
        for seed, style in zip(DET_SEEDS, ("-", "--")):
            loc = _location(mode, seed)
            axes[0].plot(loc.lefts + 2, loc.score.mean(0), style, color=colour, marker=".", label=f"{mode}, seed {seed}")
            axes[1].plot(loc.tops + 4, loc.score.mean(1), style, color=colour, marker=".")
    axes[0].set_xlabel("object centre x (px)", fontsize=8)
    axes[1].set_xlabel("object centre y (px)", fontsize=8)
    axes[0].set_ylabel("mean score over the other axis", fontsize=8)
    axes[0].legend(fontsize=7)
    padbias_record(claim(
        "claim: mirror padding reduces the variation of detectability", passed,
        paper="mirror padding mitigates the blind spot (SSD traffic lights, AP 80.24% zero vs 83.20% mirror)",
        measured={"coefficient of variation": {m: [round(v, 4) for v in cv[m]] for m in DET_MODES},
                  "min / median": {m: [round(v, 3) for v in mm[m]] for m in DET_MODES}},
        value=float(np.mean(cv["reflect"]) - np.mean(cv["zeros"])),
        source="001 slides, 'Stimulus detectability at different locations'; 000_873c4a5f441dd0f4.txt, Figure 3",
        summary=f"CV of detectability over locations: zeros {np.mean(cv['zeros']):.3f}, reflect {np.mean(cv['reflect']):.3f} "
        f"(mean of seeds {list(DET_SEEDS)}); " + ("reproduced" if reproduced else "not reproduced: reflect is not more uniform"),
        figures=[Figure(title="Detectability profiles of the traffic light across the image, zero vs reflect padding", png=to_png(fig))],
        reproduced=reproduced, seeds=list(DET_SEEDS), grid=list(DET_GRID), backgrounds=DET_BACKGROUNDS,
        nearly_uniform_under_both=nearly_uniform,
        note="asserted: reflect's CV is below zeros' for every seed; "
        "the claimed reduction by mirror padding is not reproduced at this budget",
    ))
    assert passed, f"reflect padding does not reduce the variation of detectability over locations: CV {cv}"
