"""The rendezvous's deadlines: one heap for every wait, reconnect grace and parked resume.

A timer is never removed when what it guards goes away (a party that leaves, a slot taken
back): it stays in the heap and is found stale when it comes due, which keeps a leave O(1)
for thousands of waiting parties. So that a busy owner's heap does not grow with every
party it ever saw, a push that finds the heap past ``compact_at`` drops the timers the
owner's ``live`` test rejects (amortized O(1) per push).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable

from ringpipe.core.rendezvous.events import PartyId

__all__ = ["Timer", "TimerKind", "Timers"]


class TimerKind(enum.IntEnum):
    """What a deadline guards. Timers due at the same instant fire in this order."""

    #: A waiting party's ``wait_timeout``; the timer holds the party.
    WAIT = 0
    #: A reserved reader slot's ``reconnect_grace``; the timer holds ``(relay_id, slot)``.
    GRACE = 1
    #: A parked resume's wait for a slot to be reserved; the timer holds the party.
    PARK = 2


#: ``(deadline, kind, what)``: ordered by deadline, then kind.
Timer = tuple[float, TimerKind, PartyId | tuple[int, int]]


class Timers:
    """A min-heap of ``Timer`` with lazy deletion (see the module docstring)."""

    def __init__(self, live: Callable[[Timer], bool]) -> None:
        self._heap: list[Timer] = []
        self._live = live
        self._compact_at = 1024

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, kind: TimerKind, what: PartyId | tuple[int, int]) -> None:
        heapq.heappush(self._heap, (deadline, kind, what))
        if len(self._heap) > self._compact_at:
            self._heap = [t for t in self._heap if self._live(t)]
            heapq.heapify(self._heap)
            self._compact_at = max(1024, 2 * len(self._heap))

    def pop_due(self, now: float) -> Timer | None:
        """The earliest timer due at ``now`` (removed from the heap), or None."""
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)
        return None

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None
