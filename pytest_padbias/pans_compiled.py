"""The PAN census's counting compiled with numba: two passes over each channel's centre.

Every KS statistic is a maximum over a border's sorted values b_j of an expression in
lt(b_j) = #(centre < b_j) and le(b_j) = #(centre <= b_j) (:func:`.pans_counts.ks_from_counts`),
and only the counts at the maximising j matter. Per channel:

1. a monotone map of the value (linear in the value, or in the float's bits, i.e. about
   logarithmic: whichever crowds this channel's border values less) cuts the border
   values' range into bins, about four per border value; the bin holding 0 is split into
   cells below, at and above 0 (exact zeros, a third or more of many channels after ReLU
   and zero padding, get a cell of their own);
2. pass 1 histograms the centre over the cells, read straight from the layer's output (no
   copy, no sort): each border value's counts then lie between the centre values in lower
   cells and those up to its own cell;
3. the border values whose upper bound on some maximand reaches that maximand's best
   lower bound (the rule of :func:`.pans_counts.may_hold_a_maximum`, in integers) are the
   only ones that can hold a maximum (a few per cent); pass 2 counts the centre values of
   their cells exactly against them (larger cells hold larger values). From there on the
   work is on the list of those values, not on all k (per border value, that work had
   cost a third of the kernel on 28x28 maps), and the statistics are maximised over it.

The counts are then exact wherever a maximum can be and bounds elsewhere, which is what
``ks_from_counts`` needs to give scipy's statistics bit for bit. With ``exact=True`` every
border value is refined, so all counts are exact (the chunked mode adds counts over
chunks). Each centre value costs a vectorised cell computation, a histogram increment and
a look at its cell's flag in pass 2, about 2 ns on one core, against about ten array
passes per value in the numpy kernels of :mod:`.pans_counts`, whose time was set by
memory traffic. The inner loops index with unsigned integers: numba adds a negative-index
fix-up to every signed index, which had doubled their instructions.

numba is optional: without it (or with ``PADBIAS_NO_NUMBA=1``) the census uses the numpy
kernels, which give the same statistics, more slowly.
"""
from __future__ import annotations

import numpy as np

from .pans_jit import njit as _njit
from .pans_jit import numba, prefetch
from .pans_maxima import bounds_at_hits, candidates, hit_statistics

#: bins per channel: a power of two, at least BINS_PER_BORDER per border value and one per
#: VALUES_PER_BIN centre values, at most MAX_BINS (the histogram then stays in a core's L2).
#: Four per border value: the cells holding a refined value then hold fewer centre values
#: for the placement pass (from one per border value: 13-16% less time on 56x56 maps).
BINS_PER_BORDER = 4
VALUES_PER_BIN = 16
MAX_BINS = 1 << 15
#: within a cell, a linear scan up to this many refined border values, a binary search beyond
SCAN = 8
_EXPONENT = np.int32(0x7F800000)
#: ks_2samp's exact mode up to this sample size (as :data:`.pans_counts.AUTO_EXACT_MAX`)
AUTO_EXACT_MAX = 10000
#: maps of at least this many values prefetch the next image's map
PREFETCH_FROM = 512


def available() -> bool:
    return numba is not None


@_njit
def key_of(b):
    """int32 bits of a finite float32 -> int64 key ordered as the floats: the magnitude's
    bits, negated for negative values (so -0.0 and 0.0 share the key 0). Branch-free."""
    s = b >> 31  # 0 or -1
    return np.int64(((b & np.int32(0x7FFFFFFF)) ^ s) - s)


@_njit
def _linear_fit(low, high, bins):
    """(False, low, scale, 0, 0): bins linear in the value over [low, high]."""
    scale = np.float32(0.0)
    if high > low:
        scale = np.float32((bins - 1) / (np.float64(high) - np.float64(low)))
        while np.int64((high - low) * scale) > bins - 1:  # float32 rounding: stay in range
            scale = np.nextafter(scale, np.float32(0.0))
    return False, low, scale, np.int64(0), np.int64(0)


@_njit
def _key_fit(low, high, bins, bits_low, bits_high):
    """(True, low, 0, klow, shift): bins linear in the key (about logarithmic in the value)."""
    klow = key_of(bits_low)
    shift = 0
    while ((key_of(bits_high) - klow) >> shift) >= bins:
        shift += 1
    return True, low, np.float32(0.0), klow, np.int64(shift)


@_njit
def bin_of(v, b, use_keys, low, scale, klow, shift, bins):
    """1 + the bin of finite v (bits b), clamped to 0 below the border values' range and
    bins + 1 above it: a monotone map either way (a value just outside the range may share
    the end bin, which only loosens that bin's bounds). Branch-free."""
    if use_keys:
        t = (key_of(b) - klow) >> shift
        return np.int32(1 + min(max(t, -1), bins))
    x = np.floor((v - low) * scale)
    return np.int32(1) + np.int32(min(max(x, np.float32(-1.0)), np.float32(bins)))


@_njit
def cell_of(v, b, use_keys, low, scale, klow, shift, bins):
    """bin_of(v), except that the bin z holding 0 is split in three, for v below, at and
    above 0 (the bins above it move up by 2): cells, still in the order of the values, in
    which exact zeros (a third or more of many channels after ReLU and zero padding) have
    a cell of their own, whose counts are exact without any search. (Splitting every bin
    so had tripled the histogram, which then no longer fitted a core's L1 cache.)"""
    t = bin_of(v, b, use_keys, low, scale, klow, shift, bins)
    z = zero_bin(use_keys, low, scale, klow, shift, bins)
    sign = np.int32(v > 0) - np.int32(v < 0)
    return t + 2 * np.int32(t > z) + np.int32(t == z) * (1 + sign)


@_njit
def zero_bin(use_keys, low, scale, klow, shift, bins):
    return bin_of(np.float32(0.0), np.int32(0), use_keys, low, scale, klow, shift, bins)


@_njit
def zero_cell(use_keys, low, scale, klow, shift, bins):
    """The cell of exact zeros."""
    return zero_bin(use_keys, low, scale, klow, shift, bins) + 1


@_njit
def first_at_least(merged, lo, hi, v):
    """First p in [lo, hi) with merged[p] >= v (sorted), or hi."""
    if merged[lo] >= v:
        return lo
    if merged[hi - 1] < v:
        return hi
    # (a bin of one repeated value, e.g. a dead channel's zeros, ends above)
    if hi - lo <= SCAN:
        while merged[lo] < v:
            lo += 1
        return lo
    while lo < hi:
        mid = (lo + hi) >> 1
        if merged[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_njit
def _plane_cells(plane, plane_bits, fit, bins, ids):
    """ids[x] = cell_of(plane[x]) over one image's whole map (borders too: one long loop,
    which the compiler vectorises; row by row, 14x14 maps cost twice as much). Exact zeros
    go to one of 8 spare slots after the cells, in turn: increments of one counter value
    after value wait for each other (a dead channel took 2.5x as long)."""
    use_keys, low, scale, klow, shift = fit
    spare = bins + 4
    if use_keys:  # (two loops: a loop-invariant branch inside one kept it scalar)
        for x in range(plane.size):
            cell = cell_of(plane[x], plane_bits[x], True, low, scale, klow, shift, bins)
            ids[x] = spare + (x & 7) if plane[x] == 0 else cell
    else:
        for x in range(plane.size):
            cell = cell_of(plane[x], plane_bits[x], False, low, scale, klow, shift, bins)
            ids[x] = spare + (x & 7) if plane[x] == 0 else cell


@_njit
def _histogram_pass(out, bits, c, fit, bins, chist, ids, stored):
    """chist[cell] += 1 for every centre value of channel c, whose cells (or spare slots) are
    also kept in ``stored`` (uint16, in reading order) for the placement pass; False at the
    first NaN or infinite value."""
    images, channels, h, w = out.shape
    planes, plane_bits = out.reshape(images, channels, h * w), bits.reshape(images, channels, h * w)
    p = np.uint64(0)
    # the next image's map is hinted into the cache a slice per row while one is counted
    # (it comes from DRAM as a rule: 8% less time on 56x56 maps; all at once, most hints
    # were dropped; on maps under PREFETCH_FROM values they cost more)
    hinted, per_row = h * w >= PREFETCH_FROM, np.uint64(h * w) // np.uint64(h - 2) + np.uint64(1)
    for i in range(images):
        plane, plane_bits_i = planes[i, c], plane_bits[i, c]
        bad = 0
        for x in range(h * w):
            bad |= (plane_bits_i[x] & _EXPONENT) == _EXPONENT
        if bad:
            return False
        _plane_cells(plane, plane_bits_i, fit, bins, ids)
        following, hint = planes[min(i + 1, images - 1), c], hinted and i + 1 < images
        for y in range(1, h - 1):
            if hint:
                for t in range(np.uint64(y - 1) * per_row, min(np.uint64(y) * per_row, np.uint64(h * w)), np.uint64(16)):
                    prefetch(following, t)
            # (unsigned indices: numba adds a negative-index fix-up to every signed one, which
            # had doubled this loop's instructions)
            for x in range(np.uint64(y * w + 1), np.uint64(y * w + w - 1)):
                cell = ids[x]
                chist[cell] += 1
                stored[p] = cell
                p += np.uint64(1)
    use_keys, low, scale, klow, shift = fit
    spare = bins + 4
    chist[zero_cell(use_keys, low, scale, klow, shift, bins)] = chist[spare:spare + 8].sum()
    chist[spare:] = 0
    return True


@_njit
def _cells_and_crowding(values, bits, fit, bins, cells_out, per_cell):
    """Each value's cell under ``fit``, and sum over cells of (values in it)^2: the
    comparisons a centre value distributed like ``values`` would cost, times k."""
    use_keys, low, scale, klow, shift = fit
    for i in range(values.size):
        cells_out[i] = cell_of(values[i], bits[i], use_keys, low, scale, klow, shift, bins)
    crowding = 0
    for i in range(values.size):
        crowding += 2 * per_cell[cells_out[i]] + 1
        per_cell[cells_out[i]] += 1
    for i in range(values.size):
        per_cell[cells_out[i]] = 0
    return crowding


@_njit
def _fit(values, sizes, bins, value_cells, spare_cells, per_cell):
    """The map of the border values ``values`` (runs of ``sizes``, each sorted) onto the
    bins that crowds them least, linear in the value or in its key; ``value_cells`` their cells."""
    bits = values.view(np.int32)
    i_low, i_high, start = 0, sizes[0] - 1, 0
    for s in sizes:
        if values[start] < values[i_low]:
            i_low = start
        if values[start + s - 1] > values[i_high]:
            i_high = start + s - 1
        start += s
    low, high = values[i_low], values[i_high]
    linear = _linear_fit(low, high, bins)
    crowding = _cells_and_crowding(values, bits, linear, bins, value_cells, per_cell)
    if crowding <= 2 * values.size:  # (about one value per cell: no better map to look for)
        return linear
    keys = _key_fit(low, high, bins, bits[i_low], bits[i_high])
    if _cells_and_crowding(values, bits, keys, bins, spare_cells, per_cell) >= crowding:
        return linear
    value_cells[:] = spare_cells
    return keys


@_njit
def _group_refined(values, value_cells, refined, group_start, group_end, group_values, group_index, flag):
    """The refined border values (indices ``refined``) sorted, so grouped by cell (the map
    is monotone): ``group_values[group_start[c]:group_end[c]]``, their indices in
    ``group_index``; flags their cells. Returns how many there are."""
    n = refined.size
    for p in range(n):
        group_values[p], group_index[p] = values[refined[p]], refined[p]
    _sort_group(group_values, group_index, 0, n)
    for p in range(n):
        c = value_cells[group_index[p]]
        if p == 0 or c != value_cells[group_index[p - 1]]:
            group_start[c] = p
            flag[c] = True
        group_end[c] = p + 1
    return n


@_njit
def _sort_group(group_values, group_index, start, stop):
    """Sort group_values[start:stop] (with group_index): insertion sort (the values come
    from four sorted runs, so they are nearly sorted), argsort for large groups."""
    if stop - start > 64:
        order = np.argsort(group_values[start:stop], kind="mergesort")
        group_values[start:stop] = group_values[start:stop][order]
        group_index[start:stop] = group_index[start:stop][order]
        return
    for p in range(start + 1, stop):
        v, o, q = group_values[p], group_index[p], p
        while q > start and group_values[q - 1] > v:
            group_values[q], group_index[q] = group_values[q - 1], group_index[q - 1]
            q -= 1
        group_values[q], group_index[q] = v, o


@_njit
def _exact_groups(group_values, group_index, group_start, group_end, value_cells, before, counts, n, lt_row, le_row):
    """Exact lt/le of every refined border value: the centre values in lower cells, plus
    those of its own cell counted against it by the placement pass."""
    p = 0
    while p < n:
        c = value_cells[group_index[p]]
        start, stop, running = group_start[c], group_end[c], before[c]
        for q in range(start, stop):
            if q > start and group_values[q] == group_values[q - 1]:
                lt_row[group_index[q]], le_row[group_index[q]] = lt_row[group_index[q - 1]], le_row[group_index[q - 1]]
            else:
                running += counts[2 * q]
                lt_row[group_index[q]] = running
                running += counts[2 * q + 1]
                le_row[group_index[q]] = running
        p = stop


@_njit
def _placement_pass(out, c, stored, flag, group_start, group_end, group_values, counts):
    """Each centre value of a flagged cell (the cells pass 1 kept in ``stored``) counted
    against the sorted refined border values of its cell: counts[2p] for one below
    group_values[p] (and above its predecessor), counts[2p + 1] for one equal to it (the
    first of equal values takes the count). Four cells at a time: the flagged ones are a
    few per cent, so one test mostly passes over four values."""
    images, _, h, w = out.shape
    at = np.uint64(0)
    width = np.uint64(w - 2)
    for i in range(images):
        for y in range(1, h - 1):
            row = out[i, c, y]
            x = np.uint64(0)
            while x + np.uint64(4) <= width:
                a = at + x
                if (flag[stored[a]] | flag[stored[a + np.uint64(1)]] | flag[stored[a + np.uint64(2)]]
                        | flag[stored[a + np.uint64(3)]]):
                    for d in range(np.uint64(4)):
                        _place(stored[a + d], row[x + d + np.uint64(1)], flag, group_start, group_end, group_values,
                               counts)
                x += np.uint64(4)
            while x < width:
                _place(stored[at + x], row[x + np.uint64(1)], flag, group_start, group_end, group_values, counts)
                x += np.uint64(1)
            at += width


@_njit
def _place(cell, v, flag, group_start, group_end, group_values, counts):
    if flag[cell]:
        p = first_at_least(group_values, group_start[cell], group_end[cell], v)
        if p < group_end[cell]:  # (above every refined value of its cell: not needed)
            counts[2 * p + (group_values[p] == v)] += 1


@_njit
def _cell_bounds(chist, before, value_cells, lower, upper):
    """before[c]: the centre values in the cells below c; each border value's counts then
    lie in [before[its cell], before[its cell + 1]] (``lower``, ``upper``)."""
    before[0] = 0
    for c in range(before.size - 1):
        before[c + 1] = before[c] + chist[c]
    for i in range(value_cells.size):
        lower[i], upper[i] = before[value_cells[i]], before[value_cells[i] + np.uint32(1)]


@_njit
def _compact(hit, hits):
    """The indices of ``hit`` into ``hits``, branch-free (they are a few per cent); how many."""
    nh = 0
    for i in range(hit.size):
        hits[nh] = i
        nh += hit[i]
    return nh


@_njit
def count_block(out, bits, r0, queries, sizes, lt, le, exact, bins_per_border, values_per_bin, max_bins, stats,
                want_stats, exact_max):
    """lt/le of every query of row r (channel r0 + r of ``out``), whose runs of ``sizes``
    are each sorted: exact where a maximum can be (everywhere with ``exact``), bounds
    elsewhere; with ``want_stats`` also each run's KS, KS+, KS- in ``stats[:, r, run]``.
    Returns the first channel with a non-finite centre value, or -1."""
    rows, k = queries.shape
    images, _, h, w = out.shape
    m = images * (h - 2) * (w - 2)
    bins = 16
    while bins < min(max_bins, 1 << 15) and (bins < bins_per_border * k or bins * values_per_bin < m):
        bins *= 2  # (at most 2**15: cells and spare slots fit the uint16 of ``stored``)
    cells = bins + 4  # bins 0..bins + 1, the bin of 0 in three
    stored = np.empty(m, dtype=np.uint16)
    value_cells, spare_cells = np.empty(k, dtype=np.uint32), np.empty(k, dtype=np.uint32)  # (unsigned: no index fix-ups)
    lower, upper = np.empty(k, dtype=np.float64), np.empty(k, dtype=np.float64)  # (counts: exact in float64)
    hit = np.empty(k, dtype=np.bool_)
    hits, refined = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64)
    per_cell = np.zeros(cells, dtype=np.int64)
    chist, before = np.zeros(cells + 8, dtype=np.int32), np.empty(cells + 1, dtype=np.int64)
    flag = np.zeros(cells + 8, dtype=np.bool_)  # (+ the spare slots of exact zeros: never flagged)
    group_start, group_end = np.empty(cells, dtype=np.int64), np.empty(cells, dtype=np.int64)
    group_values, group_index = np.empty(k, dtype=np.float32), np.empty(k, dtype=np.int64)
    counts = np.empty(2 * k + 2, dtype=np.int64)
    ids = np.empty(h * w, dtype=np.uint32)
    for r in range(rows):
        q = queries[r]
        row = 0 if want_stats else r  # (statistics only: one row of scratch counts, reused)
        fit = _fit(q, sizes, bins, value_cells, spare_cells, per_cell)
        chist[:] = 0
        if not _histogram_pass(out, bits, r0 + r, fit, bins, chist, ids, stored):
            return r0 + r
        _cell_bounds(chist, before, value_cells, lower, upper)
        if not want_stats:  # (the counts are the result: bounds everywhere, made exact below where needed)
            for i in range(k):
                lt[row, i], le[row, i] = lower[i], upper[i]
        hit[:] = exact
        if not exact:
            candidates(lower, upper, sizes, m, hit)
        nh = _compact(hit, hits)
        zero = zero_cell(fit[0], fit[1], fit[2], fit[3], fit[4], bins)
        n_refined = bounds_at_hits(hits[:nh], lower, upper, value_cells, zero, lt[row], le[row], refined)
        if n_refined:
            n = _group_refined(q, value_cells, refined[:n_refined], group_start, group_end, group_values,
                               group_index, flag)
            counts[:2 * n + 2] = 0
            _placement_pass(out, r0 + r, stored, flag, group_start, group_end, group_values, counts)
            _exact_groups(group_values, group_index, group_start, group_end, value_cells, before, counts, n, lt[row],
                          le[row])
            for p in range(n_refined):
                flag[value_cells[refined[p]]] = False
        if want_stats:
            hit_statistics(lt[row], le[row], hits[:nh], sizes, m, exact_max, stats, r)
    return -1


def contiguous(out):
    """``out`` as the compiled kernel reads it (C-contiguous float32; a copy only when the
    layer's output is not, e.g. channels-last), once per layer; unchanged without numba."""
    return np.ascontiguousarray(out, dtype=np.float32) if numba is not None else out


def _run(out, r0: int, queries, sizes, exact: bool, stats, name: str):
    from .result import PadbiasError

    out = contiguous(out)  # (a no-op after :func:`contiguous`)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    shape = queries.shape if stats is None else (1, queries.shape[1])  # (statistics: scratch counts only)
    lt = np.empty(shape, dtype=np.int64)
    le = np.empty(shape, dtype=np.int64)
    bad = count_block(out, out.view(np.int32), r0, queries, np.asarray(sizes, dtype=np.int64), lt, le, exact,
                      BINS_PER_BORDER, VALUES_PER_BIN, MAX_BINS, np.empty((3, 1, 1)) if stats is None else stats,
                      stats is not None, AUTO_EXACT_MAX)
    if bad >= 0:
        raise PadbiasError(f"layer {name} produced NaN or infinite activations; the PAN census needs finite conv outputs")
    return lt, le


def compiled_counts(out, r0: int, r1: int, queries, sizes, exact: bool = False, name: str = ""):
    """(lt, le) int64 ``[r1 - r0, k]`` of the centre values of channels r0:r1 of ``out``
    [N, C, H, W] below / at or below each of ``queries`` [r1 - r0, k] (finite float32, its
    runs of ``sizes`` each sorted): exact wherever a KS maximum can be (everywhere with
    ``exact``), bounds that cannot reach a maximum elsewhere. Refuses NaN and infinite
    centre values."""
    return _run(out, r0, queries, sizes, exact, None, name)


def compiled_statistics(out, r0: int, r1: int, queries, sizes, stats, name: str = "") -> None:
    """KS, KS+ and KS- of channels r0:r1 of ``out`` against each run (border) of
    ``queries`` (as :func:`compiled_counts`) into ``stats`` [3, r1 - r0, runs], equal to
    ``ks_from_counts`` on the exact counts, i.e. to scipy's."""
    _run(out, r0, queries, sizes, False, stats, name)
