"""The bundled suites' hypothesis searches follow ``--padbias-seed`` (unless
``--hypothesis-seed`` is given), so one seed reproduces every generated shift and size and
another seed explores others."""
import pytest


@pytest.hookimpl(tryfirst=True)  # before hypothesis's own pytest_configure reads its seed option
def pytest_configure(config):
    from pytest_padbias.options import resolve

    if getattr(config.option, "hypothesis_seed", None) is None and hasattr(config.option, "hypothesis_seed"):
        config.option.hypothesis_seed = str(resolve(config).seed)
