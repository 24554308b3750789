"""Table 1 over independent sets of seeds: the suite's rule applied to their pooled pairs.

    .venv/bin/python bench/table1_pooled.py reports/padbias-mobilenet_v2-224x224.json \\
        --set 0.06,2.19,120,6.32

Reads the Table 1 check of one or more suite JSONs (each a run of
`pytest suites/test_reproducibility_report.py -k even_padding`, its per-seed accuracies in
the details) and, with ``--set mean,sd,n,error28``, sets whose models are no longer cached,
given by the figures their run printed. Prints each set's mean, sd, n and 28x28 error, then
the pooled mean and sd (exact from the sets' means, sds and ns: the within-set sums of
squares plus the between-set ones), the Student-t 95% interval, the claimed gain at the
pooled 28x28 error (the suite's share of the error) and the verdict by the suite's rule:
reproduced above 0, contradicted below half the claimed gain. Sets given by their printed
figures carry their rounding (0.005 points in the mean) into the pooled figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pytest_padbias.verdicts import decide_directional_of_moments  # noqa: E402
from suites.test_reproducibility_report import PAPER_T1_RELATIVE_GAIN  # noqa: E402

CHECK = "claim: even padding (29x29) beats uneven (28x28)"


def set_from_json(path: str) -> tuple[float, float, int, float]:
    """Mean, sd and n of the paired 29-minus-28 gains, and the 28x28 error, of one run."""
    with open(path) as f:
        report = json.load(f)
    runs = report.get("runs") or [report]  # one model's document, or the combined one
    checks = [c for r in runs for t in r["tests"] for c in t["checks"] if c["check"] == CHECK]
    if not checks:
        sys.exit(f"{path}: no {CHECK!r} check; run the suite with -k even_padding")
    per_seed = checks[0]["details"]["per_seed"]
    gains = [a29 - a28 for mode in per_seed["28x28"]
             for a28, a29 in zip(per_seed["28x28"][mode], per_seed["29x29"][mode])]
    return statistics.fmean(gains), statistics.stdev(gains), len(gains), checks[0]["details"]["error_28x28"]


def set_from_figures(text: str) -> tuple[float, float, int, float]:
    try:
        mean, sd, n, error = text.split(",")
        return float(mean), float(sd), int(n), float(error)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--set {text!r}: give mean,sd,n,error28, e.g. 0.06,2.19,120,6.32") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="*")
    parser.add_argument("--set", type=set_from_figures, action="append", default=[], dest="sets")
    args = parser.parse_args(argv)
    sets = [set_from_json(p) for p in args.json] + args.sets
    if not sets:
        parser.error("give at least one JSON or --set")
    for mean, sd, n, error in sets:
        print(f"set: {mean:+.3f} points, sd {sd:.2f}, n = {n}, 28x28 error {error:.2f}%")
    big_n = sum(n for _, _, n, _ in sets)
    grand = sum(mean * n for mean, _, n, _ in sets) / big_n
    squares = sum((n - 1) * sd ** 2 + n * (mean - grand) ** 2 for mean, sd, n, _ in sets)
    sd = math.sqrt(squares / (big_n - 1))
    error = sum(e * n for _, _, n, e in sets) / big_n
    claimed = PAPER_T1_RELATIVE_GAIN * error  # as the suite scales it; contradicting below half of it
    decision = decide_directional_of_moments(grand, sd, big_n, claimed=claimed, what="paired (mode, seed) gains in points")
    print(f"pooled: {decision.verdict}, {decision.interval_text()}, sd {sd:.2f}; "
          f"claimed +{claimed:.2f} at {error:.2f}% error, contradicting bound {claimed / 2:+.2f}")

if __name__ == "__main__":
    main()
