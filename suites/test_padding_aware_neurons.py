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
def census(trained_only, padbias_model, padbias_images, pytestconfig):
    """One census per model and image batch for the whole run (the slowest step here)."""
    from pytest_padbias.pans import pan_census

    cache = pytestconfig.stash.setdefault(_census_key, {})
    key = (id(padbias_model), padbias_images.data_ptr(), tuple(padbias_images.shape))
    if key not in cache:
        cache[key] = pan_census(padbias_model, padbias_images, theta=(0.4, 0.5))
    return cache[key]


_census_key = pytest.StashKey()


@padbias.max_pans(0.05)
def test_pans_are_a_small_fraction_of_the_filters(trained_only, padbias_model):
    """Claim: PANs are roughly 1.5-3% of the conv filters with kernels larger than 1x1
    (Sec. 3.2, Table 1: 'about 2% of all convolutional filters'); the gate holds the
    model to at most 5%."""


def test_pans_exist(census, padbias_record):
    """Claim: pretrained CNNs contain dozens of PANs (Sec. 3.2: 'dozens of PANs per model',
    ResNet-50: 81 at theta 0.5)."""
    count = int(census.is_pan(0.5).sum())
    fraction = census.fraction(0.5)
    padbias_record(CheckResult(
        "claim: PANs exist", passed=count > 0, value=count, limit=None,
        details={"paper": "ResNet-50: 81 PANs (theta 0.5), about 2% of filters", "measured": f"{count} PANs ({fraction:.2%})",
                 "source": "Padding Aware Neurons, Table 1", "of": census.n_neurons, "type_counts": census.type_counts(0.5)},
        summary=f"{count} of {census.n_neurons} neurons are PANs at theta 0.5 ({fraction:.2%})"))
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
        summary=f"{strict} PANs at theta 0.5, {loose} at theta 0.4"))
    assert loose > strict, f"theta 0.4 finds {loose} PANs, theta 0.5 {strict}: no more"


def test_reflect_padding_on_pans_moves_outputs_more_than_on_random_neurons(census, padbias_model, padbias_images,
                                                                           padbias_settings, padbias_record):
    """Claim: switching only the PANs to reflect padding changes the model's outputs more
    than switching an equally sized, equally distributed random set of neurons (Sec. 4,
    PAN-reflect vs RAND-reflect, Eq. 1)."""
    from pytest_padbias.intervention import pan_reflect_experiment

    if not census.is_pan(0.5).any():
        pytest.skip("the model has no PAN at theta 0.5 to switch")
    result = pan_reflect_experiment(padbias_model, padbias_images, census, theta=0.5, seed=padbias_settings.seed)
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
                f"(PANs) vs {rand['mean_manhattan']:.3f} (random)"))
    assert pan["mean_manhattan"] > rand["mean_manhattan"], (
        f"switching the PANs changed the logits by {pan['mean_manhattan']:.3f} on average, "
        f"no more than random neurons ({rand['mean_manhattan']:.3f})")
