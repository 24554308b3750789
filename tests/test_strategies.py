"""The public hypothesis strategies: shifts and input sizes (square or not, odd or even,
optionally only sizes where a model pads evenly)."""
import pytest
import torch.nn as nn
from hypothesis import find, given, settings
from hypothesis.errors import InvalidArgument

from pytest_padbias import strategies
from pytest_padbias.strategies import input_sizes, shifts


def two_stride_two_convs():
    """Pads evenly exactly when the side is 1 mod 4 (each 3x3 stride-2 conv with padding 1
    needs an odd input, and the first halves (n + 1))."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))


@given(shifts(5))
def test_shifts_stay_within_the_bound(shift):
    dy, dx = shift
    assert isinstance(dy, int) and isinstance(dx, int) and max(abs(dy), abs(dx)) <= 5


@given(shifts((0, 3)))
def test_shifts_take_a_bound_per_axis(shift):
    assert shift[0] == 0 and abs(shift[1]) <= 3


def test_shifts_shrink_to_the_smallest_failing_shift():
    dy, dx = find(shifts(10), lambda s: abs(s[1]) >= 4, settings=settings(database=None))
    assert (dy, abs(dx)) == (0, 4)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", (1, 2, 3), (1, -1)])
def test_bad_shift_bounds_are_rejected(bad):
    with pytest.raises(InvalidArgument, match=r"shifts\(max_shift=.*non-negative whole number"):
        shifts(bad)


@given(input_sizes(7, 12))
def test_sizes_are_within_the_range_square_or_not(size):
    assert all(7 <= s <= 12 for s in size)


@given(input_sizes(7, 12, square=True, parity="odd"))
def test_square_odd_sizes(size):
    h, w = size
    assert h == w and h % 2 == 1


@given(input_sizes(7, 12, square=False, parity="even"))
def test_non_square_even_sizes(size):
    h, w = size
    assert h != w and h % 2 == 0 and w % 2 == 0


def test_sizes_shrink_to_the_smallest():
    assert find(input_sizes(5, 40), lambda s: True, settings=settings(database=None)) == (5, 5)
    assert find(input_sizes(5, 40, square=False), lambda s: True, settings=settings(database=None)) in ((5, 6), (6, 5))


@pytest.mark.parametrize("kwargs, words", [
    (dict(min_size=0, max_size=4), "1 <= min_size <= max_size"),
    (dict(min_size=9, max_size=4), "1 <= min_size <= max_size"),
    (dict(min_size=2.5, max_size=4), "whole numbers"),
    (dict(min_size=2, max_size=4, square="yes"), "square='yes'"),
    (dict(min_size=2, max_size=4, parity="prime"), "parity='prime'"),
    (dict(min_size=4, max_size=4, parity="odd"), "no size between 4 and 4 with odd sides"),
    (dict(min_size=4, max_size=4, square=False), "no non-square size between 4 and 4"),
])
def test_bad_size_arguments_are_rejected(kwargs, words):
    with pytest.raises(InvalidArgument, match="input_sizes"):
        input_sizes(**kwargs)
    with pytest.raises(InvalidArgument) as info:
        input_sizes(**kwargs)
    assert words in str(info.value)


def test_even_padding_sizes_come_from_is_even_with_few_calls(monkeypatch):
    """With a stand-in for geometry.is_even (odd sides pad evenly): only odd sizes come
    out, and the allowed lengths cost about three is_even calls per length."""
    calls = []

    def odd_is_even(model, size):
        calls.append(size)
        return size[0] % 2 == 1 and size[1] % 2 == 1

    monkeypatch.setattr(strategies, "_ask_geometry", odd_is_even)
    model = nn.Identity()
    seen = []

    @settings(max_examples=30, database=None)
    @given(input_sizes(10, 30, even_padding_for=model))
    def collect(size):
        seen.append(size)

    collect()
    assert seen and all(h % 2 == 1 and w % 2 == 1 for h, w in seen)
    assert len(set(calls)) <= 3 * 21 + len(set(seen))


@settings(max_examples=25, deadline=None, database=None)
@given(input_sizes(8, 40, even_padding_for=two_stride_two_convs(), square=False))
def test_even_padding_sizes_with_the_real_geometry(size):
    """Depends on pytest_padbias.geometry.is_even."""
    h, w = size
    assert h % 4 == 1 and w % 4 == 1 and h != w


def test_no_evenly_padded_size_is_a_clear_error():
    strategy = input_sizes(10, 12, even_padding_for=two_stride_two_convs())  # 13 would be the first
    with pytest.raises(InvalidArgument, match="no size between 10 and 12 pads evenly in Sequential"):
        find(strategy, lambda s: True, settings=settings(database=None))
