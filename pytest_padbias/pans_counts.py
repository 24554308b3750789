"""The counting kernel of the PAN census: how many centre values lie below each border value.

Every KS statistic of :mod:`pytest_padbias.pans` is a maximum, over the sorted border
values b_1 <= ... <= b_n of one border, of an expression in lt(b_j) = #(centre < b_j) and
le(b_j) = #(centre <= b_j) (see ``ks_from_counts``). Each channel's centre is sorted once
(numpy's vectorised sort, the cheapest pass over the values there is on CPU) and the
counts are binary searches into it.

Measured on MobileNetV2's activations, the binary searches and not the sort were the
cost: a search into a sorted row of 10^5 values takes 50-100 ns (one branch mispredicted
per halving), and a row has up to 4% as many border values as centre values at 112x112
and more than 100% at 7x7. Ranking the centre against the sorted border values instead
(torch.searchsorted or numpy's, then a histogram) does M searches instead of k and was
slower still (torch: 100-130 ns per value on this CPU); a tagged 64-bit sort of border
and centre values together costs 2-5x the 32-bit sort. So :func:`pruned_counts` searches
only where the maxima can be: every ``step``-th border value first, which brackets every
other count (counts are monotone in b), then only the intervals whose bound can still
reach the largest value seen. On real activations that is 12-20% of the searches at
112x112 and 56x56; on small maps (few centre values per border value) the bookkeeping
costs more than it saves, and :func:`exact_counts` searches them all.
"""
from __future__ import annotations

import numpy as np

from .result import PadbiasError

#: centre values sorted at once per worker (a 16 MB buffer)
ELEM_BUDGET = 1 << 22
#: prune the searches when a border has at least this many centre values per value
#: (measured: pruning wins from 28x28 maps on, costs more than it saves at 14x14)
PRUNE_FROM = 20


def search_step(m: int, n: int) -> int | None:
    """Every how many border values :func:`pruned_counts` samples first (None: search all)."""
    per_value = m / max(n, 1)
    return None if per_value < PRUNE_FROM else 8 if per_value < 2 * PRUNE_FROM else 16


def sorted_centre(out, r0: int, r1: int, buffer, name: str):
    """The centre (rows/columns 1..size-2) of channels r0:r1 of ``out`` [N, C, H, W] as one
    sorted row per channel, in ``buffer``; refuses NaN and infinite values."""
    n, _, h, w = out.shape
    block = buffer.reshape(r1 - r0, n * (h - 2) * (w - 2))
    np.copyto(block.reshape(r1 - r0, n, h - 2, w - 2), out[:, r0:r1, 1:h - 1, 1:w - 1].transpose(1, 0, 2, 3))
    block.sort(axis=1)  # numpy's vectorised sort, many times faster than torch.sort on CPU
    # sorted: NaNs last, infinities at the ends
    if not (np.isfinite(block[:, 0]).all() and np.isfinite(block[:, -1]).all()):
        raise PadbiasError(f"layer {name} produced NaN or infinite activations; the PAN census needs finite conv outputs")
    return block


def _search_groups(centre, queries, rows, cols, into: dict) -> None:
    """Search ``queries[rows[i], cols[i]]`` into the sorted ``centre`` rows and store the
    positions in ``into[side][rows[i], cols[i]]`` for each side ('left': lt, 'right': le).

    ``rows`` must be non-decreasing (as np.nonzero gives them): one search per row and side."""
    if len(rows) == 0:
        return
    bounds = np.flatnonzero(np.diff(rows)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(rows)]):
        r, c = rows[start], cols[start:stop]
        q = queries[r, c]
        for side, counts in into.items():
            counts[r, c] = np.searchsorted(centre[r], q, side)


def search_rows(centre, queries, rows, cols, lt, le) -> None:
    """Exact lt and le of ``queries[rows[i], cols[i]]``."""
    _search_groups(centre, queries, rows, cols, {"left": lt, "right": le})


def exact_counts(centre, queries):
    """(lt, le) int64 ``[rows, k]`` of every query value into the sorted ``centre`` rows."""
    m = centre.shape[1]
    lt = np.empty(queries.shape, dtype=np.int64)
    for r, (row, q) in enumerate(zip(centre, queries)):
        lt[r] = np.searchsorted(row, q, "left")
    le = lt.copy()
    # <= differs from < only where a query equals a centre value: search those again
    tied = np.take_along_axis(centre, np.minimum(lt, m - 1), axis=1) == queries
    rows, cols = np.nonzero(tied)
    _search_groups(centre, queries, rows, cols, {"right": le})
    return lt, le


def segment_samples(sizes, step: int):
    """Column indices sampled first: every ``step``-th of each segment and its last."""
    starts = np.cumsum([0, *sizes[:-1]])
    return [start + np.unique(np.r_[np.arange(0, size, step), size - 1]) for start, size in zip(starts, sizes)]


def _candidates(lt, le, samples, start: int, size: int, m: int):
    """Boolean ``[rows, size]``: the unsampled j of one segment whose statistics could
    exceed every sampled one.

    Between samples a < j < b, lt_j <= lt_b and le_j >= le_a (counts grow with b_j), so
    each of the four maximands of ``ks_from_counts`` (1-based j, k = min(size, m)) has an
    upper bound per interval; an interval whose bounds all stay at or below the best
    sampled value, or at or below 0 (the floor of every statistic), cannot hold the
    maximum. Numerators differ by at least 1 in n*m, far more than float64 rounding, so
    this holds for the rounded statistics too."""
    if len(samples) < 2:
        return np.zeros((lt.shape[0], size), dtype=bool)
    k = min(size, m)
    lt_s, le_s = lt[:, samples], le[:, samples]
    j = (samples - start + 1)[None, :]                        # 1-based j of the samples
    sampled = (j * m - le_s * size, lt_s * size - (j - 1) * m,
               np.maximum(lt_s - (m - k), 0) * size - (j - 1) * k, j * k - np.minimum(le_s, k) * size)
    j_lo, j_hi = j[:, :-1] + 1, j[:, 1:] - 1                  # interior j of each interval
    bound = (j_hi * m - le_s[:, :-1] * size, lt_s[:, 1:] * size - (j_lo - 1) * m,
             np.maximum(lt_s[:, 1:] - (m - k), 0) * size - (j_lo - 1) * k, j_hi * k - np.minimum(le_s[:, :-1], k) * size)
    hit = np.zeros(bound[0].shape, dtype=bool)
    for value, upper in zip(sampled, bound):
        # >=: an exact tie with the best sample may round to a larger float (see _sup)
        hit |= (upper >= value.max(axis=1, keepdims=True)) & (upper > 0)
    # interval i covers the columns strictly between samples i and i+1
    interval = np.searchsorted(samples - start, np.arange(size), "left") - 1
    interior = np.ones(size, dtype=bool)
    interior[samples - start] = False
    return hit[:, np.maximum(interval, 0)] & interior


def pruned_counts(centre, queries, sizes, step: int):
    """(lt, le) ``[rows, k]`` exact wherever a KS maximum can be, bounds elsewhere.

    ``queries`` holds the segments (borders) of ``sizes`` side by side, each sorted. An
    unsearched lt_j is replaced by lt at the previous sample and le_j by le at the next:
    no smaller and no larger than the truth, so every maximand there is at most its true
    value, which the maximum of ``ks_from_counts`` (reached at a searched j) exceeds or
    equals. The statistics are therefore exactly those of the full counts."""
    m = centre.shape[1]
    lt = np.zeros(queries.shape, dtype=np.int64)
    le = np.full(queries.shape, m, dtype=np.int64)
    samples = segment_samples(sizes, step)
    columns = np.concatenate(samples)
    lt[:, columns], le[:, columns] = exact_counts(centre, queries[:, columns])
    start = 0
    wanted = np.zeros(queries.shape, dtype=bool)
    for size, sample in zip(sizes, samples):
        wanted[:, start:start + size] = _candidates(lt, le, sample, start, size, m)
        start += size
    search_rows(centre, queries, *np.nonzero(wanted), lt, le)
    start = 0
    for size in sizes:  # lt is 0 and le is m where unsearched: carry the neighbouring samples'
        seg = slice(start, start + size)
        np.maximum.accumulate(lt[:, seg], axis=1, out=lt[:, seg])
        le[:, seg] = np.minimum.accumulate(le[:, seg][:, ::-1], axis=1)[:, ::-1]
        start += size
    return lt, le


class SortPool:
    """Runs blocks of channels on the CPU's threads (numpy releases the GIL while it sorts
    and searches); each thread keeps one scratch buffer, since fresh large allocations
    cost page faults on every layer."""

    def __init__(self, workers: int):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.workers = max(1, workers)
        self.executor = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.local = threading.local()

    def buffer(self, numel: int):
        array = getattr(self.local, "array", None)
        if array is None or array.size < numel:
            array = self.local.array = np.empty(max(numel, ELEM_BUDGET), dtype=np.float32)
        return array[:numel]

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
