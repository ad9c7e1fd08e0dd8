"""Metric updates held back briefly and written in one batch: counter increments, gauge
deltas, histogram observations.

Each update of a multiprocess metric takes a lock, checks the pid and writes the shared
file (about a microsecond; a histogram observation two of them). A short transfer makes
a dozen such updates at its start and end, and under churn thousands of transfers a second
repeat the same few series. Held back for at most ``FLUSH_INTERVAL_S`` and summed per
series, they cost one write per series and batch instead.

Invariants: a series' total after a flush is exactly what the direct updates would have
made it (counts and deltas add, a net delta of zero is not written; a histogram's bucket
counts and sum add), and nothing waits longer than ``FLUSH_INTERVAL_S`` while the event
loop runs, so a scrape sees a change at once in this worker and within that interval from
any other. Without a running event loop (unit tests, threads, a worker past
``final_flush``) an update is written at once.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["FLUSH_INTERVAL_S", "count", "final_flush", "flush", "observe", "shift"]

#: The longest an update waits for its batch.
FLUSH_INTERVAL_S: Final = 0.1


class _HeldHistogram:
    """Observations of one histogram series not yet written: per-bucket counts and their sum
    (``observe`` counts into it itself: a method call per observation was ~6 calls per pipe)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, histogram: Histogram) -> None:
        #: The series' upper bounds, +Inf last, as prometheus-client stores them.
        self.bounds: list[float] = histogram._upper_bounds
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def write(self, histogram: Histogram) -> None:
        histogram._sum.inc(self.total)
        for bucket, count in zip(histogram._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)


class _Batch:
    def __init__(self) -> None:
        #: Counters' increments and gauges' deltas (both written with ``inc``).
        self.amounts: dict[Counter | Gauge, float] = {}
        self.histograms: dict[Histogram, _HeldHistogram] = {}
        self.scheduled = False
        self.final = False

    def schedule(self) -> None:
        if self.scheduled:
            return
        if not self.final:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self.scheduled = True
                loop.call_later(FLUSH_INTERVAL_S, self.flush)
                return
        self.flush()

    def flush(self) -> None:
        self.scheduled = False
        amounts, self.amounts = self.amounts, {}
        histograms, self.histograms = self.histograms, {}
        for metric, amount in amounts.items():
            if amount:
                metric.inc(amount)
        for histogram, held in histograms.items():
            held.write(histogram)


_batch = _Batch()


def count(counter: Counter, amount: float = 1) -> None:
    """``counter.inc(amount)``, written with the next batch (``counter``: an unlabelled
    counter or a labelled one's child)."""
    batch = _batch
    amounts = batch.amounts
    amounts[counter] = amounts.get(counter, 0) + amount
    if not batch.scheduled:  # ``schedule``'s own first check, without the call (a batch is rarely new)
        batch.schedule()


def shift(gauge: Gauge, delta: float) -> None:
    """``gauge.inc(delta)``, written with the next batch (a livesum gauge's share of this
    process: an item that comes and goes within one batch writes nothing)."""
    batch = _batch
    amounts = batch.amounts
    amounts[gauge] = amounts.get(gauge, 0) + delta
    if not batch.scheduled:
        batch.schedule()


def observe(histogram: Histogram, amount: float) -> None:
    """``histogram.observe(amount)``, written with the next batch (an unlabelled histogram
    or a labelled one's child)."""
    batch = _batch
    held = batch.histograms.get(histogram)
    if held is None:
        held = batch.histograms[histogram] = _HeldHistogram(histogram)
    # The first bucket whose bound is >= amount: prometheus-client's own choice.
    index = bisect.bisect_left(held.bounds, amount)
    counts = held.counts
    if index < len(counts):
        counts[index] += 1
    held.total += amount
    if not batch.scheduled:
        batch.schedule()


def flush() -> None:
    """Write every held update now (before a scrape of this process's files)."""
    _batch.flush()


def final_flush() -> None:
    """Write every held update, and from now on write each at once (the worker is exiting:
    its event loop will not run a scheduled batch)."""
    _batch.final = True
    _batch.flush()
