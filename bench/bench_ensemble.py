"""Benchmark: would a batched ensemble train the letters zoo faster than one model per core?

    .venv/bin/python bench/bench_ensemble.py              # K = 4, 8, 16 models, 5 interleaved repeats
    .venv/bin/python bench/bench_ensemble.py --sizes 4 8 --repeats 7

Issue 13 suggests training several letters models at once on one core (one batched
ensemble: grouped convolutions, or ``torch.func`` + ``vmap``). This times one Adam step of
today's trainer (one :func:`pytest_padbias.zoo.letters_cnn`, channels-last, batch 64 at
28x28, one thread) against one step of K such models fused into one network (every conv
grouped K ways, the two fully connected layers as batched matrix products, K batches of
64), per model, on one thread. The runs of a repeat are interleaved (the machine is
shared) and the median over repeats is printed, with the ratio single / ensemble per
model-step (above 1: the ensemble is faster).

It also prints how far an ensemble member's gradient is from the same model trained
alone: the fused kernels add in another order, so the members' weights would depend on
how many models train beside them unless every model always trained in the same
ensemble.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pytest_padbias import zoo  # noqa: E402

BATCH, SIZE, CLASSES = 64, 28, len(zoo.LETTERS)


class Ensemble(nn.Module):
    """K letters CNNs (zero padding, no batch norm) as one network: conv channels grouped
    K ways, the head as batched matmuls; input [B, K, H, W] (member k's images in channel k)."""

    def __init__(self, members):
        super().__init__()
        self.k = len(members)
        convs = [[m for m in member.modules() if isinstance(m, nn.Conv2d)] for member in members]
        fcs = [[m for m in member.modules() if isinstance(m, nn.Linear)] for member in members]
        self.convs = nn.ModuleList()
        for layer in zip(*convs):
            c = layer[0]
            fused = nn.Conv2d(c.in_channels * self.k, c.out_channels * self.k, 3, c.stride, 1, groups=self.k)
            with torch.no_grad():
                fused.weight.copy_(torch.cat([m.weight for m in layer]))
                fused.bias.copy_(torch.cat([m.bias for m in layer]))
            self.convs.append(fused)
        self.w1 = nn.Parameter(torch.stack([fc[0].weight.t() for fc in fcs]).detach().clone())
        self.b1 = nn.Parameter(torch.stack([fc[0].bias for fc in fcs])[:, None].detach().clone())
        self.w2 = nn.Parameter(torch.stack([fc[1].weight.t() for fc in fcs]).detach().clone())
        self.b2 = nn.Parameter(torch.stack([fc[1].bias for fc in fcs])[:, None].detach().clone())

    def forward(self, x):
        x = (x - zoo.LETTERS_MEAN) / zoo.LETTERS_STD
        for conv in self.convs:
            x = F.relu(conv(x))
        x = x.mean((2, 3)).view(x.shape[0], self.k, -1).transpose(0, 1)  # [K, B, C]
        x = torch.baddbmm(self.b2, F.relu(torch.baddbmm(self.b1, x, self.w1)), self.w2)
        return x.transpose(0, 1)  # [B, K, classes]


def _data(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, k, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (BATCH, k), generator=g)


def single_step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def ensemble_step(model, opt, x, y):
    loss = F.cross_entropy(model(x).reshape(-1, CLASSES), y.reshape(-1), reduction="sum") / BATCH
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def seconds_per_model_step(k: int, steps: int) -> float:
    """Thread time of one model's Adam step: alone (k = 1) or as one of k fused members."""
    torch.manual_seed(k)
    x, y = _data(k)
    if k == 1:
        model = zoo.letters_cnn().to(memory_format=torch.channels_last)
        x, y, step = x.contiguous(memory_format=torch.channels_last), y[:, 0], single_step
    else:
        model = Ensemble([zoo.letters_cnn() for _ in range(k)]).to(memory_format=torch.channels_last)
        x, step = x.contiguous(memory_format=torch.channels_last), ensemble_step
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):  # warm-up
        step(model, opt, x, y)
    started = time.thread_time()
    for _ in range(steps):
        step(model, opt, x, y)
    return (time.thread_time() - started) / steps / k


def gradient_gap(k: int = 4) -> float:
    """Largest |difference| between member 0's first-conv gradient in a k-ensemble and the
    same model's gradient alone, on the same batch."""
    torch.manual_seed(0)
    members = [zoo.letters_cnn() for _ in range(k)]
    x, y = _data(k)
    alone = members[0]
    F.cross_entropy(alone(x[:, :1]), y[:, 0]).backward()
    fused = Ensemble(members)
    (F.cross_entropy(fused(x).reshape(-1, CLASSES), y.reshape(-1), reduction="sum") / BATCH).backward()
    first = alone[0][1].weight.grad
    return float((fused.convs[0].weight.grad[: first.shape[0]] - first).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16], help="ensemble sizes K")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times = {k: [] for k in [1, *args.sizes]}
    for r in range(args.repeats):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for k in order:
            times[k].append(seconds_per_model_step(k, args.steps))
    single = statistics.median(times[1])
    print(f"today's trainer: {single * 1e3:.2f} ms per model-step (median of {args.repeats}, one thread)")
    for k in args.sizes:
        t = statistics.median(times[k])
        print(f"ensemble of {k:2d}: {t * 1e3:.2f} ms per model-step, single / ensemble {single / t:.2f}x")
    print(f"member 0's first-conv gradient, fused vs alone: max |difference| {gradient_gap():.3g}")


if __name__ == "__main__":
    main()
