"""Figure helpers shared by the analyses: matplotlib on the Agg backend, PNG bytes out."""
from __future__ import annotations

import io


def figure(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.0), **subplot_kw):
    """A matplotlib ``(figure, axes)`` pair on the Agg canvas, independent of pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **subplot_kw)
    return fig, axes


def to_png(fig, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
