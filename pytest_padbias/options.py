"""Command-line options and ini keys of the ``padbias`` group, validated where parsed.

Every option is ``--padbias-NAME`` on the command line and ``padbias_NAME`` in the ini
file; the command line wins. Values are plain strings and numbers so pytest-xdist can
ship them to workers. Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

DEFAULT_MODEL = "mobilenet_v2"
DEVICES = ("cpu", "cuda", "auto")
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
MAX_SIDE = 2**20  # pixels per side of --padbias-input-size


def parse_input_size(text: str) -> tuple[int, int]:
    """``"224"`` or ``"224x320"`` (height x width) -> (224, 224) / (224, 320)."""
    m = re.fullmatch(r"\s*(-?\d+)\s*(?:[xX×,]\s*(-?\d+))?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not an input size; use H or HxW with positive integers, e.g. 225 or 225x321")
    if max(len(g.lstrip("-").lstrip("0")) for g in m.groups() if g is not None) > 7:  # int() refuses > 4300 digits
        raise argparse.ArgumentTypeError(f"{str(text)[:20]!r}... is too large an input size; use at most {MAX_SIDE} per side")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"input size {h}x{w} must be positive; use H or HxW with positive integers, e.g. 225")
    if max(h, w) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"input size {h}x{w} is too large; use at most {MAX_SIDE} per side")
    return h, w


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; {what} must be an integer >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; {what} must be an integer >= {low}")
        return value

    parse.__name__ = what
    return parse


def parse_device(text: str) -> str:
    """``cpu``, ``cuda``, ``auto`` or a comma-separated list of them (``cpu,cuda``)."""
    parts = [p.strip().lower() for p in str(text).split(",")]
    for part in parts:
        if part not in DEVICES:
            shown = repr(part) if len(parts) > 1 else repr(text)
            raise argparse.ArgumentTypeError(f"{shown} is not a device; accepted: {', '.join(DEVICES)}, "
                                             "or a comma-separated list of them such as cpu,cuda")
    return ",".join(dict.fromkeys(parts))


def parse_weights(text: str) -> str:
    value = str(text).strip()
    if value in ("default", "none"):
        return value
    path = Path(value)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not accepted; use default, none, or a path to a {'/'.join(WEIGHT_SUFFIXES)} weights file"
        )
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise argparse.ArgumentTypeError(f"weights file {value[:80]!r} is not a usable path ({exc.__class__.__name__})") from None
    if not is_file:
        raise argparse.ArgumentTypeError(f"weights file {value} does not exist")
    return value


def parse_model(text: str) -> str:
    value = str(text).strip()
    if not value:
        raise argparse.ArgumentTypeError("the model name is empty; give a torchvision model name (e.g. resnet50) or package.module:callable")
    return value


def parse_path(text: str) -> str:
    value = str(text).strip()
    if not value:
        raise argparse.ArgumentTypeError("the path is empty")
    return value


def parse_dataset(text: str) -> str:
    value = str(text).strip()
    if not value:
        raise argparse.ArgumentTypeError("the dataset path is empty; give an ImageFolder (one sub-folder of images per class)")
    try:
        is_dir = Path(value).is_dir()
    except (OSError, ValueError) as exc:  # e.g. a name longer than the file system allows, or a NUL byte
        raise argparse.ArgumentTypeError(f"dataset folder {value[:80]!r} is not a usable path ({exc.__class__.__name__})") from None
    if not is_dir:
        raise argparse.ArgumentTypeError(f"dataset folder {value} does not exist; give an ImageFolder (one sub-folder of images per class)")
    return value


ZOO_PROFILES = ("quick", "report")


def parse_zoo_profile(text: str) -> str:
    value = str(text).strip().lower()
    if value not in ZOO_PROFILES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a zoo profile; accepted: {', '.join(ZOO_PROFILES)}")
    return value


def parse_zoo_data(text: str) -> str:
    value = str(text).strip()
    if not value:
        raise argparse.ArgumentTypeError("the zoo data folder is empty; give the root folder of torchvision's EMNIST "
                                         "(the one holding EMNIST/raw/)")
    try:
        is_dir = Path(value).expanduser().is_dir()
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"zoo data folder {value[:80]!r} is not a usable path ({exc.__class__.__name__})") from None
    if not is_dir:
        raise argparse.ArgumentTypeError(f"zoo data folder {value} does not exist; give the root folder of torchvision's "
                                         "EMNIST (the one holding EMNIST/raw/)")
    return value


def parse_compare(text: str) -> str:
    from .compare import load_run

    load_run(text)  # raises ArgumentTypeError naming the file and the problem
    return str(text)


def parse_compare_fail(text: str) -> str:
    from .compare import parse_rules

    parse_rules(text)
    return str(text)


def parse_max_memory(text: str) -> str:
    from .resources import parse_max_memory as parse

    return parse(text)


#: name -> (parser, default, help). The parser raises ArgumentTypeError on bad values.
OPTIONS = {
    "model": (parse_model, DEFAULT_MODEL,
              "model to audit: a torchvision classifier name (resnet50, mobilenet_v3_large, ...), "
              "torchvision:NAME, timm:NAME, package.module:callable or path/to/file.py:callable "
              "returning an nn.Module; torchvision:* is every torchvision classifier (also torchvision:resnet*). "
              "Give it several times to audit several models: each test using padbias_model runs once per model "
              f"(default: {DEFAULT_MODEL})"),
    "weights": (parse_weights, "default",
                "default (torchvision's weights from the hub cache, $TORCH_HOME or an offline package, "
                "else downloaded), none (random init), or a .pth/.pt/.safetensors state dict"),
    "input-size": (parse_input_size, None, "input size H or HxW (default: the weights' own crop size, else 224)"),
    "device": (parse_device, "cpu",
               "cpu, cuda or auto, or several (cpu,cuda): the tests run on each, for each model (default: cpu)"),
    "seed": (_int_at_least(0, "--padbias-seed"), 0, "seed for images, shifts, hypothesis and random controls (default: 0)"),
    "images": (_int_at_least(1, "--padbias-images"), 32, "number of natural photographs in padbias_images (default: 32)"),
    "max-examples": (_int_at_least(1, "--padbias-max-examples"), 50, "hypothesis examples per shift search (default: 50)"),
    "dataset": (parse_dataset, None,
                "labelled images for the accuracy claims: an ImageFolder (one sub-folder per class, named after the "
                "weights' categories or ImageNet's n01440764... folders), e.g. an ImageNet validation folder"),
    "dataset-limit": (_int_at_least(0, "--padbias-dataset-limit"), 0,
                      "use at most this many images of --padbias-dataset, drawn with the seed across classes (0 = all)"),
    "zoo-profile": (parse_zoo_profile, "quick",
                    "training budget of the zoo's models in the reproducibility suites: quick (default, a cold run in "
                    "minutes on 2 CPU cores) or report (the report's protocol: 60 000 images, 3 seeds, early stopping)"),
    "zoo-seeds": (_int_at_least(1, "--padbias-zoo-seeds"), None,
                  "training seeds per zoo model: --padbias-seed, the next, ... (default: the zoo profile's)"),
    "zoo-epochs": (_int_at_least(1, "--padbias-zoo-epochs"), None,
                   "most training epochs of the zoo's letter classifiers; early stopping may end sooner (default: the zoo profile's)"),
    "zoo-train-images": (_int_at_least(26, "--padbias-zoo-train-images"), None,
                         "training images of the zoo's letter classifiers (default: the zoo profile's; the report used 60 000)"),
    "zoo-data": (parse_zoo_data, None,
                 "train the zoo's letter classifiers on EMNIST letters read from this folder, laid out as "
                 "torchvision.datasets.EMNIST(root, split='letters') reads it (EMNIST/raw/*-idx?-ubyte[.gz]); never downloaded "
                 "(default: synthetic letters rendered offline)"),
    "json": (parse_path, None, "write the gate and claim results as JSON to this path"),
    "report-dir": (parse_path, None,
                   "write the HTML report (with pytest-html) and the JSON to this folder, named after the model, "
                   "input size and weights; an existing report of another model is never overwritten"),
    "compare": (parse_compare, None, "compare this run with an earlier --padbias-json file; show old vs new"),
    "compare-fail": (parse_compare_fail, None,
                     "with --padbias-compare, fail on regressions beyond these bounds, e.g. pans:+0.5%,consistency:-2% "
                     "(X% of a fraction = X percentage points)"),
    "max-memory": (parse_max_memory, "auto",
                   "memory the analyses may use, e.g. 8GiB or 512MiB; they run in chunks that fit, and a request "
                   "that cannot fit fails before it starts (default: auto, half the memory available)"),
}


@dataclass(frozen=True)
class Settings:
    """The resolved options of one run (command line over ini over default)."""

    model: str = DEFAULT_MODEL
    weights: str = "default"
    input_size: tuple[int, int] | None = None
    device: str = "cpu"
    seed: int = 0
    images: int = 32
    max_examples: int = 50
    zoo_profile: str = "quick"
    zoo_seeds: int | None = None
    zoo_epochs: int | None = None
    zoo_train_images: int | None = None
    zoo_data: str | None = None
    dataset: str | None = None
    dataset_limit: int = 0
    json: str | None = None
    report_dir: str | None = None
    compare: str | None = None
    compare_fail: str | None = None
    max_memory: str = "auto"
    html: str | None = None
    explicit_model: bool = False
    #: Every --padbias-model and --padbias-device of the run; ``model`` and ``device`` above
    #: are the test's own (the first ones outside a model's tests).
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    devices: tuple[str, ...] = ("cpu",)


def dest(name: str) -> str:
    return "padbias_" + name.replace("-", "_")


#: Options that may be given several times; their ini keys hold a list (``args``: one
#: value per line or separated by spaces, shell-quoted).
REPEATABLE = ("model", "device")


def add_options(parser) -> None:
    group = parser.getgroup("padbias", "pytest-padbias: spatial bias of CNNs from zero padding")
    for name, (parse, default, help_text) in OPTIONS.items():
        repeat = {"action": "append"} if name in REPEATABLE else {}
        group.addoption(f"--padbias-{name}", dest=dest(name), type=parse, default=None, metavar=name.upper().replace("-", "_"),
                        help=help_text.replace("%", "%%"), **repeat)  # argparse %-formats help
        parser.addini(dest(name), help=f"{help_text} [--padbias-{name}]", default=None,
                      **({"type": "args"} if name in REPEATABLE else {}))


def resolve(config) -> Settings:
    """Settings from the command line, then the ini file, then defaults.

    Ini values are validated here with the same parsers; a bad one is a usage error.
    """
    values = {}
    explicit_model = False
    for name, (parse, default, _help) in OPTIONS.items():
        value = config.getoption(dest(name))
        if value is None:
            raw = config.getini(dest(name))
            if raw not in (None, "", []):
                try:
                    value = [parse(v) for v in raw] if name in REPEATABLE else parse(raw)
                except argparse.ArgumentTypeError as exc:
                    raise pytest.UsageError(f"ini option {dest(name)} = {raw!r}: {exc}") from None
        if name == "model" and value:
            explicit_model = True
        if name in REPEATABLE:
            # Several values, each device value possibly a comma-separated list; in order, once each.
            items = [default] if not value else [v for text in value for v in (text.split(",") if name == "device" else [text])]
            values[f"{name}s"] = tuple(dict.fromkeys(items))
            value = values[f"{name}s"][0]
        values[name.replace("-", "_")] = default if value is None else value
    return Settings(**values, explicit_model=explicit_model)
