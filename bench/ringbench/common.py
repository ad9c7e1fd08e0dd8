"""Constants and small helpers every part of the benchmark shares.

The byte pattern is the heart of the checks: the byte at stream offset ``i`` is
``PATTERN[i % PERIOD]``, with ``PERIOD`` a prime just under 1 MiB, so a stale lap of any
power-of-two ring, a dropped or a repeated block shows up as a mismatch at its exact offset.
``PATTERN2`` is the pattern twice, so any window of at most ``PERIOD`` bytes is one contiguous
memoryview slice (no copies when sending or comparing).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

HOST = "127.0.0.1"
SEED = 20240611
PERIOD = 1_048_573  # prime, just under 1 MiB: never a divisor of a power-of-two ring
PATTERN = random.Random(SEED).randbytes(PERIOD)
PATTERN2 = memoryview(PATTERN + PATTERN)  # any window of <= PERIOD bytes is contiguous here
RECV_BUF = 1 << 20
STALL_S = 30.0  # no byte moved for this long in a client process: the run fails
SETTLE_S = 0.5  # receivers' requests written -> sender starts
RP = "ringpipe"
REF = "piping-server"
PIPING_VERSION = "1.12.9"
MB, MIB = 1e6, 1 << 20


class BenchError(Exception):
    pass


def parse_size(text: str) -> int:
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if raw and raw[-1] in units:
        return int(float(raw[:-1]) * units[raw[-1]])
    return int(raw)


def fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..1)."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def split_even(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def budget_for(nbytes: float) -> float:
    """A run's time limit for ``nbytes`` delivered: generous, a run at 20 MB/s still finishes."""
    return 120.0 + nbytes / 20e6
