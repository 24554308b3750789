"""Benchmark of the training loop's memory order: channels-last against the standard layout.

    .venv/bin/python bench/bench_train_layout.py            # 5 interleaved repeats
    .venv/bin/python bench/bench_train_layout.py --repeats 9

Times one training epoch (forward, backward, Adam step; one thread, the zoo's batch sizes)
of the letters classifier (6 000 letters at 28x28, batch 64) and of the small-object
detector (1 024 scenes at 96x96, batch 16), once in each layout per repeat, in alternating
order so both see the same machine. Prints the median seconds per epoch of each layout and
the speed-up (standard / channels-last).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from pytest_padbias import detector, zoo  # noqa: E402


def letters_case():
    x, y = zoo.letters("train", 28, 6000)
    return (lambda: zoo.letters_cnn("zeros")), x, y, torch.nn.functional.cross_entropy, 64


def detector_case():
    x, objects = detector.scenes("train", 1024)
    y = detector.pack_targets(detector.target_heatmaps(objects, 1024))
    return (lambda: detector.detector_cnn("zeros")), x, y, detector.detector_loss, 16


def epoch_seconds(case, channels_last: bool) -> float:
    build, x, y, loss_fn, batch = case
    torch.manual_seed(0)
    model = build()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        loss = loss_fn(model(x[i : i + batch].contiguous(memory_format=fmt)), y[i : i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name, case in (("letters", letters_case()), ("detector", detector_case())):
        times = {False: [], True: []}
        for r in range(args.repeats):
            for layout in ((False, True) if r % 2 == 0 else (True, False)):
                times[layout].append(epoch_seconds(case, layout))
        standard, last = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:9s} standard {standard:.3f} s/epoch, channels-last {last:.3f} s/epoch: "
              f"{standard / last:.2f}x (median of {args.repeats} interleaved repeats)")


if __name__ == "__main__":
    main()
