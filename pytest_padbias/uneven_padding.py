"""The ``no_uneven_padding`` gate: per-layer uneven padding, nearest even sizes, foveation."""
from __future__ import annotations

from .figures import figure, to_png
from .geometry import foveation_map, nearest_even_sizes, trace_padding
from .result import CheckResult, Figure, PadbiasError

SIDES = ("top", "bottom", "left", "right")


def no_uneven_padding_arguments(input_size=None) -> dict:
    """Validate the marker's arguments (plain Python, no torch)."""
    if input_size is None:
        return {"input_size": None}
    if isinstance(input_size, bool):
        raise PadbiasError(f"@padbias.no_uneven_padding(input_size={input_size!r}): give an int or (height, width) of positive ints")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if (not isinstance(input_size, (tuple, list)) or len(input_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
        raise PadbiasError(f"@padbias.no_uneven_padding(input_size={input_size!r}): give an int or (height, width) of positive ints")
    return {"input_size": tuple(input_size)}


def describe(record) -> str:
    """One phrase a reviewer understands: which sides read how much padding, what is dropped."""
    t, b, l, r = record.pad_read
    parts = []
    if t != b:
        parts.append(f"reads {t} padding row(s) on top but {b} at the bottom")
    if l != r:
        parts.append(f"{l} padding column(s) on the left but {r} on the right")
    rows, cols = record.dropped
    if rows or cols:
        parts.append(f"never reads the last {rows} input row(s) and {cols} column(s)")
    size = "x".join(map(str, record.input_size))
    return f"{record.layer} ({record.op}, kernel {'x'.join(map(str, record.kernel))}, stride {'x'.join(map(str, record.stride))}, on {size}) " + "; ".join(parts)


def no_uneven_padding_check(ctx, input_size=None) -> CheckResult:
    size = tuple(input_size or ctx.input_size)
    records = trace_padding(ctx.model, size)
    uneven = [r for r in records if r.uneven]
    nearest = nearest_even_sizes(ctx.model, size)
    counts, ratio = foveation_map(ctx.model, size)
    hw = "x".join(map(str, size))
    details = {
        "input_size": list(size),
        "ops_checked": len(records),
        "uneven_layers": [
            {"layer": r.layer, "op": r.op, "pad_read": list(r.pad_read), "dropped": list(r.dropped),
             "input_size": list(r.input_size), "kernel": list(r.kernel), "stride": list(r.stride), "mode": r.mode}
            for r in uneven
        ],
        "nearest_even_sizes": nearest,
        "foveation_periphery_ratio": ratio,
    }
    if uneven:
        summary = f"{len(uneven)} of {len(records)} conv/pool ops pad unevenly at {hw}"
    else:
        summary = f"all {len(records)} conv/pool ops pad evenly at {hw}"
    message = ""
    if uneven:
        lines = [f"uneven padding at input size {hw}: {len(uneven)} of {len(records)} conv/pool ops"]
        lines += [f"  - {describe(r)}" for r in uneven[:12]]
        if len(uneven) > 12:
            lines.append(f"  - ... and {len(uneven) - 12} more")
        fix = _suggestion(nearest)
        if fix:
            lines.append(f"  fix: {fix}")
        message = "\n".join(lines)
    fig = Figure(f"Uneven padding and foveation at {hw}", _figure(records, uneven, counts, ratio, size))
    return CheckResult("no_uneven_padding", passed=not uneven, value=len(uneven), limit=0, details=details,
                       summary=summary, message=message, figures=[fig])


def _suggestion(nearest) -> str:
    options = []
    for key in ("below", "above"):
        size = nearest.get(key)
        if size:
            options.append("x".join(map(str, size)))
    if not options:
        return "no input size within 512 pixels pads evenly; change the strided layers' padding or kernel"
    return f"use input size {' or '.join(options)} (the nearest sizes where every layer pads evenly)"


def _figure(records, uneven, counts, ratio, size) -> bytes:
    fig, (ax_table, ax_map) = figure(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.25, 1]})
    ax_table.axis("off")
    rows = [[r.layer, r.op, "x".join(map(str, r.input_size)), " / ".join(map(str, r.pad_read)),
             f"{r.dropped[0]} / {r.dropped[1]}"] for r in uneven[:16]]
    if rows:
        table = ax_table.table(cellText=rows, colLabels=["layer", "op", "input", "pad read T/B/L/R", "dropped rows/cols"],
                               loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.auto_set_column_width(range(5))
        title = f"{len(uneven)} of {len(records)} ops pad unevenly" + (" (first 16)" if len(uneven) > 16 else "")
    else:
        title = f"all {len(records)} conv/pool ops pad evenly"
    ax_table.set_title(f"{title} at {size[0]}x{size[1]}")
    image = counts.double().numpy()
    image = image / image.max() if image.max() > 0 else image
    shown = ax_map.imshow(image, cmap="magma", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax_map, label="paths to the last feature map (1 = max)")
    ax_map.set_title(f"Foveation: periphery/centre use = {ratio:.2f}")
    ax_map.set_xlabel("input column (px)")
    ax_map.set_ylabel("input row (px)")
    return to_png(fig)
