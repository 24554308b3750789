"""The memory plan of pytest_padbias.resources against measured peaks (issue 8).

    .venv/bin/python bench/bench_memory.py

For each (model, input size, batch) it prints the meta-device estimate of the peak
activation memory, the peak resident memory of a real forward pass measured in a fresh
process (bench/measure_peak.py, VmHWM above the memory before the pass), the plan the
analyses budget for (SAFETY_FACTOR x estimate + input + per-pass overhead), and the
ratios measured / estimate and measured / plan. A plan is safe when measured / plan <= 1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torchvision  # noqa: E402

from pytest_padbias.resources import activation_profile, format_bytes  # noqa: E402

CASES = [("resnet18", 224, 8), ("resnet18", 1024, 1), ("resnet18", 2048, 1), ("mobilenet_v2", 224, 8),
         ("mobilenet_v2", 224, 16), ("mobilenet_v2", 1024, 1), ("resnet50", 224, 1), ("resnet50", 224, 8),
         ("resnet50", 1024, 1), ("resnet50", 2048, 1)]
MEASURE = os.path.join(os.path.dirname(__file__), "measure_peak.py")


def main() -> int:
    print(f"{'model':<14}{'size':>6}{'batch':>6}{'estimate':>12}{'measured':>12}{'plan':>12}{'meas/est':>10}{'meas/plan':>10}")
    unsafe = 0
    for name, size, batch in CASES:
        out = subprocess.run([sys.executable, MEASURE, name, str(size), str(batch)], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        measured = json.loads(out.stdout)["extra"]
        profile = activation_profile(getattr(torchvision.models, name)(weights=None).eval(), size)
        estimate = batch * profile.peak
        plan = batch * profile.per_image() + profile.overhead
        unsafe += measured > plan
        print(f"{name:<14}{size:>6}{batch:>6}{format_bytes(estimate):>12}{format_bytes(measured):>12}{format_bytes(plan):>12}"
              f"{measured / estimate:>10.2f}{measured / plan:>10.2f}")
    print(f"{unsafe} of {len(CASES)} cases measured above the plan")
    return 1 if unsafe else 0


if __name__ == "__main__":
    sys.exit(main())
