"""The intervention of *Padding Aware Neurons* §4: what changes when PANs stop seeing zeros.

Four versions of one classifier run on the same images: the original (zero padding),
PAN-reflect (only the PANs' output channels padded with reflect), RAND-reflect (as many
randomly chosen non-PAN channels, layer by layer, padded with reflect: the control) and
all-reflect (every padded conv). Against the original we report, per version, the
per-class odds of Eq. 1, Odds(c) = sum_i P_variant(c | x_i) / sum_i P_original(c | x_i),
their log spread, top-1 agreement, and the samples whose logits move most (Manhattan
distance), as in §4.1-4.2.
"""
from __future__ import annotations

from .padding import PADDING_MODES, restore_channel_padding, restore_padding, switch_channel_padding, switch_padding
from .result import PadbiasError


def random_control(census, pan_channels: dict[str, list[int]], seed: int = 0) -> dict[str, list[int]]:
    """As many non-PAN channels per layer as there are PANs in it, drawn with ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = {layer.name: layer.out_channels for layer in census.layers}
    control = {}
    for name, pans in pan_channels.items():
        others = np.setdiff1d(np.arange(sizes[name]), pans)
        take = min(len(pans), len(others))
        control[name] = sorted(rng.choice(others, size=take, replace=False).tolist())
    return control


def _logits(model, images, chunk_size):
    import torch

    with torch.no_grad():
        outs = [model(chunk) for chunk in torch.split(images, chunk_size or images.shape[0])]
    logits = torch.cat([o if isinstance(o, torch.Tensor) else o[0] for o in outs]).double().cpu()
    if logits.ndim != 2:
        raise PadbiasError(f"the intervention needs a classifier returning logits [N, classes]; the model returned shape {tuple(logits.shape)}")
    return logits


def compare_outputs(original, variant, categories=None, top: int = 10) -> dict:
    """Eq. 1 odds, log-odds spread, top-1 agreement and largest logit changes of ``variant``."""
    import torch

    p0, p1 = original.softmax(1), variant.softmax(1)
    odds = p1.sum(0) / p0.sum(0)
    log_odds = odds.log()
    order = torch.argsort(log_odds)
    names = categories or [str(i) for i in range(original.shape[1])]
    distance = (variant - original).abs().sum(1)  # Manhattan distance between logit vectors
    moved = torch.argsort(distance, descending=True)[:top]
    pred0, pred1 = original.argmax(1), variant.argmax(1)

    def classes(idx):
        return [{"class": names[i], "odds": float(odds[i])} for i in idx.tolist()]

    return {
        "top1_agreement": float((pred0 == pred1).double().mean()),
        "log_odds": {
            "std": float(log_odds.std()) if len(log_odds) > 1 else 0.0,
            "min": float(log_odds.min()),
            "max": float(log_odds.max()),
            "mean_abs": float(log_odds.abs().mean()),
            "classes_beyond_5pct": int((log_odds.abs() > 0.05).sum()),
        },
        "lowest_odds": classes(order[:top]),
        "highest_odds": classes(order.flip(0)[:top]),
        "largest_logit_change": [
            {"sample": int(i), "manhattan": float(distance[i]), "original": names[int(pred0[i])], "variant": names[int(pred1[i])]}
            for i in moved.tolist()
        ],
        "mean_manhattan": float(distance.mean()),
    }


def pan_reflect_experiment(model, images, census, theta: float = 0.5, seed: int = 0, mode: str = "reflect",
                           categories=None, top: int = 10, chunk_size: int | None = None, budget: int | None = None) -> dict:
    """Original vs PAN-``mode`` vs RAND-``mode`` vs all-``mode`` on ``images`` (paper §4).

    ``census`` is a :class:`~pytest_padbias.pans.PanCensus` of ``model``; PANs are its
    neurons with a PAN border at ``theta``. The model is restored before returning.
    ``chunk_size`` images per forward pass; when None and a ``budget`` in bytes is given
    (``--padbias-max-memory``), as many as fit it (:func:`pytest_padbias.resources.plan_chunks`,
    refused before any forward pass when one image does not fit); else all at once.
    """
    import numpy as np

    if mode not in PADDING_MODES or mode == "zeros":
        raise PadbiasError(f"intervention mode must be one of reflect, replicate, circular; got {mode!r}")
    is_pan = census.is_pan(theta)
    pan_channels: dict[str, list[int]] = {}
    for row in np.nonzero(is_pan)[0].tolist():
        pan_channels.setdefault(census.layers[int(census.layer_index[row])].name, []).append(int(census.channel[row]))
    control = random_control(census, pan_channels, seed)
    if chunk_size is None and budget is not None:
        from .resources import forward_batch_size

        chunk_size = forward_batch_size(model, tuple(images.shape[-2:]), int(images.shape[0]), budget)
    was_training = model.training
    model.eval()
    try:
        original = _logits(model, images, chunk_size)
        results = {}
        for label, chosen in (("pan", pan_channels), ("random", control)):
            handle = switch_channel_padding(model, chosen, mode)
            try:
                results[label] = compare_outputs(original, _logits(model, images, chunk_size), categories, top)
            finally:
                restore_channel_padding(model, handle)
        previous = switch_padding(model, mode)
        try:
            results["all"] = compare_outputs(original, _logits(model, images, chunk_size), categories, top)
        finally:
            restore_padding(model, previous)
    finally:
        model.train(was_training)
    return {
        "theta": theta,
        "mode": mode,
        "seed": seed,
        "n_images": int(images.shape[0]),
        "switched_neurons": {"pan": int(sum(map(len, pan_channels.values()))),
                             "random": int(sum(map(len, control.values()))), "of": census.n_neurons},
        "pan_channels": pan_channels,
        "random_channels": control,
        f"pan_{mode}": results["pan"],
        f"random_{mode}": results["random"],
        f"all_{mode}": results["all"],
    }
