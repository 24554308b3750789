"""Memory bounds: what a forward pass of a model needs, the run's budget, and chunk plans.

:func:`activation_profile` runs the model once on the meta device (no real compute, any
input size) with batch 1 and replays the lifetime of every tensor the forward pass makes:
a tensor is counted from the op that returns it until Python frees it (views and in-place
results are not counted twice); it is the one replay the padding check of that model and
size reads too (:func:`pytest_padbias.trace.shared_replay`). Its ``peak`` is the most
activation memory alive at once for one image; activations grow linearly with the batch,
so a batch of ``n`` needs about ``n * peak`` (one batch-1 replay serves every batch size).
What the meta pass cannot see -- oneDNN's reordered copies of conv inputs and outputs,
im2col buffers, allocator slack -- is covered by :data:`SAFETY_FACTOR`, measured against
the peak resident memory of real forward passes (``tests/test_resources.py`` checks the
estimate stays within a stated factor of the measurement). Peak RSS above the start of a
real forward pass (torch 2.14 CPU, one thread, fresh process) against
``batch x peak``:

=============  =====  =====  ========  ========  =====
model          size   batch  estimate  measured  ratio
=============  =====  =====  ========  ========  =====
resnet18       224    8      49 MiB    49 MiB    1.00
resnet18       1024   1      128 MiB   128 MiB   1.00
resnet18       2048   1      512 MiB   512 MiB   1.00
mobilenet_v2   224    8      80 MiB    105 MiB   1.31
mobilenet_v2   224    16     160 MiB   233 MiB   1.46
mobilenet_v2   1024   1      208 MiB   233 MiB   1.12
resnet50       224    1      10 MiB    18 MiB    1.79
resnet50       224    8      80 MiB    129 MiB   1.61
resnet50       224    16     160 MiB   196 MiB   1.22
resnet50       1024   1      208 MiB   243 MiB   1.17
resnet50       2048   1      832 MiB   835 MiB   1.00
=============  =====  =====  ========  ========  =====

Large inputs are estimated to within 17%; at 224 the real pass adds a roughly fixed
10-50 MiB (oneDNN's reordered weights, allocator slack), which the plan covers with
:data:`PASS_OVERHEAD` plus twice the largest parameter tensor per pass; per image it
plans the input plus :data:`SAFETY_FACTOR` x the peak (1.5: small inputs measured up to
1.6x the estimate on a busy machine). Every measurement above lies below that plan.

:func:`memory_budget` turns ``--padbias-max-memory`` (``8GiB``, ``512MiB``, ``auto``)
into bytes; ``auto`` is :data:`AUTO_FRACTION` of the memory the kernel reports available.
:func:`plan_chunks` says how many images one forward pass may take within the budget, or
raises :class:`PadbiasError` before anything runs when a single image does not fit.

Nothing here imports torch at import time: the option parser lives here too.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass

from .geometry import _parse_size
from .result import PadbiasError

#: Real peak / meta estimate is at most this for the models measured (see the table above).
SAFETY_FACTOR = 1.5
#: Per forward pass whatever the batch: allocator slack and oneDNN's reordered weights
#: (planned as this plus twice the model's largest parameter tensor).
PASS_OVERHEAD = 32 * 2**20
#: ``--padbias-max-memory=auto``: this share of the memory available when the gate runs.
AUTO_FRACTION = 0.5
#: Used when neither /proc/meminfo nor sysconf says how much memory is available.
FALLBACK_AVAILABLE = 4 * 2**30
OPTION = "--padbias-max-memory"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
ACCEPTED = "auto, or a size such as 512MiB, 8GiB, 2.5GB or a number of bytes (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
#: Smaller budgets cannot hold even the interpreter's own working set; they are typos.
MIN_BUDGET = 2**20


def parse_memory(text) -> int:
    """``"8GiB"`` -> 8589934592. ValueError naming the accepted forms otherwise."""
    value = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,3}))?\s*([A-Za-z]*)", value)
    unit = m.group(3).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a memory size; accepted: {ACCEPTED}")
    number = float(m.group(1) + (f"e{m.group(2)}" if m.group(2) else ""))
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size > 2**60:
        raise ValueError(f"{text!r} is too large a memory size; accepted: {ACCEPTED}")
    if size < MIN_BUDGET:
        raise ValueError(f"{text!r} is less than 1 MiB; accepted: {ACCEPTED}")
    return int(size)


def parse_max_memory(text) -> str:
    """The ``--padbias-max-memory`` option type: a validated plain string (xdist ships it)."""
    value = str(text).strip()
    if value.lower() == "auto":
        return "auto"
    try:
        parse_memory(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{OPTION}={text!r}: {exc}") from None
    return value


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping: MemAvailable of
    /proc/meminfo, capped by a cgroup v2/v1 memory limit; sysconf or 4 GiB otherwise."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = FALLBACK_AVAILABLE
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            available = min(available, max(0, int(limit) - usage))
        break
    return max(int(available), MIN_BUDGET)


def memory_budget(setting="auto") -> int:
    """Bytes an analysis may use: ``setting`` is ``auto`` (or None) or a size string/int."""
    if setting is None or (isinstance(setting, str) and setting.strip().lower() == "auto"):
        return int(AUTO_FRACTION * available_memory())
    if isinstance(setting, int) and not isinstance(setting, bool):
        if setting < MIN_BUDGET:
            raise PadbiasError(f"a memory budget of {setting} bytes is less than 1 MiB; accepted: {ACCEPTED}")
        return setting
    try:
        return parse_memory(setting)
    except ValueError as exc:
        raise PadbiasError(f"{OPTION}: {exc}") from None


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- the estimate


@dataclass
class ActivationProfile:
    """Activation bytes of one image's forward pass at one input size (batch 1, meta device).

    ``peak``: most bytes alive at once; ``total``: bytes of every tensor made; ``largest``:
    the largest single tensor; ``conv_outputs``: (layer, channels, height, width) of every
    2-D conv output, for analyses that keep parts of them (the PAN census).
    """

    input_size: tuple[int, int]
    peak: int
    total: int
    largest: int
    input_bytes: int
    conv_outputs: list[tuple[str, int, int, int]]
    overhead: int = PASS_OVERHEAD

    def per_image(self, safety: float = SAFETY_FACTOR) -> int:
        """The planned bytes per image: the input plus ``safety`` x the activation peak."""
        return int(self.input_bytes + safety * self.peak)


class ProfileUnavailable(PadbiasError):
    """The model's forward pass cannot be replayed on the meta device (e.g. it reads tensor
    values with ``.item()``), so its memory cannot be estimated. The gates then run with
    their own default batch sizes instead of refusing a model that may run fine."""


def activation_profile(model, input_size) -> ActivationProfile:
    """One image's activations, from the meta-device replay the padding check of the same
    model and size shares (:func:`pytest_padbias.trace.shared_replay`, made once)."""
    import torch

    from .trace import shared_replay

    h, w = _parse_size(input_size)
    if not isinstance(model, torch.nn.Module):
        raise ProfileUnavailable(f"the model is a {type(model).__name__}, not a torch.nn.Module")
    try:
        measured = shared_replay(model, (h, w)).activations
    except PadbiasError as exc:
        raise ProfileUnavailable(str(exc)) from None
    largest_param = max((p.numel() * p.element_size() for p in model.parameters()), default=0)
    return ActivationProfile((h, w), measured.peak, measured.total, measured.largest, measured.input_bytes,
                             list(measured.conv_outputs), PASS_OVERHEAD + 2 * largest_param)


def model_name(model) -> str:
    return type(model).__name__


def plan_chunks(model, input_size, n_images: int, budget: int, *, per_image_extra: int = 0, fixed: int = 0,
                what: str = "the forward pass") -> int:
    """Images per forward pass (1..n_images) so that ``n * per_image + fixed`` fits ``budget``.

    ``per_image`` is the planned activation memory of one image (:meth:`ActivationProfile.per_image`)
    plus ``per_image_extra`` (an analysis' own buffers per image in the pass); ``fixed`` is
    what the analysis keeps whatever the chunk (e.g. the census' border values of every
    image). Raises PadbiasError, before any forward pass, when one image does not fit.
    """
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise PadbiasError(f"n_images must be a positive integer; got {n_images!r}")
    h, w = _parse_size(input_size)
    profile = activation_profile(model, (h, w))
    per_image = profile.per_image() + int(per_image_extra)
    fixed = int(fixed) + profile.overhead
    room = int(budget) - fixed
    if room < per_image:
        needs = f"about {format_bytes(per_image)} per image"
        if profile.overhead > per_image // 10:
            needs += f" and {format_bytes(profile.overhead)} per forward pass"
        if fixed > profile.overhead:
            needs += f" plus {format_bytes(fixed - profile.overhead)} for {what} of all {n_images} images"
        raise PadbiasError(
            f"input {h}x{w} needs {needs} for {model_name(model)}; the budget is {format_bytes(budget)} ({OPTION}); "
            "use a smaller --padbias-input-size or raise the budget"
            + (" or use fewer images (--padbias-images)" if fixed > profile.overhead else "")
        )
    return max(1, min(n_images, room // per_image))


def census_costs(model, input_size, n_images: int, workers: int = 1, min_kernel: int = 2) -> dict:
    """Bytes :func:`pytest_padbias.pans.pan_census` (and the ``max_pans`` gate) need beyond
    the forward pass, as ``{"single"|"chunked": (per_image_extra, fixed)}``.

    A chunked census keeps every border value of every image (float32) with its sorted
    copy and two int64 counts (24 bytes each) for all layers at once; a single pass does
    so for one layer at a time. A worker handles a block of channels at a time, at least
    one channel's centre of the pass and at most ``ELEM_BUDGET`` values beyond: the single
    pass's histogram needs 21 bytes of scratch per value (a float32 copy, two float32 and
    one int64 working arrays, one mask byte), the chunked pass sorts a float32 copy. The
    gate's histogram of its strongest neuron holds one channel's centre of every image
    and its sorted copy (float32; planned at 12 bytes per value of the largest map).
    These are the numpy kernels' needs; the compiled kernel (numba) reads the centre in
    place and needs less, so with it the plan is conservative.
    """
    import torch.nn as nn

    from .pans_counts import ELEM_BUDGET

    profile = activation_profile(model, input_size)
    names = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) >= min_kernel}
    borders = [c * 2 * (oh + ow) for name, c, oh, ow in profile.conv_outputs if name in names and oh >= 3 and ow >= 3]
    centre = max((oh * ow for name, c, oh, ow in profile.conv_outputs if name in names), default=0)
    workers = max(1, workers)
    figure = 12 * centre * n_images
    return {"single": (21 * workers * centre + 24 * max(borders, default=0), figure + 21 * workers * ELEM_BUDGET),
            "chunked": (4 * workers * centre, 24 * sum(borders) * n_images + figure + 4 * workers * ELEM_BUDGET)}


def census_chunk_size(model, images, budget: int, workers: int = 1) -> int | None:
    """The ``chunk_size`` of :func:`~pytest_padbias.pans.pan_census` for ``budget``: None
    (one pass, the fastest) when every image fits at once, else the planned images per
    pass; PadbiasError before any forward pass when even one image does not fit."""
    n = int(images.shape[0])
    size = tuple(images.shape[-2:])
    try:
        costs = census_costs(model, size, n, workers)
    except ProfileUnavailable:
        return None
    try:
        if plan_chunks(model, size, n, budget, per_image_extra=costs["single"][0], fixed=costs["single"][1]) >= n:
            return None
    except PadbiasError:
        pass
    extra, fixed = costs["chunked"]
    chunk = plan_chunks(model, size, n, budget, per_image_extra=extra, fixed=fixed, what="the PAN census' border values")
    return None if chunk >= n else chunk


def forward_batch_size(model, input_size, n_images: int, budget: int, default: int | None = None) -> int:
    """Images per forward pass of a sweep: the sweep's own default, capped by the plan."""
    try:
        planned = plan_chunks(model, input_size, max(1, int(n_images)), budget)
    except ProfileUnavailable:
        return default or 1
    return max(1, min(planned, default)) if default else planned


def gate_budget(ctx) -> int:
    """The budget of a gate's context: ``ctx.max_memory``, else the automatic one."""
    budget = getattr(ctx, "max_memory", None)
    return memory_budget("auto") if budget is None else int(budget)
