"""The ring-header meters in ``metrics.py`` on a real shared-memory ring, one process, a fake clock.

Invariants checked: the producer stamps at most once per ``SAMPLE_INTERVAL_NS`` and never
replaces a stamp an attached reader has not passed; each reader observes each stamp once,
after sending past it; bytes in/out are counted exactly once; the framing mix is read back.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from ringpipe.ops import metrics
from ringpipe.shm import segment

_serials = itertools.count(1)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def ring() -> Iterator[segment.RingSegment]:
    name = segment.segment_name(os.getpid(), os.getpid(), 900_000 + next(_serials))
    created = segment.RingSegment.create(name, 4096, 2)
    try:
        yield created
    finally:
        created.unlink()
        created.close()


class Clock:
    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(metrics.time, "monotonic_ns", fake)
    return fake


def test_producer_stamps_at_most_once_per_interval_and_keeps_unread_stamps(
    ring: segment.RingSegment, clock: Clock
) -> None:
    meter = metrics.ProducerMeter(ring)
    ring.write_nowait(b"a" * 100)
    meter.published()
    assert (ring.latency_stamp_seq(), ring.latency_stamp_ns()) == (100, clock.now)

    ring.write_nowait(b"b" * 100)
    clock.now += metrics.SAMPLE_INTERVAL_NS // 2
    meter.published()  # too soon
    assert ring.latency_stamp_seq() == 100

    clock.now += metrics.SAMPLE_INTERVAL_NS
    meter.published()  # due, but no reader has passed seq 100 yet
    assert ring.latency_stamp_seq() == 100

    ring.commit_read(0, 150)
    ring.commit_read(1, 100)
    clock.now += metrics.SAMPLE_INTERVAL_NS
    meter.published()  # every attached reader passed it: a new sample
    assert (ring.latency_stamp_seq(), ring.latency_stamp_ns()) == (200, clock.now)


def test_producer_counts_bytes_in_once(ring: segment.RingSegment, clock: Clock) -> None:
    before = sample("ringpipe_bytes_in_total")
    meter = metrics.ProducerMeter(ring)
    ring.write_nowait(b"x" * 300)
    meter.published()
    ring.write_nowait(b"y" * 200)
    meter.published()  # not due: counted at close
    assert sample("ringpipe_bytes_in_total") - before == 300
    meter.close()
    meter.close()
    assert sample("ringpipe_bytes_in_total") - before == 500


def test_reader_observes_each_stamp_once_after_sending_past_it(ring: segment.RingSegment, clock: Clock) -> None:
    latency0 = sample("ringpipe_relay_latency_seconds_count")
    latency_sum0 = sample("ringpipe_relay_latency_seconds_sum")
    first0 = sample("ringpipe_first_byte_seconds_count")
    lag_sum0 = sample("ringpipe_reader_lag_bytes_sum")
    out0 = sample("ringpipe_bytes_out_total")

    ring.write_nowait(b"z" * 1000)
    ring.stamp_latency(1000, clock.now)
    reader = metrics.ReaderMeter(ring)
    clock.now += 2_000_000  # 2 ms later
    reader.sent(600)  # not past the stamp yet
    assert sample("ringpipe_relay_latency_seconds_count") == latency0
    assert sample("ringpipe_first_byte_seconds_count") == first0 + 1
    reader.sent(1000)
    reader.sent(1000)
    assert sample("ringpipe_relay_latency_seconds_count") == latency0 + 1
    assert sample("ringpipe_relay_latency_seconds_sum") - latency_sum0 == pytest.approx(0.002)
    assert sample("ringpipe_reader_lag_bytes_sum") == lag_sum0  # caught up: no lag
    assert sample("ringpipe_first_byte_seconds_count") == first0 + 1  # once per reader
    assert sample("ringpipe_bytes_out_total") - out0 == 1000
    reader.close(1000)
    assert sample("ringpipe_bytes_out_total") - out0 == 1000


def test_framing_mix_reads_each_readers_framing(ring: segment.RingSegment) -> None:
    class Reader:
        def __init__(self, slot: int) -> None:
            self.ring, self.slot = ring, slot

    def sse_receivers() -> float:
        return REGISTRY.get_sample_value("ringpipe_receivers", {"framing": "sse"}) or 0.0

    before = sse_receivers()
    metrics.reader_started("sse", Reader(1))
    assert metrics.framing_mix(ring) == {"none": 1, "sse": 1}
    assert sse_receivers() == before + 1
    metrics.reader_ended("sse")
    assert sse_receivers() == before
