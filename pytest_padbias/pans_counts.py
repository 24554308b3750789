"""The numpy counting kernels of the PAN census: how many centre values lie below each border value.

The census uses the compiled kernel of :mod:`.pans_compiled` where numba is installed
(the same method in one fused pass, several times faster); these kernels are the
fallback, and ``ks_from_counts`` turns either's counts into scipy's statistics.

Every KS statistic of :mod:`pytest_padbias.pans` is a maximum, over the sorted border
values b_1 <= ... <= b_n of one border, of an expression in lt(b_j) = #(centre < b_j) and
le(b_j) = #(centre <= b_j) (see ``ks_from_counts``), and only the counts at the maximising
j matter. :func:`bucket_counts` (one pass over all images) therefore never sorts the
centre. It histograms each channel's centre into bins of a monotone map of the value,
which bounds every count between the centre values in lower bins and those up to its own
bin; it keeps only the border values whose upper bound on some maximand reaches the best
lower bound of that maximand, and counts those exactly among the centre values of their
bins alone. The pass over the activations is a few vectorised operations per value
(numpy's sort was the cost before: 15-35 ns per value on a 2-core EPYC, against about
1 ns for a histogram update), and what is sorted is the few per cent of values that
share a bin with a possible maximum.

Exact zeros get a bin of their own (each bin is split into below, at and above 0): ReLU
and zero padding make 0 the one value that fills a third or more of many channels, and a
bin holding a single value needs no refinement.

:func:`exact_counts` (sort, then binary searches) counts every border value exactly; the
chunked mode needs that, since its counts are sums over chunks, and small maps (7x7), with
about as many border values as centre values, are faster that way (``SORT_FROM``).
"""
from __future__ import annotations

import numpy as np

from .result import PadbiasError

#: centre values handled at once per worker (at least one channel; 21 bytes of scratch each)
ELEM_BUDGET = 1 << 20
#: histogram bins per channel: about one per VALUES_PER_BIN centre values, within these bounds
#: (more bins leave fewer values to refine; past 2**14 the histogram no longer fits in L2)
VALUES_PER_BIN = 4
MIN_BINS, MAX_BINS = 16, 1 << 14
#: bins histogrammed by one np.bincount call: its random increments stay in a core's L2
#: (a block's whole histogram, up to 6 MB on 14x14 maps, cost twice as much per value)
GROUP_BINS = 1 << 16
#: border values per centre value from which sorting the centre beats the histogram
#: (measured per map size on MobileNetV2: 7x7 maps have about 1.1, 14x14 0.39)
SORT_FROM = 0.5
_SIGN = np.int32(-2 ** 31)


def bins_for(m: int) -> int:
    return int(min(MAX_BINS, max(MIN_BINS, m // VALUES_PER_BIN)))


def centre_block(out, r0: int, r1: int, buffer):
    """The centre (rows/columns 1..size-2) of channels r0:r1 of ``out`` [N, C, H, W] as one
    contiguous row per channel, in ``buffer``."""
    n, _, h, w = out.shape
    block = buffer.reshape(r1 - r0, n * (h - 2) * (w - 2))
    np.copyto(block.reshape(r1 - r0, n, h - 2, w - 2), out[:, r0:r1, 1:h - 1, 1:w - 1].transpose(1, 0, 2, 3))
    return block


def sorted_centre(out, r0: int, r1: int, buffer, name: str):
    """:func:`centre_block`, each row sorted; refuses NaN and infinite values."""
    block = centre_block(out, r0, r1, buffer)
    block.sort(axis=1)
    # sorted: NaNs last, infinities at the ends
    if not (np.isfinite(block[:, 0]).all() and np.isfinite(block[:, -1]).all()):
        raise PadbiasError(f"layer {name} produced NaN or infinite activations; the PAN census needs finite conv outputs")
    return block


def exact_counts(centre, queries):
    """(lt, le) int64 ``[rows, k]`` of every query value into the sorted ``centre`` rows."""
    m = centre.shape[1]
    lt = np.empty(queries.shape, dtype=np.int64)
    for r, (row, q) in enumerate(zip(centre, queries)):
        lt[r] = np.searchsorted(row, q, "left")
    le = lt.copy()
    # <= differs from < only where a query equals a centre value: search those again
    tied = np.take_along_axis(centre, np.minimum(lt, m - 1), axis=1) == queries
    for r in np.flatnonzero(tied.any(axis=1)):
        cols = np.flatnonzero(tied[r])
        le[r, cols] = np.searchsorted(centre[r], queries[r, cols], "right")
    return lt, le


# ------------------------------------------------------------- statistics from counts


#: scipy.stats.ks_2samp's method='auto' computes the exact p-value, and with it rounds the
#: statistic once from its exact lattice value h / lcm(n1, n2), up to this sample size
AUTO_EXACT_MAX = 10000


def _sup(a, n_a: int, b, n_b: int):
    """Per row, max over j of a_j / n_a - b_j / n_b, at least 0, rounded as ks_2samp rounds it.

    One of ``a``, ``b`` is a count array ``[rows, n]``, the other a vector over j. In
    ks_2samp's exact mode the statistic is h / lcm rounded once (the integer numerator
    over n_a * n_b here); in its asymptotic mode it is the float64 difference of the two
    ECDF values, each rounded, as its ``cdf1 - cdf2`` (rounding is monotone and symmetric,
    so the maximum of the rounded differences is at the exact maximum's j)."""
    array, vector = (a, b) if a.ndim == 2 else (b, a)
    if max(n_a, n_b) <= AUTO_EXACT_MAX:
        work = np.multiply(array, n_b if array is a else -n_a)
        work += vector * n_b if vector is a else -vector * n_a
        return np.maximum(work.max(axis=1), 0) / float(n_a * n_b)
    if array is a:
        work = np.divide(array, n_a)
        work -= vector / n_b
    else:
        work = np.divide(array, n_b)
        np.subtract(vector / n_a, work, out=work)
    return np.maximum(work.max(axis=1), 0.0)


def _exact_ks(lt, le, n: int, m: int):
    """``ks_from_counts`` in ks_2samp's exact mode (n, m <= 10000): ``_sup``'s numerators and
    denominators (so its floats), with lt * n and le * n formed once for all three statistics
    in reused buffers (on small maps these passes cost about as much as the counting)."""
    k = min(n, m)
    j = np.arange(1, n + 1, dtype=np.int64)
    lt_n, le_n = np.multiply(lt, n), np.multiply(le, n)
    work = np.empty_like(lt_n)

    def top(numerator_out, denominator):
        return np.maximum(numerator_out.max(axis=1), 0) / float(denominator)

    ks = np.maximum(top(np.subtract(j * m, le_n, out=work), n * m),
                    top(np.subtract(lt_n, (j - 1) * m, out=work), n * m))
    np.maximum(lt_n, (m - k) * n, out=lt_n)  # the k highest: max(0, lt - (m - k)) * n, shifted by (m - k) * n
    ks_plus = top(np.subtract(lt_n, (j - 1) * k + (m - k) * n, out=work), k * n)
    np.minimum(le_n, k * n, out=le_n)  # the k lowest: min(k, le) * n
    ks_minus = top(np.subtract(j * k, le_n, out=work), n * k)
    return ks, ks_plus, ks_minus


def ks_from_counts(lt, le, n: int, m: int):
    """KS, KS+ and KS- per row from exact counts of the centre below sorted border values,
    equal to scipy.stats.ks_2samp's statistics (method 'auto', what a plain call uses).

    ``lt``/``le`` are int64 arrays ``[rows, n]``: #(centre < b_j) and #(centre <= b_j) for
    the border values b_1 <= ... <= b_n of each row; ``m`` is the centre size. An ECDF
    difference F_border - F_centre can only rise at a border value, F_centre - F_border
    only just before one, so both sups are maxima over j (a tie group's last j gives
    #(border <= b_j) = j, its first gives #(border < b_j) = j - 1; the other j's of the
    group give smaller values).
    """
    if max(n, m) <= AUTO_EXACT_MAX:
        return _exact_ks(lt, le, n, m)
    j = np.arange(1, n + 1, dtype=np.int64)
    ks = np.maximum(_sup(j, n, le, m), _sup(lt, m, j - 1, n))
    k = min(n, m)
    # the k highest centre values hold max(0, lt - (m - k)) values below b: 'less' = sup(F_top - F_border)
    ks_plus = _sup(np.maximum(lt - (m - k), 0), k, j - 1, n)
    # the k lowest hold min(k, le) values at or below b: 'greater' = sup(F_border - F_bottom)
    ks_minus = _sup(j, n, np.minimum(le, k), k)
    return ks, ks_plus, ks_minus


# ------------------------------------------------------------------ histogram kernel


def _bin_map(centre, name: str):
    """Per row: the offset and scale of the monotone map value -> bin in [0, nb), and nb.

    float32 subtraction of a constant and multiplication by a positive constant are
    monotone (correctly rounded), and so are clipping and truncation: x < y gives
    bin(x) <= bin(y), which is all the bounds need."""
    lo, hi = centre.min(axis=1, keepdims=True), centre.max(axis=1, keepdims=True)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise PadbiasError(f"layer {name} produced NaN or infinite activations; the PAN census needs finite conv outputs")
    nb = bins_for(centre.shape[1])
    span = hi.astype(np.float64) - lo
    scale = np.where(span > 0, nb / np.where(span > 0, span, 1.0), 0.0)
    return lo, np.minimum(scale, 1e38).astype(np.float32), nb


def _bin_ids(values, lo, scale, nb: int, offsets, scratch: "Scratch"):
    """int64 bin id of every value: row offset + 3 * bin + (0 below zero, 1 at zero, 2 above).

    Splitting a bin at 0 keeps the map monotone (within a bin, the sign orders the values).
    Computed in float32 (3 * bin + 2 < 2**24 is exact) in reused buffers: a fresh array
    costs a page fault per 4 KB, which took more time than the arithmetic."""
    t = np.subtract(values, lo, out=scratch.get("t", values.shape, np.float32))
    t *= scale
    np.clip(t, 0, nb - 1, out=t)  # queries may lie outside the centre's range
    np.floor(t, out=t)
    t *= 3
    t += np.sign(values, out=scratch.get("sign", values.shape, np.float32))
    ids = scratch.get("ids", values.shape, np.int64)
    np.copyto(ids, t, casting="unsafe")
    ids += offsets  # (offsets include the +1 that makes sign's -1, 0, 1 into 0, 1, 2)
    return ids


def _order_keys(ids, values):
    """uint64 keys ordering (bin id, value): the id above an order-preserving image of the
    float32 bits (-0.0 first made +0.0, which compares equal to it)."""
    bits = np.add(values, np.float32(0.0), dtype=np.float32).view(np.int32)
    flip = bits >> 31
    flip |= _SIGN
    bits ^= flip
    keys = ids.astype(np.uint64) << np.uint64(32)
    keys |= bits.view(np.uint32)
    return keys


def _maximand_bounds(lower, upper, n: int, m: int):
    """(lowest, highest) numerators of the four maximands of ``ks_from_counts`` at every j
    (1-based) of one border, for counts lt, le known to lie in [lower, upper]."""
    k = min(n, m)
    j = np.arange(1, n + 1, dtype=lower.dtype)
    low = (j * m - upper * n, lower * n - (j - 1) * m,
           np.maximum(lower - (m - k), 0) * n - (j - 1) * k, j * k - np.minimum(upper, k) * n)
    high = (j * m - lower * n, upper * n - (j - 1) * m,
            np.maximum(upper - (m - k), 0) * n - (j - 1) * k, j * k - np.minimum(lower, k) * n)
    return low, high


def may_hold_a_maximum(lower, upper, sizes, m: int):
    """Boolean ``[rows, k]``: the border values at which some maximand can reach its maximum.

    A j whose highest value of a maximand stays below the lowest value that maximand
    reaches at some j (or at or below 0, the floor of every statistic) cannot hold its
    maximum. Numerators differ by at least 1 in n*m, far more than float64 rounding of the
    asymptotic mode, so this holds for the rounded statistics too; an exact tie is kept."""
    hit = np.zeros(lower.shape, dtype=bool)
    # every numerator lies within +-n*m: int32 halves the memory traffic where it fits
    if 2 * max(sizes) * m < 2 ** 31:
        lower, upper = lower.astype(np.int32), upper.astype(np.int32)
    start = 0
    for n in sizes:
        seg = slice(start, start + n)
        for low, high in zip(*_maximand_bounds(lower[:, seg], upper[:, seg], n, m)):
            # (integers: high > 0 and high >= the best low is high >= max(best low, 1))
            hit[:, seg] |= high >= np.maximum(low.max(axis=1, keepdims=True), 1)
        start += n
    return hit


def bucket_counts(centre, queries, sizes, name: str = "", scratch: "Scratch | None" = None):
    """(lt, le) ``[rows, k]``, exact wherever a KS maximum can be and bounds elsewhere.

    ``centre`` [rows, M] float32 in any order; ``queries`` holds the borders of ``sizes``
    side by side, each sorted. Elsewhere lt is its lower and le its upper bound, so every
    maximand there is at most its true value, and below the maximum, which is reached at
    an exact j: the statistics of ``ks_from_counts`` are those of the full counts.

    Bin ids restart every ``group`` rows (one bincount per group); a value's global bin
    is its id plus its group's first bin."""
    rows, m = centre.shape
    scratch = scratch or Scratch()
    lo, scale, nb = _bin_map(centre, name)
    per_row = 3 * nb
    group = max(1, GROUP_BINS // per_row)
    ids = _bin_ids(centre, lo, scale, nb, 1 + (np.arange(rows) % group)[:, None] * per_row, scratch).ravel()
    hist = np.empty(rows * per_row, dtype=np.int64)
    for r0 in range(0, rows, group):
        r1 = min(r0 + group, rows)
        hist[r0 * per_row:r1 * per_row] = np.bincount(ids[r0 * m:r1 * m], minlength=(r1 - r0) * per_row)
    through = np.cumsum(hist.reshape(rows, per_row), axis=1).ravel()
    query_ids = _bin_ids(queries, lo, scale, nb, 1 + np.arange(rows)[:, None] * per_row, Scratch())
    le = through.take(query_ids)           # centre values in this bin or below
    shared = hist.take(query_ids)           # ... in this bin
    lt = le - shared
    # a bin of exact zeros holds one value: its counts are exact already
    unsure = (shared > 0) & (query_ids % 3 != 1)
    refine = unsure & may_hold_a_maximum(lt, le, sizes, m)
    if refine.any():
        picked = _picked(ids, query_ids[refine], rows, m, per_row, group, scratch)
        _refine(centre.ravel(), picked, queries[refine], query_ids[refine], lt, le, refine)
    return lt, le


def _picked(ids, wanted_ids, rows: int, m: int, per_row: int, group: int, scratch: "Scratch"):
    """(flat index, global bin id) of the centre values in the bins of ``wanted_ids``."""
    wanted = np.zeros(rows * per_row, dtype=bool)
    wanted[wanted_ids] = True
    mask = scratch.get("picked", ids.shape, np.bool_)
    for r0 in range(0, rows, group):
        r1 = min(r0 + group, rows)
        wanted[r0 * per_row:r1 * per_row].take(ids[r0 * m:r1 * m], out=mask[r0 * m:r1 * m])
    where = np.flatnonzero(mask)
    return where, ids.take(where) + (where // (group * m)) * (group * per_row)


def _refine(centre, picked, values, value_ids, lt, le, where) -> None:
    """Exact lt/le at ``where``: the ``picked`` centre values, in (bin, value) order, then
    one search per value among its own bin's."""
    flat, bins = picked
    keys = _order_keys(bins, centre.take(flat))
    keys.sort()
    query_keys = _order_keys(value_ids, values)
    first = np.searchsorted(keys, value_ids.astype(np.uint64) << np.uint64(32))
    below = lt[where]
    le[where] = below + np.searchsorted(keys, query_keys, "right") - first
    lt[where] = below + np.searchsorted(keys, query_keys, "left") - first


# ------------------------------------------------------------------------- workers


class Scratch:
    """Arrays reused from call to call, one set per thread, grown when too small."""

    def __init__(self):
        self.arrays: dict = {}

    def get(self, name: str, shape, dtype):
        numel = int(np.prod(shape))
        array = self.arrays.get(name)
        if array is None or array.dtype != dtype or array.size < numel:
            array = self.arrays[name] = np.empty(max(numel, 1), dtype=dtype)
        return array[:numel].reshape(shape)


class WorkerPool:
    """Runs blocks of channels on the CPU's threads (numpy releases the GIL in its array
    loops); each thread keeps one scratch buffer, since fresh large allocations cost page
    faults on every layer."""

    def __init__(self, workers: int):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.workers = max(1, workers)
        self.executor = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.local = threading.local()

    def scratch(self) -> Scratch:
        if not hasattr(self.local, "scratch"):
            self.local.scratch = Scratch()
        return self.local.scratch

    def buffer(self, numel: int):
        return self.scratch().get("centre", (numel,), np.float32)

    def submit(self, job, blocks) -> list:
        """Start ``job(r0, r1)`` for every block; the futures (none: run here and now)."""
        if self.executor is None:
            for r0, r1 in blocks:
                job(r0, r1)
            return []
        return [self.executor.submit(job, r0, r1) for r0, r1 in blocks]

    def run(self, job, blocks) -> None:
        if self.executor is None or len(blocks) == 1:
            for r0, r1 in blocks:
                job(r0, r1)
            return
        for future in [self.executor.submit(job, r0, r1) for r0, r1 in blocks]:
            future.result()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
