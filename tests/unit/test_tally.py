"""Held-back metric updates (``ops/tally.py``) add up to exactly what direct updates make."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ringpipe.ops import tally

AMOUNTS = (0, 0.00005, 0.0001, 0.0003, 1, 2.5, 7, 10, 11, 1e9)


def _pair(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    counter = Counter("things", "Things.", ["kind"], registry=registry)
    histogram = Histogram("sizes", "Sizes.", buckets=(0.0001, 0.001, 1, 2.5, 10), registry=registry)
    return counter, histogram


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    """Every sample but the creation times (which differ between two registries)."""
    return [
        (sample.name, sample.labels, sample.value)
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    ]


def test_a_flushed_batch_equals_the_direct_updates() -> None:
    direct, held = CollectorRegistry(), CollectorRegistry()
    direct_counter, direct_histogram = _pair(direct)
    held_counter, held_histogram = _pair(held)
    for amount in AMOUNTS:
        direct_counter.labels(kind="a").inc(amount)
        direct_histogram.observe(amount)

    async def update() -> None:  # inside a loop: held until the batch is written
        for amount in AMOUNTS:
            tally.count(held_counter.labels(kind="a"), amount)
            tally.observe(held_histogram, amount)
        assert _samples(held) != _samples(direct)
        tally.flush()

    asyncio.run(update())
    assert _samples(held) == _samples(direct)


def test_the_batch_is_written_within_the_interval() -> None:
    registry = CollectorRegistry()
    counter, histogram = _pair(registry)

    async def update() -> None:
        tally.count(counter.labels(kind="b"), 3)
        tally.observe(histogram, 0.5)
        await asyncio.sleep(tally.FLUSH_INTERVAL_S * 3)

    asyncio.run(update())
    assert registry.get_sample_value("things_total", {"kind": "b"}) == 3
    assert registry.get_sample_value("sizes_count") == 1
    assert registry.get_sample_value("sizes_bucket", {"le": "1.0"}) == 1


def test_without_a_loop_updates_are_written_at_once() -> None:
    registry = CollectorRegistry()
    counter, histogram = _pair(registry)
    tally.count(counter.labels(kind="c"))
    tally.observe(histogram, 2)
    assert registry.get_sample_value("things_total", {"kind": "c"}) == 1
    assert registry.get_sample_value("sizes_sum") == 2


def test_gauge_deltas_add_and_a_net_zero_writes_nothing() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("held", "Held.", ["framing"], registry=registry)
    written: list[float] = []
    child = gauge.labels(framing="raw")
    real_inc = child.inc

    def inc(amount: float = 1) -> None:
        written.append(amount)
        real_inc(amount)

    child.inc = inc  # type: ignore[method-assign]

    async def update() -> None:
        tally.shift(child, 1)
        tally.shift(child, -1)  # came and went within the batch
        tally.flush()
        tally.shift(child, 2)
        tally.shift(child, 1)
        tally.flush()

    asyncio.run(update())
    assert written == [3]
    assert registry.get_sample_value("held", {"framing": "raw"}) == 3
