"""Benchmark of circular padding while training: ``F.pad(mode="circular")`` (what
``nn.Conv2d`` does) against the slices of :func:`pytest_padbias.training.circular_padding_by_slices`.

    .venv/bin/python bench/bench_circular_padding.py            # 5 interleaved repeats
    .venv/bin/python bench/bench_circular_padding.py --repeats 9

Times one training epoch (forward, backward, Adam step; one thread, channels-last, batch 64)
of the circularly padded letters classifier on 6 000 letters at 28x28, once each way per
repeat in alternating order, and the zero-padded classifier as the reference. Prints the
median seconds per epoch and the speed-up (F.pad / slices).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pytest_padbias import zoo  # noqa: E402
from pytest_padbias.training import circular_padding_by_slices  # noqa: E402


def epoch_seconds(x, y, mode: str, slices: bool) -> float:
    torch.manual_seed(0)
    model = zoo.letters_cnn(mode).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with circular_padding_by_slices(model) if slices else contextlib.nullcontext():
        start = time.perf_counter()
        for i in range(0, len(x), 64):
            loss = F.cross_entropy(model(x[i : i + 64].contiguous(memory_format=torch.channels_last)), y[i : i + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x, y = zoo.letters("train", 28, 6000)
    cases = {"circular, F.pad": ("circular", False), "circular, slices": ("circular", True), "zeros": ("zeros", False)}
    times = {name: [] for name in cases}
    for r in range(args.repeats):
        for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
            times[name].append(epoch_seconds(x, y, *cases[name]))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in median.items():
        print(f"{name:17s} {t:.3f} s/epoch")
    print(f"slices against F.pad: {median['circular, F.pad'] / median['circular, slices']:.2f}x; circular with slices "
          f"costs {median['circular, slices'] / median['zeros']:.2f}x zeros (median of {args.repeats} interleaved repeats)")


if __name__ == "__main__":
    main()
