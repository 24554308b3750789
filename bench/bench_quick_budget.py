"""What a smaller quick profile would buy: seconds per converged letters model and test
accuracy at a candidate training-set size against the quick profile's 6 000 images.

    .venv/bin/python bench/bench_quick_budget.py                      # 3 000 images, 4 models, 2 repeats
    .venv/bin/python bench/bench_quick_budget.py --train-images 4000 --models 6 --repeats 3

Each repeat trains the same letters classifiers (the quick profile's network and early
stopping; cells zeros/reflect/... at 28 and 29, seed 0 first) into an empty cache twice, once
per budget, with :func:`pytest_padbias.zoo.train_in_parallel` (one process per core, as
the suites train), the two budgets interleaved in alternating order so both see the same
machine. Prints, per budget, the median over repeats of seconds per converged model, the
epochs used, the mean test accuracy (10 000 test images; the weights are deterministic, so
it is the same in every repeat), the ratio of the candidate's time to the baseline's, and
the letters share of a cold main job (the quick profile's letters models, trained two at a
time) at each pace.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from bench_zoo import jobs  # noqa: E402

from pytest_padbias import zoo  # noqa: E402
from pytest_padbias.letters_zoo import LettersZoo  # noqa: E402

BASELINE = zoo.PROFILES["quick"].n_train


def run(n_models: int, n_train: int) -> tuple[float, list[int], float]:
    """Seconds to train the models cold in one process per core, their epochs, and their
    mean test accuracy in percent."""
    with tempfile.TemporaryDirectory() as cache:
        work = jobs(n_models, n_train, cache)
        start = time.perf_counter()
        zoo.train_in_parallel(work)
        seconds = time.perf_counter() - start
        models = [job() for job in work]
    accs = []
    for job, model in zip(work, models):
        size = job.args[1]
        x, y = zoo.letters("test", size, zoo.PROFILES["quick"].n_test)
        accs.append(100 * zoo.accuracy(model, x, y))
    return seconds, [m.zoo_info["train"]["epochs"] for m in models], statistics.fmean(accs)


def main_job_letters_models() -> int:
    """How many letters models a cold quick main job trains (Tables 1-3's cells)."""
    budget = zoo.letters_budget("quick")
    letters = LettersZoo(budget, range(budget.seeds))
    return len(dict.fromkeys(letters.cells() + letters.table3_cells()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not 26 <= args.train_images <= 60000:
        parser.error(f"--train-images={args.train_images} is not accepted; give 26 to 60000")
    torch.set_num_threads(1)
    budgets = (BASELINE, args.train_images)
    times = {b: [] for b in budgets}
    found = {}
    for r in range(args.repeats):
        for n_train in (budgets if r % 2 == 0 else budgets[::-1]):
            seconds, epochs, acc = run(args.models, n_train)
            times[n_train].append(seconds / args.models)
            found[n_train] = (epochs, acc)
            print(f"repeat {r + 1}: {n_train:5d} images {seconds:6.1f} s for {args.models} models, "
                  f"epochs {epochs}, accuracy {acc:.2f}%", flush=True)
    n_main = main_job_letters_models()
    print(f"\n{args.models} letters models per budget, {os.cpu_count()} cores, one process per core, "
          f"median of {args.repeats} interleaved repeats:")
    med = {b: statistics.median(t) for b, t in times.items()}
    cores = os.cpu_count() or 1
    rounds = math.ceil(args.models / cores)  # the pool trains `cores` models at a time
    cap = zoo.PROFILES["quick"].max_epochs
    for b in budgets:
        epochs, acc = found[b]
        capped = sum(e >= cap for e in epochs)
        print(f"  {b:5d} training images: {med[b]:5.1f} s per model (pool wall / models), epochs "
              f"{min(epochs)}-{max(epochs)}{f' ({capped} stopped at the {cap}-epoch cap, not converged)' if capped else ''}, "
              f"test accuracy {acc:.2f}%; the main job's {n_main} letters models, {cores} at a time: "
              f"{n_main * med[b] * args.models / rounds / cores / 60:.1f} min")
    print(f"  {args.train_images} / {BASELINE} images, time per model: {med[args.train_images] / med[BASELINE]:.2f}x; "
          f"accuracy {found[args.train_images][1] - found[BASELINE][1]:+.2f} points")


if __name__ == "__main__":
    main()
