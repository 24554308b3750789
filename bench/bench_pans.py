"""Benchmark of the PAN census on MobileNetV2 (torchvision ImageNet weights), issues 3 and 14.

    .venv/bin/python bench/bench_pans.py                # timing, sampled scipy baseline, memory, numbers
    .venv/bin/python bench/bench_pans.py --full-scipy   # run the scipy loop on every neuron (slow)
    .venv/bin/python bench/bench_pans.py --threads 1    # one torch thread and one census worker

Prints, all measured in this run on the same machine:
  1. analysis time / bare forward time (target <= 0.5): census time minus forward time,
     median over interleaved pairs of runs (other processes share the CPU), also in CPU time;
  2. speed-up over the per-neuron scipy.stats.ks_2samp loop (targets >= 100 overall and
     >= 60 on every output map size), whether every statistic equals scipy's bit for bit,
     and whether the PAN sets are identical at each theta, on the neurons the loop ran on;
  3. peak RSS of the census / of the bare forward pass (target <= 1.5), each in a fresh
     subprocess, next to storing every analysed layer's output (what the loop needs);
  4. the PANs found (fraction, types, layers) next to the paper's numbers;
  5. the paper's PAN-reflect / RAND-reflect / all-reflect intervention on the same images;
  6. ResNet-50 (random weights, --padbias-weights=none) at 224 and 448: analysis / forward
     at both sizes, and how the analysis time grows against the activations (4x).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pytest_padbias.images import natural_images  # noqa: E402
from pytest_padbias.intervention import pan_reflect_experiment  # noqa: E402
from pytest_padbias.models import load_model  # noqa: E402
from pytest_padbias.pans import BORDERS, PAN_TYPES, eligible_convs, pan_census  # noqa: E402


def setup(n_images: int):
    loaded = load_model("mobilenet_v2")
    images = natural_images(n_images, (224, 224), mean=loaded.mean, std=loaded.std)
    return loaded, loaded.module.eval(), images


def forward(model, images):
    with torch.no_grad():
        model(images)


def conv_outputs(model, images) -> dict:
    """The outputs of the census's analysed convs on ``images``, by layer name, as arrays."""
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, o.detach().numpy()))
             for n, m in eligible_convs(model)]
    forward(model, images)
    for h in hooks:
        h.remove()
    return outputs


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def scipy_neuron(out_map: np.ndarray, method: str = "auto"):
    """The slow baseline: KS, KS+ and KS- of one neuron with scipy, border by border."""
    from functools import partial

    from scipy.stats import ks_2samp

    ks_2samp = partial(ks_2samp, method=method)

    centre = np.sort(out_map[:, 1:-1, 1:-1].ravel())
    stats = []
    for border in (out_map[:, 0, :].ravel(), out_map[:, -1, :].ravel(), out_map[:, :, 0].ravel(), out_map[:, :, -1].ravel()):
        k = len(border)
        stats.append((ks_2samp(border, centre).statistic,
                      ks_2samp(border, centre[-k:], alternative="less").statistic,
                      ks_2samp(border, centre[:k], alternative="greater").statistic))
    return np.array(stats)  # [4 borders, 3 statistics]


def scipy_baseline(model, images, census, per_layer: int | None, method: str = "auto"):
    """Run the scipy loop on ``per_layer`` channels of every layer (all if None).

    Returns per layer (measured wall seconds, wall and CPU seconds extrapolated to all the
    layer's channels), the max |census - scipy|, whether every statistic is equal bit for
    bit, and whether the PAN sets agree at every theta, on the neurons run."""
    outputs = conv_outputs(model, images)
    per_layer_seconds, worst, identical, same = [], 0.0, True, True
    rng = np.random.default_rng(0)
    for li, layer in enumerate(census.layers):
        c = layer.out_channels
        channels = np.arange(c) if per_layer is None or per_layer >= c else np.sort(rng.choice(c, per_layer, replace=False))
        start, cpu = time.perf_counter(), time.process_time()
        stats = [scipy_neuron(outputs[layer.name][:, ch], method) for ch in channels]
        spent, spent_cpu = time.perf_counter() - start, time.process_time() - cpu
        per_layer_seconds.append((spent, spent * c / len(channels), spent_cpu * c / len(channels)))
        rows = np.nonzero(census.layer_index == li)[0][channels]
        ref = np.stack(stats)  # [channels, 4, 3]
        mine = np.stack([census.ks[rows], census.ks_plus[rows], census.ks_minus[rows]], axis=2)
        worst = max(worst, float(np.abs(ref - mine).max()))
        identical &= bool(np.array_equal(ref, mine))
        for theta in census.thetas:
            ref_pan = (ref[..., 0] >= theta) & ((ref[..., 1] >= theta) | (ref[..., 2] >= theta))
            same &= bool(np.array_equal(ref_pan, census.pan_mask(theta)[rows]))
    return per_layer_seconds, worst, identical, same


def _rss_mb() -> dict:
    """Current and peak resident set size (VmRSS, VmHWM) of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out


def memory_child(kind: str, n_images: int) -> None:
    """Run one of forward / census / store in this fresh process; print its RSS in MB.

    Loading the photographs peaks far above a forward pass, so after loading (and one
    warm-up forward, which sets up the conv backends) freed memory is returned to the OS
    and the peak counter is reset (Linux clear_refs 5) before the measured run."""
    import ctypes
    import gc

    _, model, images = setup(n_images)
    forward(model, images)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_mb()["VmRSS"]
    if kind == "forward":
        forward(model, images)
    elif kind == "census":
        pan_census(model, images)
    else:  # store every analysed layer's output, as the per-neuron loop needs them
        kept = []
        hooks = [m.register_forward_hook(lambda m, a, o: kept.append(o.detach())) for _, m in eligible_convs(model)]
        forward(model, images)
        for h in hooks:
            h.remove()
    print(json.dumps({"base_mb": base, "peak_mb": _rss_mb()["VmHWM"]}))


def measure_memory(n_images: int) -> dict:
    result = {}
    for kind in ("forward", "census", "store"):
        threads = ["--threads", str(torch.get_num_threads())]
        out = subprocess.run([sys.executable, __file__, "--memory-child", kind, "--images", str(n_images), *threads],
                             capture_output=True, text=True, check=True)
        result[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def interleaved(model, images, repeats: int) -> dict:
    """Forward and census timed in interleaved pairs, so both halves of a pair see about
    the same machine load; the census of the last pair is returned with the times."""
    forward(model, images)  # warm-up
    pan_census(model, images)
    runs, layer_seconds, census = [], [], None
    for _ in range(repeats):
        fwd = timed(lambda: forward(model, images))
        holder = []
        cen = timed(lambda: holder.append(pan_census(model, images)))
        runs.append((fwd, cen))
        census = holder[0]
        layer_seconds.append([layer.analysis_seconds for layer in census.layers])
    # each layer's analysis time: its median over the runs, like the totals
    for layer, seconds in zip(census.layers, np.median(layer_seconds, axis=0)):
        layer.analysis_seconds = float(seconds)
    (fwd_wall, fwd_cpu), (cen_wall, cen_cpu) = (np.array([r[i] for r in runs]).T for i in range(2))
    return {"census": census, "fwd_wall": fwd_wall, "cen_wall": cen_wall, "fwd_cpu": fwd_cpu, "cen_cpu": cen_cpu,
            "ratio": float(np.median((cen_wall - fwd_wall) / fwd_wall)),
            "analysis": float(np.median(cen_wall - fwd_wall)), "forward": float(np.median(fwd_wall)),
            "analysis_cpu": float(np.median(cen_cpu - fwd_cpu)),
            "ratio_cpu": float(np.median((cen_cpu - fwd_cpu) / fwd_cpu))}


def print_timing(t: dict, repeats: int) -> None:
    print(f"\n[1] wall time, {repeats} interleaved runs: forward {', '.join(f'{x:.2f}' for x in t['fwd_wall'])} s; "
          f"census {', '.join(f'{x:.2f}' for x in t['cen_wall'])} s")
    fastest = (t["cen_wall"].min() - t["fwd_wall"].min()) / t["fwd_wall"].min()
    print(f"    analysis time / forward time = {t['ratio']:.2f} (median over the pairs; target <= 0.5); "
          f"from the fastest runs {fastest:.2f}; in CPU time (all threads, less sensitive to other load) "
          f"{t['ratio_cpu']:.2f}")


def print_scipy(model, images, t: dict, per_layer, method: str) -> None:
    census = t["census"]
    seconds, worst, identical, same = scipy_baseline(model, images, census, per_layer, method)
    measured, extrapolated = sum(s[0] for s in seconds), sum(s[1] for s in seconds)
    scope = "every neuron" if per_layer is None else f"{per_layer} random channels of each of the {len(census.layers)} layers"
    print(f"\n[2] scipy.stats.ks_2samp loop (method={method!r}, 12 calls per neuron, centre sorted once) on {scope}: "
          f"{measured:.1f} s measured" + ("" if per_layer is None else
          f", {extrapolated:.0f} s extrapolated to all {census.n_neurons} neurons (x channels/sampled, layer by layer)"))
    extrapolated_cpu = sum(s[2] for s in seconds)
    print(f"    speed-up over the loop = {extrapolated / t['analysis']:.0f}x in wall time on analysis time (median census - forward; "
          f"target >= 100), {(extrapolated + t['forward']) / (t['analysis'] + t['forward']):.0f}x including the forward pass "
          f"each needs; {extrapolated_cpu / t['analysis_cpu']:.0f}x in CPU time ({extrapolated_cpu:.0f} s vs {t['analysis_cpu']:.1f} s)")
    by_size: dict = {}
    for layer, (_, scipy_s, _) in zip(census.layers, seconds):
        row = by_size.setdefault(layer.out_size, [0, 0.0, 0.0])
        row[0] += layer.out_channels
        row[1] += scipy_s
        row[2] += layer.analysis_seconds
    print("    by output map size (census seconds: the thread time all threads spent on those layers in the census hooks, median over the runs "
          "of [1]; target >= 60x each):")
    for (h, w), (n, sp, ce) in by_size.items():
        print(f"      {h}x{w}: {n} neurons, scipy {sp:.2f} s / census {ce:.3f} s = {sp / ce:.0f}x")
    print(f"    lowest: {min(sp / ce for _, sp, ce in by_size.values()):.0f}x")
    print(f"    every KS, KS+ and KS- equal to scipy's bit for bit: {identical} (max |census - scipy| = {worst:.1e}); "
          f"PAN sets identical at theta {', '.join(map(str, census.thetas))}: {same}")


def print_memory(n_images: int) -> None:
    mem = measure_memory(n_images)
    f, c, s = (mem[k]["peak_mb"] for k in ("forward", "census", "store"))
    base = mem["forward"]["base_mb"]
    print(f"\n[3] peak RSS: forward {f:.0f} MB, census {c:.0f} MB, storing all analysed outputs {s:.0f} MB "
          f"(process before the measured run: {base:.0f} MB)")
    print(f"    census / forward peak = {c / f:.2f}  (target <= 1.5); counting only what the run added: "
          f"{(c - base) / max(f - base, 1):.2f}; storing everything / forward = {s / f:.2f} "
          f"({(s - base) / max(f - base, 1):.2f} added)")


def print_pans(census) -> None:
    print(f"\n[4] PANs in MobileNetV2 ({census.n_neurons} neurons in {len(census.layers)} conv layers with kernels > 1x1):")
    for theta in census.thetas:
        print(f"    theta={theta}: {int(census.is_pan(theta).sum())} PANs = {100 * census.fraction(theta):.2f}% "
              "(paper: about 1.5-3% of filters at theta=0.5)")
    counts = census.type_counts(0.5)
    print("    types at theta=0.5: " + ", ".join(f"{t} {counts[t]}" for t in PAN_TYPES if t != "none"))
    top = sorted(census.layer_counts(0.5), key=lambda r: -r["pans"])[:5]
    print("    layers with most PANs: " + "; ".join(f"{r['layer']} {r['pans']}/{r['channels']}" for r in top))
    for p in census.top_pans(0.5, 3):
        print(f"    strongest: {p['layer']} ch {p['channel']} type {p['type']['0.5']} "
              + " ".join(f"{b}:KS={p['ks'][b]:.2f}/KS+={p['ks_plus'][b]:.2f}/KS-={p['ks_minus'][b]:.2f}" for b in BORDERS))


def print_intervention(loaded, model, images, census) -> None:
    result = pan_reflect_experiment(model, images, census, theta=0.5, seed=0, categories=loaded.categories, top=3)
    print(f"\n[5] the paper's intervention (§4) on these {images.shape[0]} images, theta=0.5, "
          f"{result['switched_neurons']['pan']} PAN / {result['switched_neurons']['random']} random channels switched:")
    for key in ("pan_reflect", "random_reflect", "all_reflect"):
        r = result[key]
        print(f"    {key:15s} top-1 agreement {r['top1_agreement']:.3f}, log-odds std {r['log_odds']['std']:.4f} "
              f"(range {r['log_odds']['min']:+.3f}..{r['log_odds']['max']:+.3f}, {r['log_odds']['classes_beyond_5pct']} classes "
              f"beyond +-0.05), mean logit L1 change {r['mean_manhattan']:.2f}, largest {r['largest_logit_change'][0]['manhattan']:.2f}")


def print_resnet(n_images: int, repeats: int, sizes=(224, 448)) -> None:
    """ResNet-50 with random weights: the analysis must grow no faster than the activations."""
    loaded = load_model("resnet50", weights="none")
    model = loaded.module.eval()
    print(f"\n[6] ResNet-50 (weights=none), {n_images} images, {repeats} interleaved pairs per size:")
    rows = []
    for size in sizes:
        images = natural_images(n_images, (size, size), mean=loaded.mean, std=loaded.std)
        t = interleaved(model, images, repeats)
        census = t["census"]
        activations = sum(n_images * layer.out_channels * layer.out_size[0] * layer.out_size[1] for layer in census.layers)
        t["hooks"] = sum(layer.analysis_seconds for layer in census.layers)  # thread time: robust to a noisy forward
        rows.append((size, t, activations))
        print(f"    {size}x{size}: forward {t['forward']:.2f} s, census {float(np.median(t['cen_wall'])):.2f} s, "
              f"analysis / forward = {t['ratio']:.2f} (median of pairs; CPU time {t['ratio_cpu']:.2f}), "
              f"{activations / 1e6:.0f} M analysed activations, {1e9 * t['analysis'] / activations:.1f} ns each; "
              f"thread time in the hooks {t['hooks']:.2f} s ({1e9 * t['hooks'] / activations:.1f} ns each)")
        del images, census, t
    (s0, t0, a0), (s1, t1, a1) = rows[0], rows[-1]
    print(f"    {s1} vs {s0}: activations x{a1 / a0:.2f}, analysis time x{t1['analysis'] / t0['analysis']:.2f} "
          f"(census - forward, wall), thread time in the hooks x{t1['hooks'] / t0['hooks']:.2f}, "
          f"forward x{t1['forward'] / t0['forward']:.2f}; analysis / forward {t0['ratio']:.2f} -> {t1['ratio']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--scipy-channels", type=int, default=8, help="channels per layer the scipy loop runs on")
    parser.add_argument("--full-scipy", action="store_true", help="run the scipy loop on every neuron")
    parser.add_argument("--scipy-method", default="auto", choices=["auto", "asymp", "exact"],
                        help="ks_2samp's p-value method: 'auto' is what a plain loop calls; the statistic is the same")
    parser.add_argument("--resnet-repeats", type=int, default=3, help="interleaved pairs per ResNet-50 size (0: skip)")
    parser.add_argument("--resnet-images", type=int, default=16, help="images per ResNet-50 pass")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (and so census workers) for every part, memory children included; default: torch's")
    parser.add_argument("--memory-child", choices=["forward", "census", "store"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.images)
        return
    warnings.simplefilter("ignore")
    loaded, model, images = setup(args.images)
    print(f"MobileNetV2 {loaded.weights}, {args.images} images 224x224 (skimage photographs), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    t = interleaved(model, images, args.repeats)
    print_timing(t, args.repeats)
    print_scipy(model, images, t, None if args.full_scipy else args.scipy_channels, args.scipy_method)
    print_memory(args.images)
    print_pans(t["census"])
    print_intervention(loaded, model, images, t["census"])
    if args.resnet_repeats:
        print_resnet(args.resnet_images, args.resnet_repeats)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
