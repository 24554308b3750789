"""The run's matrix of models x devices, and how a test id names its member. No torch here
(except where ``torchvision:*`` is expanded or ``auto``/``cuda`` devices are resolved).

With one model and one device nothing is parametrized and test ids stay as they were; with
several, every test that uses the model runs once per *target* (model, device), and the
target's id ends the test id: ``test_pans_exist[resnet50]``, ``test_x[33-resnet50-cpu]``.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from .result import PadbiasError

#: Fixtures whose value depends on the model: a test using one of them runs once per target.
MODEL_FIXTURES = ("padbias_model", "padbias_loaded_model", "padbias_images", "padbias_input_size", "padbias_device")
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True, repr=False)
class Target:
    """One member of the matrix: ``id`` is what the test ids and the xdist group carry."""

    id: str
    model: str
    device: str

    def __str__(self):
        return self.id

    __repr__ = __str__  # as pytest shows the fixture's parameter (--setup-show)


def has_wildcard(spec: str) -> bool:
    prefix, sep, name = spec.partition(":")
    return bool(sep) and prefix == "torchvision" and bool(_WILDCARD.search(name))


def expand_models(specs) -> tuple[str, ...]:
    """``torchvision:*`` (or another pattern such as ``torchvision:resnet*``) becomes every
    matching torchvision classification model, by its plain name; duplicates are dropped,
    the order is kept."""
    out = []
    for spec in specs:
        if has_wildcard(spec):
            from .models import torchvision_classifiers

            pattern = spec.partition(":")[2]
            names = [n for n in torchvision_classifiers() if fnmatch.fnmatchcase(n, pattern)]
            if not names:
                raise PadbiasError(f"--padbias-model={spec}: no torchvision classification model matches {pattern!r}")
            out += names
        else:
            out.append(spec)
    return tuple(dict.fromkeys(out))


def resolve_devices(devices) -> tuple[str, ...]:
    """With several devices, ``auto`` becomes the device it means here and every device must
    be available (PadbiasError naming the one that is not). One device is left as given:
    it is checked where it always was (``cuda`` at start-up, ``auto`` when first used)."""
    devices = tuple(dict.fromkeys(devices))
    if len(devices) < 2:
        return devices
    from .models import resolve_device

    resolved = []
    for device in devices:
        try:
            resolved.append(resolve_device(device))
        except PadbiasError:
            raise PadbiasError(f"--padbias-device={','.join(devices)}: {device} is not available here (no CUDA device); "
                               "list only devices this machine has (accepted: cpu, cuda, auto)") from None
    return tuple(dict.fromkeys(resolved))


def _slug(text: str) -> str:
    return re.sub(r"[^\w.:+-]+", "_", text).strip("_") or "model"


def make_targets(models, devices) -> list[Target]:
    """Models x devices, model-major; ids unique (the device is in the id only when several)."""
    targets, taken = [], set()
    for model in models:
        for device in devices:
            base = _slug(model) + (f"-{device}" if len(devices) > 1 else "")
            tid, n = base, 1
            while tid in taken:
                n += 1
                tid = f"{base}~{n}"
            taken.add(tid)
            targets.append(Target(tid, model, device))
    return targets


def strip_target(nodeid: str, tid: str | None) -> str:
    """The test id a run of this target alone gives: ``t[resnet50]`` -> ``t``,
    ``t[33-resnet50]`` -> ``t[33]`` (the target's id is the last parameter)."""
    if tid is None:
        return nodeid
    if nodeid.endswith(f"[{tid}]"):
        return nodeid[: -len(tid) - 2]
    if nodeid.endswith(f"-{tid}]"):
        return nodeid[: -len(tid) - 2] + "]"
    return nodeid


def strip_group(nodeid: str) -> str:
    """pytest-xdist's ``--dist loadgroup`` appends ``@<group>`` to the test ids it reports;
    a serial run has none."""
    at = nodeid.rfind("@")
    return nodeid[:at] if at > nodeid.rfind("]") and at > nodeid.rfind("::") else nodeid


def host_key(spec) -> str:
    """Which machine an execnet spec (``popen``, ``ssh=HOST``, ``socket=ADDR``, ...) runs on."""
    if getattr(spec, "via", None):
        return f"via:{spec.via}"
    for kind in ("ssh", "socket", "vagrant_ssh"):
        value = getattr(spec, kind, None)
        if value:
            return f"{kind}:{value}"
    return "local"


def host_counts(specs) -> dict[str, int]:
    counts: dict[str, int] = {}
    for spec in specs:
        counts[host_key(spec)] = counts.get(host_key(spec), 0) + 1
    return counts


def target_of(nodeid: str, ids) -> str | None:
    """The target id a test id ends with (longest first), or None."""
    nodeid = strip_group(nodeid)
    for tid in sorted(ids, key=len, reverse=True):
        if nodeid.endswith(f"[{tid}]") or nodeid.endswith(f"-{tid}]"):
            return tid
    return None


def model_group_scheduling(config, log, ids):
    """pytest-xdist's ``loadgroup`` scheduling with each target's tests as one group, so a
    model's tests (and its shared analyses) stay on one worker and the models are
    balanced across the workers; other tests are scheduled one by one (or by their own
    ``xdist_group`` where pytest-xdist marks the test ids)."""
    from xdist.scheduler import LoadGroupScheduling

    class ModelGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            tid = target_of(nodeid, ids)
            return f"padbias-model:{tid}" if tid is not None else super()._split_scope(nodeid)

    return ModelGroupScheduling(config, log)
