"""The bundled suites' hypothesis searches follow ``--padbias-seed`` (unless
``--hypothesis-seed`` is given), so one seed reproduces every generated shift and size and
another seed explores others."""
import pytest


@pytest.hookimpl(tryfirst=True)  # before hypothesis's own pytest_configure reads its seed option
def pytest_configure(config):
    from pytest_padbias.options import resolve

    if getattr(config.option, "hypothesis_seed", None) is None and hasattr(config.option, "hypothesis_seed"):
        config.option.hypothesis_seed = str(resolve(config).seed)


def _wanted(session, fixture: str) -> bool:
    """Whether a selected test uses ``fixture``."""
    return any(fixture in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture(scope="session")
def _trained_zoos(request, padbias_settings):
    """Both zoos of the run, every model the selected tests need trained up-front in one
    pool of one process per core: the detectors (the longest jobs) first, then the letters
    classifiers, so no core idles while one zoo's last model trains. Skipped under
    ``--padbias-weights=none``."""
    if padbias_settings.weights == "none":
        pytest.skip("needs the trained zoo; --padbias-weights=none runs the architecture-only claims")
    from pytest_padbias import zoo
    from pytest_padbias.detector_eval import DetectorZoo, profile_budget
    from pytest_padbias.letters_zoo import LettersZoo
    from pytest_padbias.models import resolve_device
    from pytest_padbias.result import PadbiasError

    s = padbias_settings
    device = resolve_device(s.device)
    zoos, jobs = {}, []
    try:
        if _wanted(request.session, "detector_zoo"):
            n_seeds = profile_budget(s.zoo_profile, s.zoo_seeds)["seeds"]
            zoos["detectors"] = DetectorZoo(s.zoo_profile, range(s.seed, s.seed + n_seeds), device=device)
            jobs += zoos["detectors"].missing_jobs()
        if _wanted(request.session, "letters_zoo"):
            budget = zoo.letters_budget(s.zoo_profile, seeds=s.zoo_seeds, epochs=s.zoo_epochs,
                                        train_images=s.zoo_train_images)
            zoos["letters"] = LettersZoo(budget, range(s.seed, s.seed + budget.seeds), data=s.zoo_data,
                                         device=device, profile=s.zoo_profile)
            # Table 3's batch-norm models (and its extra seeds) only when its claim is selected
            jobs += zoos["letters"].missing_jobs(batch_norm=_wanted(request.session, "table3_zoo"))
        zoo.train_in_parallel(jobs)
    except PadbiasError as exc:  # a bad --padbias-zoo-data folder, too few EMNIST images...
        pytest.fail(str(exc), pytrace=False)
    with zoo.cpu_threads(1):  # small models on a shared CPU: one thread is fastest
        yield zoos


@pytest.fixture(scope="session")
def letters_zoo(_trained_zoos):
    """The run's letters classifiers (:class:`pytest_padbias.letters_zoo.LettersZoo`): the
    budget of ``--padbias-zoo-profile`` with the ``--padbias-zoo-*`` overrides, seeds from
    ``--padbias-seed`` on, data from ``--padbias-zoo-data``; every model Tables 1 and 2 need
    is trained up-front, Table 3's too when its claim runs (see ``_trained_zoos``)."""
    return _trained_zoos["letters"]


@pytest.fixture(scope="session")
def detector_zoo(_trained_zoos):
    """The run's detectors (:class:`pytest_padbias.detector_eval.DetectorZoo`): both padding
    modes x the seeds from ``--padbias-seed`` on, on the budget of ``--padbias-zoo-profile``,
    trained up-front (see ``_trained_zoos``); their AP and location maps are computed once."""
    return _trained_zoos["detectors"]


@pytest.fixture(scope="session")
def table3_zoo(letters_zoo):
    """:func:`letters_zoo`, asked for by Table 3's claim: it alone needs the batch-norm
    models and their extra seeds, which the up-front pool then trains too (a run that does
    not select it does not train them)."""
    return letters_zoo
