"""What making, evaluating and bookkeeping shifted views costs on top of the model itself.

MobileNetV2 with its ImageNet weights, 32 natural images at 224 x 224. The same views are
timed three ways, interleaved over repeats with the minimum kept (other jobs share the
cores, so the minimum is the least disturbed run):

* measured   -- ``shift_consistency`` and ``border_shift_map`` as the gate calls them:
                views made by one gather per batch, evaluated in batches, compared;
* bare       -- the model alone on ready-made batches of the same number of views and
                the same batch sizes (the floor any implementation pays);
* one-by-one -- the same measurements with ``batch_size=1``: each view made and
                evaluated on its own.

Batches are the library's CPU default (about 2**18 pixels: 5 views at 224) unless
``--batch-size`` says otherwise.

The measured run also adds up the time spent inside the model's forward passes, which
gives the overhead under the very same load (the robust number on a shared machine).
Prints measured / bare (issue 4 target: at most 1.2) and one-by-one / measured, then the
consistency of MobileNetV2 on the bundled photographs (antialiased-cnns reports about
86.5% on ImageNet val for MobileNetV2, 89.2% for ResNet-50).

    .venv/bin/python bench/bench_shifts.py [--images 32] [--repeats 2] [--threads N]

(on cores shared with other jobs, --threads 1 avoids intra-op threads waiting for each other)
"""
from __future__ import annotations

import argparse
import time

import torch

from pytest_padbias.images import load_photos, natural_images
from pytest_padbias.models import load_model
from pytest_padbias.border_shifts import border_shift_map
from pytest_padbias.shifts import auto_batch_size, shift_consistency


def measurements(model, images, batch_size, views_per_image, max_shift):
    """The two gate measurements; returns the number of views they evaluated."""
    shift_consistency(model, images, mode="translate", fill="reflect", max_shift=max_shift,
                      views_per_image=views_per_image, batch_size=batch_size)
    border_shift_map(model, images, content_scale=1.0, max_shift=max_shift, fill="reflect", grid=3, batch_size=batch_size)
    return len(images) * (views_per_image + 9)


def bare(model, batch, n, batch_size, views_per_image, max_shift):
    """The model alone on as many views as ``measurements`` evaluates for ``n`` images, in
    the same batch sizes, from one ready-made batch (slicing it copies nothing)."""
    with torch.inference_mode():
        for views in (n * views_per_image, n * 9):
            for start in range(0, views, batch_size):
                model(batch[: min(batch_size, views - start)])


class TimedModel(torch.nn.Module):
    """The model, adding up the seconds spent inside its forward passes: the measured run's
    own bare-forward time, taken under the same load as the run itself."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seconds = 0.0

    def forward(self, x):
        t = time.perf_counter()
        out = self.inner(x)
        self.seconds += time.perf_counter() - t
        return out


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--views-per-image", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="views per forward pass (default: the library's choice)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = TimedModel(load_model("mobilenet_v2").module).eval()
    images = natural_images(args.images, (args.size, args.size))
    args.batch_size = args.batch_size or auto_batch_size((args.size, args.size), "cpu")
    max_shift = round(args.size / 14)
    common = (args.views_per_image, max_shift)
    ready = images.repeat((args.batch_size + len(images) - 1) // len(images), 1, 1, 1)[: args.batch_size].contiguous()

    # Warm up every batch shape once: oneDNN builds its kernels on first use of a shape.
    for bs in (args.batch_size, 1):
        measurements(model, images[: min(4, len(images))], bs, *common)
    bare(model.inner, ready, len(images), args.batch_size, *common)

    runs = {"bare": [], "measured": [], "measured forward": [], "one-by-one": [], "one-by-one forward": []}
    for r in range(args.repeats):
        runs["bare"].append(timed(bare, model.inner, ready, len(images), args.batch_size, *common))
        for name, bs in (("measured", args.batch_size), ("one-by-one", 1)):
            model.seconds = 0.0
            runs[name].append(timed(measurements, model, images, bs, *common))
            runs[f"{name} forward"].append(model.seconds)
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()), flush=True)
    best = {k: min(v) for k, v in runs.items()}
    in_run = sorted(t / f for t, f in zip(runs["measured"], runs["measured forward"]))
    views = len(images) * (args.views_per_image + 9)
    print(f"MobileNetV2, {len(images)} images {args.size}x{args.size}, {views} views per run "
          f"({args.views_per_image} consistency views + 9 border positions per image), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    for k, v in runs.items():
        print(f"  {k:>18}: {best[k]:7.2f} s  ({1000 * best[k] / views:6.1f} ms/view; runs: {', '.join(f'{t:.2f}' for t in v)})")
    print(f"overhead, same run:  measured / its own forward passes = {in_run[len(in_run) // 2]:.3f}  (target <= 1.2)")
    print(f"overhead, separate:  measured / bare batched forward   = {best['measured'] / best['bare']:.3f}  "
          "(separate runs, so other jobs' load shows up here)")
    print(f"batching:            one-by-one / measured             = {best['one-by-one'] / best['measured']:.3f}")

    photos = shift_consistency(model.inner, load_photos(), mode="crop", max_shift=16, view_size=(224, 224),
                               views_per_image=16, batch_size=args.batch_size)
    crops = shift_consistency(model.inner, images, mode="translate", fill="reflect", max_shift=16, views_per_image=16,
                              batch_size=args.batch_size)
    print(f"consistency, 10 bundled photographs, 256 -> 224 crops (antialiased-cnns protocol), 120 pairs each: "
          f"{photos.value:.1%}  per photo: {', '.join(f'{v:.2f}' for v in photos.per_image)}")
    print(f"consistency, {len(images)} crops of them, reflect-filled translations within +-16 px: {crops.value:.1%}")
    print("reference (ImageNet val, Zhang 2019): MobileNetV2 ~86.5%, ResNet-50 89.2%")


if __name__ == "__main__":
    main()
