"""pytest-padbias: tests for the spatial bias zero padding gives CNNs.

``from pytest_padbias import padbias`` gives the gates as pytest markers::

    @padbias.no_uneven_padding
    @padbias.max_pans(0.03)
    def test_my_model(padbias_model): ...

Importing this package never imports torch.
"""
from __future__ import annotations

import pytest

__version__ = "0.1.0"

#: Gate name -> marker name. The markers are registered by the plugin with help text.
GATE_MARKERS = {
    "no_uneven_padding": "padbias_no_uneven_padding",
    "shift_robust": "padbias_shift_robust",
    "max_pans": "padbias_max_pans",
    "no_blind_spot": "padbias_no_blind_spot",
}


class _PadbiasMarkers:
    """Attribute access returns the pytest marker of a gate, e.g. ``padbias.max_pans(0.02)``."""

    def __getattr__(self, gate: str):
        try:
            return getattr(pytest.mark, GATE_MARKERS[gate])
        except KeyError:
            raise AttributeError(
                f"pytest_padbias has no gate {gate!r}; the gates are: {', '.join(GATE_MARKERS)}"
            ) from None

    def __dir__(self):
        return list(GATE_MARKERS)


padbias = _PadbiasMarkers()

__all__ = ["padbias", "__version__", "GATE_MARKERS"]
