"""How much of Table 1's seed-to-seed spread is the test set's sampling.

    PADBIAS_ZOO_DIR=<cache> .venv/bin/python bench/table1_test_sampling.py --profile report --seeds 10

For every (mode, seed) pair of letters models trained at 28x28 and 29x29 (read from the
zoo cache; none is trained), the 29-minus-28 accuracy gain on the test set, and its
variance over test images given the two models (the paired, McNemar-style variance of the
per-image hit difference over n). Prints the variance of the gains across pairs and the
mean of the within-pair test-sampling variance: their ratio is the share a larger test set
could remove.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from pytest_padbias import zoo  # noqa: E402
from pytest_padbias.letters_zoo import LettersZoo  # noqa: E402
from pytest_padbias.padding import PADDING_MODES  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="report", choices=sorted(zoo.PROFILES))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    letters = LettersZoo(zoo.letters_budget(args.profile, seeds=args.seeds), seeds, profile=args.profile)
    missing = letters.missing_jobs(batch_norm=False)
    if missing:
        sys.exit(f"{len(missing)} of the models are not in the zoo cache ({zoo.zoo_dir()}); train them with the suite first")
    gains, sampling = [], []
    for seed in seeds:
        for mode in PADDING_MODES:
            hits = {size: (letters.logits(size, mode, seed, size).argmax(1) == letters.test(size)[1].cpu()).float().numpy()
                    for size in zoo.SIZES}
            diff = 100.0 * (hits[29] - hits[28])
            gains.append(diff.mean())
            sampling.append(diff.var(ddof=1) / len(diff))
    total, within = np.var(gains, ddof=1), float(np.mean(sampling))
    print(f"{len(gains)} pairs: gain {np.mean(gains):+.3f} points, sd {np.sqrt(total):.3f}; "
          f"test-sampling sd {np.sqrt(within):.3f}: {within / total:.0%} of the variance")


if __name__ == "__main__":
    main()
