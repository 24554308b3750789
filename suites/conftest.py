"""The bundled suites' hypothesis searches follow ``--padbias-seed`` (unless
``--hypothesis-seed`` is given), so one seed reproduces every generated shift and size and
another seed explores others."""
import pytest


@pytest.hookimpl(tryfirst=True)  # before hypothesis's own pytest_configure reads its seed option
def pytest_configure(config):
    from pytest_padbias.options import resolve

    if getattr(config.option, "hypothesis_seed", None) is None and hasattr(config.option, "hypothesis_seed"):
        config.option.hypothesis_seed = str(resolve(config).seed)


@pytest.fixture(scope="session")
def letters_zoo(padbias_settings):
    """The run's letters classifiers (:class:`pytest_padbias.letters_zoo.LettersZoo`): the
    budget of ``--padbias-zoo-profile`` with the ``--padbias-zoo-*`` overrides, seeds from
    ``--padbias-seed`` on, data from ``--padbias-zoo-data``; every model Tables 1-3 need is
    trained up-front, one process per core. Skipped under ``--padbias-weights=none``."""
    if padbias_settings.weights == "none":
        pytest.skip("needs the trained letters zoo; --padbias-weights=none runs the architecture-only claims")
    from pytest_padbias import zoo
    from pytest_padbias.letters_zoo import LettersZoo
    from pytest_padbias.models import resolve_device
    from pytest_padbias.result import PadbiasError

    s = padbias_settings
    try:
        budget = zoo.letters_budget(s.zoo_profile, seeds=s.zoo_seeds, epochs=s.zoo_epochs, train_images=s.zoo_train_images)
        letters = LettersZoo(budget, range(s.seed, s.seed + budget.seeds), data=s.zoo_data,
                             device=resolve_device(s.device), profile=s.zoo_profile)
        letters.train_all()
    except PadbiasError as exc:  # a bad --padbias-zoo-data folder, too few EMNIST images...
        pytest.fail(str(exc), pytrace=False)
    with zoo.cpu_threads(1):  # small models on a shared CPU: one thread is fastest
        yield letters
