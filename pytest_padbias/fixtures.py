"""The fixtures pytest-padbias gives a test, and the per-target state behind them.

Each target (one ``--padbias-model`` x ``--padbias-device``) has a :class:`TargetState`
in ``config.stash``: its settings, its loaded model (or why it failed to load), its
images and its analyses, dropped once its last test in this process ran
(:func:`pytest_padbias.plugin.pytest_runtest_teardown`). torch is imported inside the
fixtures only.
"""
from __future__ import annotations

import dataclasses

import pytest

from . import __version__
from .matrix import Target
from .result import PadbiasError
from .stash import checks_key, settings_key, states_key, targets_key


@dataclasses.dataclass
class TargetState:
    """What one target has loaded and computed in this process."""

    settings: object
    loaded: object = None
    error: str | None = None
    images: dict = dataclasses.field(default_factory=dict)
    analysis: dict = dataclasses.field(default_factory=dict)
    run: dict = dataclasses.field(default_factory=dict)  # JSON metadata: weights, device, input size...


def _param_target(item) -> str | None:
    """The target id a several-target run gave this test (None: not run per target)."""
    callspec = getattr(item, "callspec", None)
    target = callspec.params.get("padbias_target") if callspec is not None else None
    return target.id if isinstance(target, Target) else None


def _item_target(item) -> Target:
    targets = item.config.stash[targets_key]
    tid = _param_target(item)
    return next((t for t in targets if t.id == tid), targets[0])


def _state(config, target: Target) -> TargetState:
    states = config.stash[states_key]
    if target.id not in states:
        base = config.stash[settings_key]
        states[target.id] = TargetState(dataclasses.replace(base, model=target.model, device=target.device))
    return states[target.id]


def _loaded_model(config, target: Target):
    state = _state(config, target)
    if state.error is not None:
        raise PadbiasError(state.error)
    if state.loaded is None:
        from .models import load_model

        try:
            state.loaded = load_model(target.model, state.settings.weights, target.device)
        except PadbiasError as exc:
            state.error = str(exc)
            raise
    return state.loaded


@pytest.fixture(scope="session")
def padbias_target(request):
    """The model and device this test runs against (``.model``, ``.device``, ``.id``): one
    target of ``--padbias-model`` x ``--padbias-device``; ``.id`` ends the test id when
    there are several."""
    return getattr(request, "param", None) or request.config.stash[targets_key][0]


@pytest.fixture(scope="session")
def padbias_settings(pytestconfig, padbias_target):
    """The resolved ``--padbias-*`` options of this run; ``model`` and ``device`` are the
    test's own (``models`` and ``devices`` list the whole run's)."""
    return _state(pytestconfig, padbias_target).settings


@pytest.fixture(scope="session")
def padbias_device(padbias_target):
    """The torch device name the model and images live on."""
    from .models import resolve_device

    try:
        return resolve_device(padbias_target.device)
    except PadbiasError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def padbias_loaded_model(pytestconfig, padbias_target, padbias_device):
    """The model of ``--padbias-model`` with its weights and their metadata."""
    import torch

    try:
        loaded = _loaded_model(pytestconfig, padbias_target)
    except PadbiasError as exc:
        pytest.fail(str(exc), pytrace=False)
    s = _state(pytestconfig, padbias_target)
    s.run.update({
        "model": padbias_target.model, "weights": loaded.weights, "weights_sha256": loaded.weights_sha256,
        "device": padbias_device, "seed": s.settings.seed, "torch_version": torch.__version__, "padbias_version": __version__,
    })
    return loaded


@pytest.fixture
def padbias_model(padbias_loaded_model):
    """The model under test, in eval mode on ``padbias_device``. Override it in your
    conftest to gate your own model (and ``padbias_images`` for its inputs)."""
    return padbias_loaded_model.module


def _weights_meta(config, model):
    """The loaded weights' metadata when ``model`` is a built-in one, else None."""
    for state in config.stash[states_key].values():
        if state.loaded is not None and state.loaded.module is model:
            return state.loaded
    return None


@pytest.fixture
def padbias_input_size(pytestconfig, padbias_settings, padbias_model, padbias_target):
    """``(height, width)``: --padbias-input-size, else the weights' crop size, else 224."""
    loaded = _weights_meta(pytestconfig, padbias_model)
    size = padbias_settings.input_size or (loaded.input_size if loaded and loaded.input_size else (224, 224))
    _state(pytestconfig, padbias_target).run["input_size"] = list(size)
    return tuple(size)


@pytest.fixture
def padbias_images(pytestconfig, padbias_settings, padbias_input_size, padbias_model, padbias_target):
    """A batch ``[N, 3, H, W]`` of real photographs (skimage.data) at the input size,
    normalised as the weights expect (ImageNet statistics for your own model);
    N = --padbias-images. Built once per model, run and size."""
    from .images import IMAGENET_MEAN, IMAGENET_STD, natural_images

    loaded = _weights_meta(pytestconfig, padbias_model)
    mean, std = (loaded.mean, loaded.std) if loaded else (IMAGENET_MEAN, IMAGENET_STD)
    device = next((p.device for p in padbias_model.parameters()), "cpu")
    key = (padbias_settings.images, padbias_input_size, padbias_settings.seed, mean, std, str(device))
    cache = _state(pytestconfig, padbias_target).images
    if key not in cache:
        cache[key] = natural_images(padbias_settings.images, padbias_input_size, padbias_settings.seed, mean=mean, std=std).to(device)
    return cache[key]


@pytest.fixture(scope="session")
def padbias_analysis_cache(pytestconfig, padbias_target):
    """The cache of expensive analyses shared by the gates and the suites (e.g. the PAN
    census of :func:`pytest_padbias.pan_gate.shared_census`), one per target: a model's
    analyses are never reused for another."""
    return _state(pytestconfig, padbias_target).analysis


@pytest.fixture
def padbias_score():
    """Score function for models that are not classifiers: ``images -> tensor[N]``.
    None means: use the classification logits. Override it for detectors."""
    return None


@pytest.fixture
def padbias_record(request):
    """Record a :class:`~pytest_padbias.result.CheckResult` for this test's JSON entry
    and HTML row (the bundled suites use it for paper-vs-measured figures). A claim
    (a check named ``claim: ...``) without a verdict of its own is an exact measurement on
    the model: reproduced when it passed, contradicted when not
    (:func:`pytest_padbias.verdicts.exact_verdict`)."""
    from .verdicts import exact_verdict

    def record(result):
        exact_verdict(result)
        request.node.stash.setdefault(checks_key, []).append(result)
        return result

    return record
