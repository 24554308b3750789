"""Benchmark of the zoo's trainer: models per minute, one process per core against one at a time.

    .venv/bin/python bench/bench_zoo.py                  # 4 models, 2 interleaved repeats
    .venv/bin/python bench/bench_zoo.py --models 8 --repeats 3 --train-images 3000

Trains the same letters classifiers (the quick profile's architecture and early stopping,
on a smaller training set so a repeat takes a minute or two) twice per repeat, each time
into an empty cache: ``serial``, one model after the other in this process on one thread
(how the suites trained before), and ``parallel``, :func:`pytest_padbias.zoo.train_in_parallel`
(one process per core, one thread each). The two runs of a repeat are interleaved, in
alternating order, so both see the same machine. Prints, per mode, the median over repeats
of models per minute and of seconds per converged model, the ratio parallel/serial, and
whether the parallel run gave the serial run's weights bit for bit.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from pytest_padbias import zoo  # noqa: E402
from pytest_padbias.padding import PADDING_MODES  # noqa: E402


def jobs(n_models: int, n_train: int, cache: str):
    budget = zoo.letters_budget("quick", train_images=n_train).train_kwargs()
    cells = [(size, mode, seed) for seed in range(100) for mode in PADDING_MODES for size in zoo.SIZES][:n_models]
    return [functools.partial(zoo.trained_model, "letters", size, mode, seed, cache_dir=cache, **budget)
            for size, mode, seed in cells]


def run(mode: str, n_models: int, n_train: int) -> tuple[float, dict]:
    """Seconds to train the models cold, and their weights."""
    with tempfile.TemporaryDirectory() as cache:
        work = jobs(n_models, n_train, cache)
        start = time.perf_counter()
        if mode == "serial":
            for job in work:
                job()
        else:
            zoo.train_in_parallel(work)
        seconds = time.perf_counter() - start
        weights = {i: job().state_dict() for i, job in enumerate(work)}
    return seconds, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times = {"serial": [], "parallel": []}
    same = True
    for r in range(args.repeats):
        order = ("serial", "parallel") if r % 2 == 0 else ("parallel", "serial")
        weights = {}
        for mode in order:
            seconds, weights[mode] = run(mode, args.models, args.train_images)
            times[mode].append(seconds)
            print(f"repeat {r + 1}: {mode:8s} {seconds:6.1f} s for {args.models} models", flush=True)
        same &= all(torch.equal(v, weights["parallel"][i][k]) for i, sd in weights["serial"].items() for k, v in sd.items())
    print(f"\n{args.models} letters models ({args.train_images} training images, trained until the validation loss "
          f"stops falling), {os.cpu_count()} cores, median of {args.repeats} interleaved repeats:")
    med = {m: statistics.median(t) for m, t in times.items()}
    for mode in ("serial", "parallel"):
        print(f"  {mode:8s}: {60 * args.models / med[mode]:5.2f} models/min, {med[mode] / args.models:5.1f} s per converged model")
    print(f"  parallel / serial models per minute: {med['serial'] / med['parallel']:.2f}x")
    print(f"  same weights in both modes: {same}")


if __name__ == "__main__":
    main()
