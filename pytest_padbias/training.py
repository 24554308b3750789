"""The zoo's training loop: Adam until the validation loss stops falling.

The reproducibility report (section 3.1) trains "until validation loss decreases (Early
stopping) using Adam optimizer with learning rate 1e-3". Stopping at the first epoch whose
validation loss does not fall leaves each model wherever Adam's noisy walk happens to be:
on the letters CNN, the validation loss of consecutive epochs at lr 1e-3 moves by a factor
of two and test accuracy by 2-4 points, which is the seed-to-seed noise that hid Table 1.
So :func:`fit_until_converged` keeps that rule and makes its end point repeatable: when the
validation loss has not improved for ``patience`` epochs, the best weights so far are
restored and the learning rate divided by ten (at most ``lr_drops`` times); training stops
at the next plateau after the last drop, or at ``max_epochs``, with the best weights. What
happened (epochs run, best epoch, final validation loss, why it stopped) is returned and
stored with each cached model.
"""
from __future__ import annotations

import contextlib
import copy

#: Fewer than this relative fall of the validation loss is no improvement.
MIN_IMPROVEMENT = 1e-4
EVAL_BATCH = 1024


def _batch(x, device):
    """A batch on ``device``; image batches in channels-last order, in which the zoo's
    small convolutions train about 1.2x (letters) and 1.4x (detector) faster on one CPU
    thread (``bench/bench_train_layout.py``)."""
    import torch

    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _circular_pad(x, padding):
    """``x`` padded circularly by ``padding = (ph, pw)``: the same values as
    ``F.pad(x, (pw, pw, ph, ph), mode="circular")``, built from slices of ``x``."""
    import torch

    ph, pw = padding
    if ph:
        x = torch.cat([x[:, :, -ph:], x, x[:, :, :ph]], 2)
    if pw:
        x = torch.cat([x[:, :, :, -pw:], x, x[:, :, :, :pw]], 3)
    return x


def _conv_circular_by_slices(conv, x):
    import torch.nn.functional as F

    return F.conv2d(_circular_pad(x, conv.padding), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


@contextlib.contextmanager
def circular_padding_by_slices(model):
    """While the block runs, the circularly padded 2-d convs of ``model`` pad by
    concatenating slices instead of ``F.pad(mode="circular")``: the same forward values,
    and on channels-last batches a training step about 1.4x faster on one CPU thread
    (``bench/bench_circular_padding.py``), where circular padding otherwise costs twice the
    other modes. The convs are left as they were (plain ``nn.Conv2d``) afterwards."""
    import functools

    import torch.nn as nn

    patched = [m for m in model.modules() if type(m) is nn.Conv2d and m.padding_mode == "circular"
               and isinstance(m.padding, tuple) and "forward" not in vars(m)]
    for conv in patched:
        conv.forward = functools.partial(_conv_circular_by_slices, conv)
    try:
        yield model
    finally:
        for conv in patched:
            del conv.forward


@contextlib.contextmanager
def cpu_threads(n: int = 1):
    """Run the block with ``n`` torch CPU threads (restored after). A small model trains
    faster on one thread per core than on two threads sharing both, and one thread makes a
    seed's weights independent of the machine's core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mean_loss(model, x, y, loss_fn, device="cpu") -> float:
    """``loss_fn`` averaged over ``(x, y)`` in eval mode, batch by batch."""
    import torch

    model.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(x), EVAL_BATCH):
            xb, yb = _batch(x[i : i + EVAL_BATCH], device), y[i : i + EVAL_BATCH].to(device)
            total += float(loss_fn(model(xb), yb)) * len(xb)
    return total / max(1, len(x))


def _epoch(model, opt, x, y, loss_fn, order, batch_size, device, on_step):
    model.train()
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        loss = loss_fn(model(_batch(x[idx], device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        on_step()


def fit_until_converged(model, train, val, loss_fn, *, seed: int, max_epochs: int, patience: int = 1,
                        lr_drops: int = 2, batch_size: int = 64, lr: float = 1e-3, device: str = "cpu", progress=None):
    """Train ``model`` on ``train = (x, y)`` with Adam at ``lr``, seeded shuffles, until the
    loss on ``val = (x, y)`` stops falling (see the module doc). Returns ``(model, info)``:
    the model with its best weights, in eval mode, and ``info`` with ``epochs``,
    ``best_epoch``, ``val_loss``, ``lr_drops`` and ``stopped`` ("converged" or "max epochs")."""
    import torch

    x, y = train
    model.to(device, memory_format=torch.channels_last)  # see _batch; the saved weights are made contiguous
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    done = [0]

    def on_step():
        done[0] += 1
        if progress is not None:
            progress(done[0], max_epochs * steps_per_epoch)

    with circular_padding_by_slices(model):
        best, best_state, best_epoch, epoch, drops, stopped = _fit(model, opt, x, y, val, loss_fn, gen, max_epochs, patience,
                                                                   lr_drops, batch_size, device, on_step)
    if best_state is not None:
        model.load_state_dict(best_state)
    info = {"epochs": epoch, "best_epoch": best_epoch, "val_loss": round(best, 6), "lr_drops": drops, "stopped": stopped}
    return model.eval(), info


def _fit(model, opt, x, y, val, loss_fn, gen, max_epochs, patience, lr_drops, batch_size, device, on_step):
    """The epochs of :func:`fit_until_converged`: returns ``(best, best_state, best_epoch,
    epochs, lr drops, why it stopped)``."""
    import torch

    best, best_state, best_epoch, waited, drops, stopped = float("inf"), None, 0, 0, 0, "max epochs"
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        _epoch(model, opt, x, y, loss_fn, torch.randperm(len(x), generator=gen), batch_size, device, on_step)
        loss = mean_loss(model, *val, loss_fn, device)
        if loss < best * (1 - MIN_IMPROVEMENT):
            best, best_state, best_epoch, waited = loss, copy.deepcopy(model.state_dict()), epoch, 0
            continue
        waited += 1
        if waited < patience:
            continue
        if drops == lr_drops:
            stopped = "converged"
            break
        drops, waited = drops + 1, 0
        model.load_state_dict(best_state)
        for group in opt.param_groups:
            group["lr"] *= 0.1
    return best, best_state, best_epoch, epoch, drops, stopped
