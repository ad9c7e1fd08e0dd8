"""What the locustfile sends and how every received byte is checked; no locust, no gevent.

A pipe's byte at offset ``i`` is ``PATTERN[i % PERIOD]``: ``PERIOD`` random bytes from a fixed
seed, ``PERIOD`` a prime (65521), so a dropped, repeated or reordered block, or a stale lap of
any power-of-two ring, shows up as a mismatch at a precise offset. Kept apart from the
locustfile so it can be tested without gevent's monkey-patching.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Final

PERIOD: Final = 65521
PATTERN: Final = random.Random(20261201).randbytes(PERIOD)
_TWICE: Final = memoryview(PATTERN + PATTERN)
_UNITS: Final = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1 << 20}
_UNITS.update({"g": 10**9, "gb": 10**9, "gib": 1 << 30})


class Mismatch(Exception):
    """A receiver got bytes that are not the pipe's bytes (or too many, or too few)."""


def parse_size(text: str) -> int:
    """``1MiB``, ``64KiB``, ``500kB``, ``4096`` → bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 64KiB, 1MiB, 1GB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def piece(offset: int, size: int) -> memoryview:
    """The pipe's bytes ``offset .. offset + size`` (``size`` at most ``PERIOD``)."""
    start = offset % PERIOD
    return _TWICE[start : start + size]


def bulk_chunks(total: int, chunk: int) -> Iterator[memoryview]:
    """The pipe's bytes in ``chunk``-sized pieces (capped at ``PERIOD``)."""
    chunk = max(1, min(chunk, PERIOD))
    for offset in range(0, total, chunk):
        yield piece(offset, min(chunk, total - offset))


def token_chunks(total: int, rng: random.Random) -> Iterator[memoryview]:
    """The pipe's bytes as LLM-like tokens: 1 to 12 bytes each (about 4 on average)."""
    offset = 0
    while offset < total:
        size = min(total - offset, max(1, min(12, int(rng.expovariate(1 / 4)) + 1)))
        yield piece(offset, size)
        offset += size


class StreamCheck:
    """Checks a receiver's bytes as they arrive, against the pattern at their offset."""

    def __init__(self, expected_total: int) -> None:
        self.expected_total = expected_total
        self.received = 0

    def feed(self, data: bytes) -> None:
        if self.received + len(data) > self.expected_total:
            raise Mismatch(f"got {self.received + len(data)} bytes, more than the {self.expected_total} sent")
        done = 0
        while done < len(data):
            size = min(len(data) - done, PERIOD)
            want = piece(self.received + done, size)
            if not data.startswith(want, done):  # a memcmp, not a loop over bytes
                wrong = next(i for i in range(size) if data[done + i] != want[i])
                raise Mismatch(f"wrong byte at offset {self.received + done + wrong}")
            done += size
        self.received += len(data)

    def finish(self) -> None:
        if self.received != self.expected_total:
            raise Mismatch(f"got {self.received} bytes of {self.expected_total}: the response ended early")
