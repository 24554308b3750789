"""The passes of the PAN census over a model: what its forward hooks keep of each conv
layer and how the counting of :mod:`pytest_padbias.pans_counts` is scheduled.

One pass over all images (the default) analyses each layer inside its forward hook, on
all of the CPU's threads (torch's own threads wait for the hook to return): the borders
are copied and sorted, and each block of channels is counted by the compiled kernel of
:mod:`pytest_padbias.pans_compiled` straight from the layer's output (or, without numba,
copies its centre into its worker's scratch for the numpy kernels of
:mod:`pytest_padbias.pans_counts`). The layer's output is never kept beyond its hook, so the peak
is the forward pass's plus one layer's borders and the workers' scratch. Analysing the
layers beside the forward pass instead (on torch's threads minus one) was measured
slower on a 2-core machine: the convolutions scale with the second thread about as well
as the analysis does, and the copies to hand layers over cost a pass of their own.

The chunked mode (a batch too large for memory) runs the model twice: pass 1 keeps the
border values of every chunk, pass 2 adds up each chunk's exact counts, in the hooks.
"""
from __future__ import annotations

import time

import numpy as np

from . import pans_compiled
from .pans_counts import (ELEM_BUDGET, SORT_FROM, WorkerPool, bucket_counts, centre_block, exact_counts,
                          ks_from_counts, sorted_centre)
from .result import PadbiasError


class LayerScan:
    """Border values and exact centre counts of one conv layer.

    The counts lt/le of every border value are sums over chunks of counts in each
    chunk's centre, so a chunked run is exact once all border values are known (pass 1).
    The work on the border and centre values runs in blocks of channels (rows).
    ``seconds`` adds up the thread time every thread spent on this layer's statistics
    (each step times itself on the thread that runs it, so nothing is counted twice).
    """

    def __init__(self, name: str, conv, n_images: int):
        self.name, self.conv, self.n_images = name, conv, n_images
        self.border_chunks: list[list] = []
        self.out_size = None
        self.calls = 0
        self.step_seconds: list[float] = []  # list.append is atomic across the worker threads

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    # the border values (T, B, L, R: rows 0 and H-1, columns 0 and W-1)
    @staticmethod
    def sides(out) -> tuple:
        """Views of the four borders of ``out`` [N, C, H, W] as [N, C, length]."""
        h, w = out.shape[2:]
        return out[:, :, 0, :], out[:, :, h - 1, :], out[:, :, :, 0], out[:, :, :, w - 1]

    @classmethod
    def borders(cls, out) -> list:
        """The four borders of every channel as [channels, n*length] copies."""
        return [np.array(b.transpose(1, 0, 2), dtype=np.float32).reshape(out.shape[1], -1) for b in cls.sides(out)]

    def collect(self, out, keep: bool) -> None:
        """Note the map size; with ``keep`` keep this chunk's borders (for the counting)."""
        n, c, h, w = out.shape
        if self.out_size is not None and self.out_size != (h, w):
            raise PadbiasError(f"layer {self.name} gave output maps of different sizes across chunks")
        self.out_size = (h, w)
        if keep:
            started = time.thread_time()
            self.border_chunks.append(self.borders(out))
            self.step_seconds.append(time.thread_time() - started)

    # the accumulators, then sorted border values block by block
    def prepare(self, channels: int) -> None:
        h, w = self.out_size
        self.sizes = [self.n_images * w, self.n_images * w, self.n_images * h, self.n_images * h]
        self.queries = np.empty((channels, sum(self.sizes)), dtype=np.float32)  # T | B | L | R, each sorted
        self.lt = np.zeros(self.queries.shape, dtype=np.int64)
        self.le = np.zeros(self.queries.shape, dtype=np.int64)
        self.stats = np.empty((3, channels, 4))

    def _segments(self):
        start = 0
        for size in self.sizes:
            yield slice(start, start + size)
            start += size

    def prepare_rows(self, r0: int, r1: int, out=None) -> None:
        """Sort the border values of channels r0:r1: those of ``out`` in the single pass
        (each worker copies its own channels' borders, rather than one thread all of them
        first, straight into ``queries``, sorted there), else those the chunks of pass 1 kept."""
        if out is None:
            for i, seg in enumerate(self._segments()):
                self.queries[r0:r1, seg] = np.concatenate([chunk[i][r0:r1] for chunk in self.border_chunks], axis=1)
        else:
            for side, seg in zip(self.sides(out[:, r0:r1]), self._segments()):
                self.queries[r0:r1, seg].reshape(r1 - r0, out.shape[0], -1)[...] = side.transpose(1, 0, 2)
        ends = []
        for seg in self._segments():
            self.queries[r0:r1, seg].sort(axis=1)
            ends.append(self.queries[r0:r1, [seg.start, seg.stop - 1]])
        # sorted, a side's extremes are its first and last values (NaN sorts last)
        if not np.isfinite(ends).all():
            raise PadbiasError(f"layer {self.name} produced NaN or infinite activations; the PAN census needs finite conv outputs")

    def analyse_rows(self, out, r0: int, r1: int, pool: WorkerPool) -> None:
        """Single pass: the final statistics of channels r0:r1 of ``out``; only the counts
        a maximum can depend on are made exact."""
        started = time.thread_time()
        self.prepare_rows(r0, r1, out)
        n, c, h, w = out.shape
        m = n * (h - 2) * (w - 2)
        if pans_compiled.available():  # counts and statistics in one compiled pass
            pans_compiled.compiled_statistics(out, r0, r1, self.queries[r0:r1], self.sizes, self.stats[:, r0:r1],
                                              self.name)
            self.step_seconds.append(time.thread_time() - started)
            return
        if self.queries.shape[1] >= SORT_FROM * m:  # small maps: as many border values as centre values
            centre = sorted_centre(out, r0, r1, pool.buffer((r1 - r0) * m), self.name)
            self.lt[r0:r1], self.le[r0:r1] = exact_counts(centre, self.queries[r0:r1])
        else:
            centre = centre_block(out, r0, r1, pool.buffer((r1 - r0) * m))
            self.lt[r0:r1], self.le[r0:r1] = bucket_counts(centre, self.queries[r0:r1], self.sizes, self.name,
                                                           pool.scratch())
        self.finish_rows(r0, r1)
        self.step_seconds.append(time.thread_time() - started)

    def count_rows(self, out, r0: int, r1: int, pool: WorkerPool) -> None:
        """Chunked pass 2: add the exact counts of channels r0:r1 in this chunk's centre."""
        started = time.thread_time()
        n, c, h, w = out.shape
        if pans_compiled.available():
            lt, le = pans_compiled.compiled_counts(out, r0, r1, self.queries[r0:r1], self.sizes, exact=True,
                                                   name=self.name)
        else:
            centre = sorted_centre(out, r0, r1, pool.buffer((r1 - r0) * n * (h - 2) * (w - 2)), self.name)
            lt, le = exact_counts(centre, self.queries[r0:r1])
        self.lt[r0:r1] += lt
        self.le[r0:r1] += le
        self.step_seconds.append(time.thread_time() - started)

    def finish_rows(self, r0: int, r1: int) -> None:
        h, w = self.out_size
        m = self.n_images * (h - 2) * (w - 2)
        for b, seg in enumerate(self._segments()):
            ks = ks_from_counts(self.lt[r0:r1, seg], self.le[r0:r1, seg], seg.stop - seg.start, m)
            for i in range(3):
                self.stats[i, r0:r1, b] = ks[i]

    def blocks(self, workers: int, per_row: int):
        """Row blocks: at most ELEM_BUDGET centre values each, at least one per worker."""
        channels = self.queries.shape[0]
        rows = max(1, min(ELEM_BUDGET // max(per_row, 1), -(-channels // workers)))
        return [(r0, min(r0 + rows, channels)) for r0 in range(0, channels, rows)]

    def result(self):
        stats = self.stats
        self.border_chunks = self.queries = self.lt = self.le = self.stats = None
        return list(stats)


def single_pass_step(scan: LayerScan, out, pool: WorkerPool, results: dict) -> None:
    """The whole analysis of one layer, on every worker, before the hook returns (so before
    an in-place operation such as ReLU(inplace=True) can change ``out``)."""
    n, c, h, w = out.shape
    out = pans_compiled.contiguous(out)
    scan.collect(out, keep=False)
    scan.prepare(c)
    pool.run(lambda r0, r1: scan.analyse_rows(out, r0, r1, pool), scan.blocks(pool.workers, n * (h - 2) * (w - 2)))
    results[scan.name] = scan.result()


def chunked_hook_step(scan: LayerScan, out, step: str, pool: WorkerPool) -> None:
    """Pass 1 ('collect') keeps the borders; pass 2 ('count') adds this chunk's counts."""
    if step == "collect":
        scan.collect(out, keep=True)
        return
    out = pans_compiled.contiguous(out)
    blocks = scan.blocks(pool.workers, out.shape[0] * (out.shape[2] - 2) * (out.shape[3] - 2))
    pool.run(lambda r0, r1: scan.count_rows(out, r0, r1, pool), blocks)


def prepare_chunked(scans, pool: WorkerPool) -> list[LayerScan]:
    """Between the passes: sort every collected layer's border values."""
    collected = [s for s in scans if s.out_size is not None]
    for scan in collected:
        scan.prepare(scan.border_chunks[0][0].shape[0])
        pool.run(scan.prepare_rows, scan.blocks(pool.workers, 1))
    return collected


def finish_chunked(collected, pool: WorkerPool, results: dict) -> None:
    for scan in collected:
        pool.run(scan.finish_rows, scan.blocks(pool.workers, 1))
        results[scan.name] = scan.result()
