"""What an owner keeps about each live ring it made, its share of the limits, and the name
it gives each pipe instance (``worker_pipes.WorkerPipes`` is the owner)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from ringpipe.core.config import Settings
from ringpipe.core.control_frames import RelayInfo
from ringpipe.core.rendezvous import Headers, Limits
from ringpipe.shm.segment import RingSegment

__all__ = ["OwnedRelay", "new_epoch", "owner_limits"]


def owner_limits(settings: Settings) -> Limits:
    """This owner's share of the server's limits (see ``worker_pipes``' docstring)."""
    workers = settings.workers
    return Limits(
        wait_timeout=settings.wait_timeout,
        reconnect_grace=settings.reconnect_grace,
        max_pipes=settings.pipes_per_worker,
        max_watchers=settings.max_watchers,
        max_memory=settings.max_memory // workers,
    )


@dataclass(slots=True)
class OwnedRelay:
    """A ring the owner made, from its ``Establish`` until its slot is freed."""

    relay_id: int
    ring: RingSegment
    info: RelayInfo
    path: str
    started: float
    receiver_headers: Headers = ()
    #: How many parties were sent a ``Start`` and have not left: they may map the ring
    #: (``WorkerPipes._attached_to`` names them; a count here spares a set per live pipe).
    attached: int = 0


_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
#: Every two-digit base-36 string, by value (two digits per step: half the steps).
_DIGIT_PAIRS: Final = tuple(high + low for high in _DIGITS for low in _DIGITS)
#: What the last three digit pairs of an epoch count: 36**6 µs, about 36 minutes.
_LOW_SPAN: Final = 1296**3
#: The digits above those (the same for 36 minutes), and the value they were made for.
_high: tuple[int, str] = (-1, "")


def base36(value: int) -> str:
    """``value`` (>= 0) in base 36, lowercase, without leading zeros (``""`` for 0)."""
    pairs = []
    while value:
        value, pair = divmod(value, 1296)
        pairs.append(_DIGIT_PAIRS[pair])
    return "".join(reversed(pairs)).lstrip("0")


def new_epoch(now_ns: int | None = None) -> str:
    """A pipe instance's name: microseconds since 1970 in base 36 (short, sortable, and
    distinct for two pipes on one path, which cannot be established in the same µs).
    ``base36(now // 1000)``, its leading digits kept from the previous call."""
    global _high
    value = (time.time_ns() if now_ns is None else now_ns) // 1000
    high, low = divmod(value, _LOW_SPAN)
    if not high:
        return base36(low)
    if _high[0] != high:
        _high = (high, base36(high))
    rest, last = divmod(low, 1296)
    first, middle = divmod(rest, 1296)
    return _high[1] + _DIGIT_PAIRS[first] + _DIGIT_PAIRS[middle] + _DIGIT_PAIRS[last]
