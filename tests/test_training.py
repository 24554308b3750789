"""The zoo's training loop: Adam until the validation loss stops falling, best weights kept."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pytest_padbias.training import fit_until_converged, mean_loss


def _problem(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_the_returned_model_has_the_best_validation_loss_it_reports():
    train, val = _problem(0), _problem(1)
    model, info = fit_until_converged(_model(), train, val, F.cross_entropy, seed=0, max_epochs=40, batch_size=16, lr=0.05)
    assert 1 <= info["best_epoch"] <= info["epochs"] <= 40
    assert info["stopped"] in ("converged", "max epochs") and 0 <= info["lr_drops"] <= 2
    assert round(mean_loss(model, *val, F.cross_entropy), 6) == info["val_loss"]  # the best weights, restored
    assert not model.training


def test_a_plateau_ends_training_after_the_allowed_rate_drops():
    """With a learning rate of 0 nothing improves after the first epoch: each plateau of
    ``patience`` epochs drops the rate once, and the next one after the last drop stops."""
    train, val = _problem(0), _problem(1)
    _m, info = fit_until_converged(_model(), train, val, F.cross_entropy, seed=0, max_epochs=50, patience=2, lr_drops=1,
                                   lr=0.0)
    assert info == {"epochs": 5, "best_epoch": 1, "val_loss": info["val_loss"], "lr_drops": 1, "stopped": "converged"}
    _m, info = fit_until_converged(_model(), train, val, F.cross_entropy, seed=0, max_epochs=3, patience=5, lr=0.0)
    assert info["epochs"] == 3 and info["stopped"] == "max epochs"


def test_the_same_seed_gives_the_same_weights():
    train, val = _problem(0), _problem(1)
    a, _ = fit_until_converged(_model(), train, val, F.cross_entropy, seed=4, max_epochs=3)
    b, _ = fit_until_converged(_model(), train, val, F.cross_entropy, seed=4, max_epochs=3)
    c, _ = fit_until_converged(_model(), train, val, F.cross_entropy, seed=5, max_epochs=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_circular_padding_by_slices_gives_the_values_of_f_pad_and_leaves_the_convs_plain():
    from pytest_padbias.training import circular_padding_by_slices

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"),
                          nn.Conv2d(4, 3, (3, 5), stride=2, padding=(1, 2), padding_mode="circular"),
                          nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    x = torch.randn(3, 2, 9, 10).contiguous(memory_format=torch.channels_last)
    expected = model(x)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with circular_padding_by_slices(model):
        assert all("forward" in vars(m) for m in model[:2]) and "forward" not in vars(model[2])
        got = model(x)
        got.square().sum().backward()
    assert torch.equal(got, expected)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)  # the same sums, added in another order
    assert not any("forward" in vars(m) for m in model.modules())
