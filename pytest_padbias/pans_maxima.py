"""Where a KS maximum can be, and the statistics there: the compiled census's last steps.

After pass 1 every border value's counts lie between bounds (:mod:`.pans_compiled`);
:func:`candidates` keeps the few border values at which a maximum can be, and
:func:`hit_statistics` gives KS, KS+ and KS- as maxima over them alone, equal to
:func:`.pans_counts.ks_from_counts` on exact counts (so to scipy's values bit for bit).
"""
from __future__ import annotations

import numpy as np

from .pans_jit import njit as _njit
from .pans_jit import njit_exact_fastmath


@_njit
def candidates(lower, upper, sizes, m, hit):
    """``hit`` [k] |= the border values at which some maximand can reach its maximum, for
    counts known to lie in [lower, upper] (``.pans_counts.may_hold_a_maximum``'s rule),
    run by run."""
    start = 0
    for s in range(sizes.size):
        n = sizes[s]
        _run_candidates(lower[start:start + n], upper[start:start + n], n, m, hit[start:start + n])
        start += n


@njit_exact_fastmath
def _run_candidates(lower, upper, n, m, hit):
    """:func:`candidates` on one run. In float64, which holds every numerator (at most
    n * m < 2**53) exactly (AVX2 has no int64 max); the maxima start at 1, their floor."""
    nf, mf, kf = np.float64(n), np.float64(m), np.float64(min(n, m))
    off = mf - kf
    b0 = b1 = b2 = b3 = 1.0
    for j in range(n):
        lo, up, jf = lower[j], upper[j], np.float64(j)
        b0 = max(b0, (jf + 1) * mf - up * nf)
        b1 = max(b1, lo * nf - jf * mf)
        b2 = max(b2, max(lo - off, 0.0) * nf - jf * kf)
        b3 = max(b3, (jf + 1) * kf - min(up, kf) * nf)
    for j in range(n):
        lo, up, jf = lower[j], upper[j], np.float64(j)
        hit[j] |= ((jf + 1) * mf - lo * nf >= b0) | (up * nf - jf * mf >= b1) | (
            max(up - off, 0.0) * nf - jf * kf >= b2) | ((jf + 1) * kf - min(lo, kf) * nf >= b3)


@_njit
def bounds_at_hits(hits, lower, upper, value_cells, zero, lt_row, le_row, refined):
    """lt/le at the hits from the bounds, and which hits need refining (their indices into
    ``refined``; how many): those whose cell holds centre values, unless it is the cell of
    exact zeros (whose counts are exact already)."""
    n_refined = 0
    for i in hits:
        lt_row[i], le_row[i] = lower[i], upper[i]
        if upper[i] > lower[i] and value_cells[i] != zero:
            refined[n_refined] = i
            n_refined += 1
    return n_refined


@_njit
def hit_statistics(lt_row, le_row, hits, sizes, m, exact_max, stats, r):
    """KS, KS+ and KS- of each run (border) into stats[:, r, run], as
    :func:`.pans_counts.ks_from_counts` computes them (the same integers and floats, so
    scipy's values bit for bit), but maximised over the indices ``hits`` (ascending) only: every
    maximand reaches its maximum at a hit, where the counts are exact.

    ks_2samp rounds each statistic in its exact mode (an integer numerator, one division)
    when both of its samples have at most ``exact_max`` values: KS compares n border with m
    centre values, KS+ and KS- n border values with the k = min(n, m) extreme centre ones."""
    start, p = 0, 0
    for s in range(sizes.size):
        n = sizes[s]
        kk = min(n, m)
        lattice, lattice_k = max(n, m) <= exact_max, max(n, kk) <= exact_max
        top = np.zeros(4, dtype=np.int64)
        diff = np.zeros(4, dtype=np.float64)
        while p < hits.size and hits[p] < start + n:
            i = hits[p]
            j = i - start + 1
            lt, le = lt_row[i], le_row[i]
            if lattice:
                top[0] = max(top[0], j * m - le * n)
                top[1] = max(top[1], lt * n - (j - 1) * m)
            else:
                diff[0] = max(diff[0], np.float64(j) / np.float64(n) - np.float64(le) / np.float64(m))
                diff[1] = max(diff[1], np.float64(lt) / np.float64(m) - np.float64(j - 1) / np.float64(n))
            if lattice_k:
                top[2] = max(top[2], max(lt - (m - kk), 0) * n - (j - 1) * kk)
                top[3] = max(top[3], j * kk - min(le, kk) * n)
            else:
                diff[2] = max(diff[2], np.float64(max(lt - (m - kk), 0)) / np.float64(kk) - np.float64(j - 1) / np.float64(n))
                diff[3] = max(diff[3], np.float64(j) / np.float64(n) - np.float64(min(le, kk)) / np.float64(kk))
            p += 1
        if lattice:
            stats[0, r, s] = max(top[0] / np.float64(n * m), top[1] / np.float64(n * m))
        else:
            stats[0, r, s] = max(diff[0], diff[1])
        stats[1, r, s] = top[2] / np.float64(kk * n) if lattice_k else diff[2]
        stats[2, r, s] = top[3] / np.float64(n * kk) if lattice_k else diff[3]
        start += n
