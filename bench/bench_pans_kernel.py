"""The PAN census's compiled kernel alone, per output map size (issue 14's per-step figures).

    .venv/bin/python bench/bench_pans_kernel.py [--repeats 5]

Captures the outputs of MobileNetV2's (ImageNet weights) analysed convs on the 32 bundled
photographs at 224, then times :func:`pytest_padbias.pans_compiled.compiled_statistics`
layer by layer on one thread (thread time, median over the repeats, interleaved by layer)
and prints the thread time per centre value for each map size; it also checks that the
statistics are the same in every repeat.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_pans import conv_outputs, setup  # noqa: E402  (this folder is on sys.path when run as a script)

from pytest_padbias import pans_compiled  # noqa: E402
from pytest_padbias.pans_scan import LayerScan  # noqa: E402


def layer_outputs(n_images: int = 32) -> dict:
    _, model, images = setup(n_images)
    return conv_outputs(model, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    outputs = layer_outputs()
    scans = {}
    for name, out in outputs.items():
        scan = LayerScan(name, None, out.shape[0])
        scan.collect(out, keep=False)
        scan.prepare(out.shape[1])
        scan.prepare_rows(0, out.shape[1], out)
        scans[name] = scan
    seconds = {name: [] for name in outputs}
    first = {}
    for _ in range(args.repeats + 1):  # the first round compiles (or loads the cache) and is not timed
        for name, out in outputs.items():
            s = scans[name]
            stats = np.empty((3, out.shape[1], 4))
            started = time.thread_time()
            pans_compiled.compiled_statistics(out, 0, out.shape[1], s.queries, s.sizes, stats, name)
            took = time.thread_time() - started
            if name in first:
                assert np.array_equal(first[name], stats), name
                seconds[name].append(took)
            else:
                first[name] = stats
    print(f"compiled kernel, one thread, median of {args.repeats} repeats (thread time per centre value):")
    for size in sorted({out.shape[2] for out in outputs.values()}, reverse=True):
        names = [n for n, out in outputs.items() if out.shape[2] == size]
        total = sum(float(np.median(seconds[n])) for n in names)
        values = sum(outputs[n].shape[0] * outputs[n].shape[1] * (size - 2) ** 2 for n in names)
        print(f"  {size}x{size}: {len(names)} layers, {total * 1e3:.1f} ms, {total / values * 1e9:.2f} ns per centre value")


if __name__ == "__main__":
    with torch.inference_mode():
        torch.set_num_threads(1)
        main()
