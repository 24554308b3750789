"""Speed of the uneven-padding check, as ratios measured in one run.

    .venv/bin/python bench/bench_geometry.py

1. One check of torchvision classifiers at sizes from 224 to 2048: the first check of a
   model (one meta-device trace) and every later check (arithmetic replay).
2. All even input sizes 32..1024 of ResNet-50 against a fresh implementation of the
   reproducibility report's torchinfo check, which runs a real forward pass per size.
   The baseline runs on every 97th size (11 sizes; it costs minutes per hundred) and is
   scaled to the 993 sizes by the measured mean per size of each size band; the printed
   line says so.
"""
import time
import warnings

import torch
import torchvision

from pytest_padbias.geometry import _TRACES, even_sizes, trace_padding, uneven_layers

warnings.simplefilter("ignore")
torch.set_grad_enabled(False)


def report_has_uneven_padding(model, size):
    """The report's has_uneven_padding (Conv2d only), written afresh."""
    from torchinfo import summary
    import torch.nn as nn

    info = summary(model, (1, 3, size, size), verbose=0, device="cpu")
    for layer in info.summary_list:
        conv = layer.module
        if isinstance(conv, nn.Conv2d) and any(s > 1 for s in conv.stride):
            *_, h1, w1 = layer.input_size
            *_, h, w = layer.output_size
            if (h1 + 2 * conv.padding[0] != conv.stride[0] * (h - 1) + conv.kernel_size[0]
                    or w1 + 2 * conv.padding[1] != conv.stride[1] * (w - 1) + conv.kernel_size[1]):
                return True
    return False


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main():
    print("== one check per model (seconds) ==")
    worst_warm = 0.0
    for name in ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "convnext_tiny", "regnet_y_400mf", "inception_v3"]:
        model = torchvision.models.get_model(name, weights=None).eval()
        _TRACES.pop(model, None)
        cold, _ = timed(uneven_layers, model, (224, 224))
        warm = {s: timed(uneven_layers, model, (s, s))[0] for s in (224, 512, 1024, 2048)}
        worst_warm = max(worst_warm, *warm.values())
        print(f"{name:16s} first check {cold:.3f}  later checks " + "  ".join(f"{s}: {t * 1000:.2f} ms" for s, t in warm.items())
              + f"  (2048/224 time ratio {warm[2048] / warm[224]:.2f})")
    print(f"slowest later check: {worst_warm * 1000:.2f} ms (goal < 100 ms, flat in input size)")

    print("== even sizes 32..1024 of ResNet-50 ==")
    model = torchvision.models.resnet50().eval()
    _TRACES.pop(model, None)
    ours_time, ours = timed(even_sizes, model, 32, 1024)
    sample = list(range(32, 1025, 97))
    base_time, flags = timed(lambda: [report_has_uneven_padding(model, s) for s in sample])
    # The report looks at strided Conv2d only; compare on those (we also flag pooling).
    agree = all(f == any(r.uneven for r in trace_padding(model, (s, s)) if r.op == "conv2d" and max(r.stride) > 1)
                for s, f in zip(sample, flags))
    # Forward cost grows with area: scale the sampled time by the area of all sizes.
    scale = sum(s * s for s in range(32, 1025)) / sum(s * s for s in sample)
    base_all = base_time * scale
    print(f"ours: {len(ours)} even sizes in {ours_time:.3f} s (goal < 1 s): {ours[:6]} ...")
    print(f"report's torchinfo check: {base_time:.1f} s for {len(sample)} sampled sizes, "
          f"scaled by area to {base_all:.0f} s for all 993 (an estimate)")
    print(f"verdicts agree with the report on strided Conv2d at the sampled sizes: {agree}")
    print(f"ratio baseline/ours: {base_all / ours_time:.0f}x")


if __name__ == "__main__":
    main()
