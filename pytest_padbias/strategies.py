"""hypothesis strategies for property tests of spatial behaviour: shifts and input sizes.

Both shrink toward the simplest case -- shift (0, 0), the smallest size -- so a failing
property is reported with the smallest shift or size that still breaks it. Importing this
module does not import torch (``even_padding_for`` asks the model only when first drawn).
Bad arguments raise ``hypothesis.errors.InvalidArgument``, like hypothesis' own strategies.
"""
from __future__ import annotations

import numbers
import weakref

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

__all__ = ["shifts", "input_sizes"]


def _whole(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def shifts(max_shift) -> st.SearchStrategy[tuple[int, int]]:
    """Displacements ``(dy, dx)`` with ``|dy|, |dx| <= max_shift`` (an int, or a pair
    ``(max_dy, max_dx)`` for non-square inputs); each coordinate shrinks toward 0."""
    pair = max_shift if isinstance(max_shift, (tuple, list)) else (max_shift, max_shift)
    if len(pair) != 2 or not all(_whole(m) and m >= 0 for m in pair):
        raise InvalidArgument(f"shifts(max_shift={max_shift!r}): give a non-negative whole number of pixels or a pair of them")
    max_dy, max_dx = (int(m) for m in pair)
    return st.tuples(st.integers(-max_dy, max_dy), st.integers(-max_dx, max_dx))


def input_sizes(
    min_size: int,
    max_size: int,
    square: bool | None = None,
    parity: str | None = None,
    even_padding_for=None,
) -> st.SearchStrategy[tuple[int, int]]:
    """Input sizes ``(h, w)`` with both sides in ``[min_size, max_size]``.

    ``square``: None for any, True for ``h == w``, False for ``h != w``. ``parity``: None,
    "odd" or "even" (both sides). ``even_padding_for=model``: only sizes at which the model
    pads evenly at every layer, per ``pytest_padbias.geometry.is_even(model, (h, w))``.
    Whether a side pads evenly depends on that side only, so the allowed heights and widths
    are found once per model and range (about three ``is_even`` calls per length) and every
    drawn size is still checked with ``is_even``.
    """
    if not (_whole(min_size) and _whole(max_size)) or not 1 <= min_size <= max_size:
        raise InvalidArgument(
            f"input_sizes(min_size={min_size!r}, max_size={max_size!r}): give whole numbers with 1 <= min_size <= max_size"
        )
    if square not in (None, True, False):
        raise InvalidArgument(f"input_sizes(square={square!r}): accepted are None, True, False")
    if parity not in (None, "odd", "even"):
        raise InvalidArgument(f"input_sizes(parity={parity!r}): accepted are None, 'odd', 'even'")
    lengths = [n for n in range(min_size, max_size + 1) if parity is None or (n % 2 == 1) == (parity == "odd")]
    where = f"between {min_size} and {max_size}" + (f" with {parity} sides" if parity else "")
    if not lengths:
        raise InvalidArgument(f"input_sizes: there is no size {where}")
    if even_padding_for is None:
        return _pairs(lengths, lengths, square, where)
    model = even_padding_for

    def evenly_padded():
        heights, widths = _even_lengths(model, lengths)
        if not heights or not widths:
            raise InvalidArgument(f"input_sizes: no size {where} pads evenly in {type(model).__name__}")
        return _pairs(heights, widths, square, where + " that pads evenly").filter(lambda hw: _is_even(model, hw))

    return st.deferred(evenly_padded)


def _pairs(heights, widths, square, where):
    if square:
        common = sorted(set(heights) & set(widths))
        if not common:
            raise InvalidArgument(f"input_sizes: no square size {where}")
        return st.sampled_from(common).map(lambda s: (s, s))
    sizes = st.tuples(st.sampled_from(heights), st.sampled_from(widths))
    if square is False:
        if len(heights) == len(widths) == 1 and heights == widths:
            raise InvalidArgument(f"input_sizes: no non-square size {where}")
        sizes = sizes.filter(lambda hw: hw[0] != hw[1])
    return sizes


# Answers of is_even per model, kept as long as the model lives.
_EVEN_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _ask_geometry(model, size) -> bool:
    from .geometry import is_even

    return bool(is_even(model, size))


def _is_even(model, size) -> bool:
    answers = _EVEN_CACHE.setdefault(model, {})
    if size not in answers:
        answers[size] = _ask_geometry(model, size)
    return answers[size]


def _even_lengths(model, lengths):
    """Allowed heights and widths: a side pads evenly or not whatever the other side is, so
    each side is probed against a reference length that pads evenly on a square input."""
    reference = next((n for n in lengths if _is_even(model, (n, n))), None)
    if reference is None:
        return [], []
    heights = [n for n in lengths if _is_even(model, (n, reference))]
    widths = [n for n in lengths if _is_even(model, (reference, n))]
    return heights, widths
