"""What each gate needs from the user's model, checked before the gate runs, and how a
failure of the user's own code during a gate is told apart from a bug in pytest-padbias.

* :func:`preflight` refuses, with one sentence, a model a gate cannot analyse: parameters
  on the meta device or on several devices, a first convolution that is not 2-D (for the
  gates that feed it 2-D images), images on another device than the model.
  ``no_uneven_padding`` traces the model on the meta device, so it takes any of these.
* :func:`not_logits` is the message for a model output that is not ``[N, classes]`` logits
  (tuples such as GoogLeNet's aux outputs are refused, not guessed at; dicts and
  detection lists need a ``padbias_score`` fixture).
* :func:`describe_failure` turns an exception that escaped a gate into the test's failure
  message: the model's (or score function's) exception in one line with the stage and the
  input shape, or, when the exception was raised in pytest-padbias' own code, an internal
  error with its traceback.

Nothing here imports torch at import time.
"""
from __future__ import annotations

import contextlib
import os
import traceback

from .result import PadbiasError
from .trace import first_conv

#: Gates that run the model on real 2-D images (no_uneven_padding only traces it on meta).
IMAGE_GATES = ("shift_robust", "max_pans", "no_blind_spot")
#: Gates that feed ``padbias_images`` to the model (no_blind_spot makes its own inputs on the model's device).
USES_IMAGES = ("shift_robust", "max_pans")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _model_tensors(model):
    yield from model.parameters()
    yield from model.buffers()


def preflight(gate: str, ctx) -> None:
    """Raise :class:`PadbiasError` when ``gate`` cannot analyse ``ctx.model`` as given."""
    import torch

    model = ctx.model
    if gate not in IMAGE_GATES:
        return
    devices = sorted({str(t.device) for t in _model_tensors(model)})
    if "meta" in devices:
        raise PadbiasError(
            f"the model's parameters are on the meta device, which holds no values, and {gate} runs the model on "
            "images; give it real weights (e.g. model.to_empty(device='cpu') then load_state_dict). "
            "Only no_uneven_padding works on a meta model"
        )
    if len(devices) > 1:
        raise PadbiasError(
            f"the model's parameters and buffers are on several devices ({', '.join(devices)}); {gate} feeds each "
            "batch to one device: move the whole model with model.to(device)"
        )
    conv = first_conv(model)
    if conv is not None and len(conv[1].kernel_size) != 2:
        name, module = conv
        takes = "1-D signals [N, C, L]" if len(module.kernel_size) == 1 else "volumes [N, C, D, H, W]"
        also = " (no_uneven_padding analyses Conv1d models)" if len(module.kernel_size) == 1 else ""
        raise PadbiasError(
            f"its first convolution {name or '<model>'} is a {type(module).__name__}, which takes {takes}; "
            f"{gate} needs a model of 2-D images [N, C, H, W]{also}"
        )
    images = ctx.images
    if gate in USES_IMAGES and isinstance(images, torch.Tensor) and devices and str(images.device) != devices[0]:
        raise PadbiasError(
            f"padbias_images are on {images.device} but the model is on {devices[0]}; give images on the model's "
            "device (e.g. .to(next(padbias_model.parameters()).device) in your padbias_images fixture)"
        )


# --------------------------------------------------------------------------- model outputs


def describe_output(out) -> str:
    """A short description of a model output: type, shapes, keys."""
    import torch

    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, dict):
        return f"a {type(out).__name__} with keys {list(out)[:6]}"
    if isinstance(out, (tuple, list)):
        parts = [describe_output(o) if not isinstance(o, (tuple, list, dict)) else type(o).__name__ for o in out[:3]]
        more = ", ..." if len(out) > 3 else ""
        return f"a {type(out).__name__} of {len(out)} ({', '.join(parts)}{more})"
    return f"a {type(out).__name__}"


def not_logits(out) -> str:
    """Why ``out`` is not accepted as classifier logits, and what to give instead."""
    import torch

    what = describe_output(out)
    if isinstance(out, torch.Tensor):
        return (f"the model returned {what}, not [N, classes] logits; give a score_fn (the padbias_score fixture) "
                "returning one non-negative score per image for a model that is not a classifier")
    if isinstance(out, tuple) and out and all(isinstance(o, torch.Tensor) for o in out):
        return (f"the model returned {what}, not one [N, classes] tensor of logits; tuple outputs are refused rather "
                "than guessed at (the first element is not always the logits): gate a wrapper module that returns "
                "the logits (torchvision GoogLeNet/Inception return aux outputs only in training mode, and the gates "
                "run the model in eval mode), or give a score_fn (the padbias_score fixture)")
    return (f"the model returned {what}, not [N, classes] logits; give a score_fn (the padbias_score fixture) "
            "mapping a batch of images to one non-negative score per image, e.g. each image's best detection score "
            "for a detection or segmentation model")


# --------------------------------------------------------------------------- exceptions


@contextlib.contextmanager
def watch_inputs(model):
    """Record the shape of the last input the model was called with (``state['shape']``)."""
    import torch

    state: dict = {"shape": None}

    def hook(module, args):
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        state["shape"] = tuple(x.shape) if x is not None else None

    handle = model.register_forward_pre_hook(hook) if hasattr(model, "register_forward_pre_hook") else None
    try:
        yield state
    finally:
        if handle is not None:
            handle.remove()


#: The stage a gate was in, by the function of pytest-padbias that called the user's code.
_STAGES = {
    ("shifts", "_forward"): "evaluating shifted views",
    ("pans", "_run"): "running the PAN census",
    ("pans", "pan_census"): "running the PAN census",
    ("blindspots", "score"): "scoring stimulus placements",
    ("pan_figures", None): "drawing the PAN figures",
    ("trace", None): "tracing the model",
}


def _ours(filename: str) -> bool:
    return os.path.dirname(os.path.abspath(filename)) == _PACKAGE_DIR


def _is_torch(filename: str) -> bool:
    return "/torch/" in filename.replace(os.sep, "/")


def _calls_the_model(filename: str) -> bool:
    """A frame of torch's module call machinery (``model(x)``, ``functional_call``)."""
    path = filename.replace(os.sep, "/")
    return any(part in path for part in ("/torch/nn/modules/module.py", "/torch/_functorch/", "/torch/nn/utils/stateless.py"))


def describe_failure(gate: str, exc: BaseException, score_fn=None, state=None) -> str:
    """The failure message for an exception (not a PadbiasError) that escaped ``gate``."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [i for i, f in enumerate(frames) if _ours(f.filename)]
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    last = ours[-1] if ours else -1
    callee = frames[last + 1] if 0 <= last < len(frames) - 1 else None
    who = None
    if callee is not None and _calls_the_model(callee.filename):
        who = "the model"
    elif callee is not None and not _is_torch(callee.filename) and not _ours(callee.filename):
        code = getattr(score_fn, "__code__", None)
        is_score = code is not None and (callee.filename, callee.name) == (code.co_filename, code.co_name)
        who = "the padbias_score function" if is_score else "the model"
    if who is None:
        return (
            f"@padbias.{gate}: internal error in pytest-padbias, {type(exc).__name__}: {first_line}\n"
            "This is a bug in pytest-padbias, not in the model; please report it with this traceback:\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        )
    caller = frames[last]
    module = os.path.splitext(os.path.basename(caller.filename))[0]
    stage = _STAGES.get((module, caller.name)) or _STAGES.get((module, None)) or f"in pytest_padbias.{module}.{caller.name}"
    shape = state.get("shape") if state else None
    where = f" while {stage}" if not stage.startswith("in ") else f" {stage}"
    on = f" on an input of shape {list(shape)}" if shape is not None and who == "the model" else ""
    return f"@padbias.{gate} could not check this model: {who} raised {type(exc).__name__}{where}{on}: {first_line}"
