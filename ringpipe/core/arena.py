"""The arithmetic of a worker's ring arena: slots at offsets of one file, and a byte budget. Pure.

Theory of operation
-------------------
A worker keeps the rings it owns in one shared-memory file, its *arena* (``shm/arena.py``).
The file is a row of equal *slots*; slot ``k`` starts at byte ``k * slot_bytes``, and
``slot_bytes`` fits the largest ring header plus the largest ring, so any ring fits any
slot and a slot's offset never changes. Most of the file is a hole: only the pages a ring
has *reserved* (its header and its current capacity) hold memory, and freeing a ring
punches its slot back into a hole. Readers in other workers map one ring's slot, never the
whole file.

``SlotTable`` hands out slots lowest first, so live rings stay packed at the start of the
file and its size (``extent``) is the high-water mark of rings alive at once, whatever the
churn. ``Budget`` bounds the bytes reserved at once (the worker's share of
``--max-memory``): a reservation either fits whole or changes nothing.

Invariants (``tests/unit/test_arena.py`` checks them with hypothesis):

- a slot is live at most once: ``take`` never returns a live slot, ``give`` only takes one;
- ``take`` returns the lowest slot that is not live;
- live slots' byte ranges ``[offset, offset + slot_bytes)`` never overlap, and every one
  lies below ``extent``;
- ``0 <= Budget.reserved <= Budget.limit`` at all times.
"""

from __future__ import annotations

import heapq

__all__ = ["Budget", "SlotTable"]


class SlotTable:
    """Which slots of an arena hold a ring, lowest free first."""

    __slots__ = ("_free", "_live", "high_water", "slot_bytes")

    def __init__(self, slot_bytes: int) -> None:
        if slot_bytes <= 0:
            raise ValueError(f"slot_bytes must be positive, got {slot_bytes}")
        self.slot_bytes = slot_bytes
        #: Slots below ``high_water`` that are free (a min-heap).
        self._free: list[int] = []
        self._live: set[int] = set()
        #: Slots ever handed out: the file must cover ``extent`` bytes.
        self.high_water = 0

    def take(self) -> int:
        """The lowest free slot, now live."""
        slot = heapq.heappop(self._free) if self._free else self.high_water
        if slot == self.high_water:
            self.high_water += 1
        self._live.add(slot)
        return slot

    def give(self, slot: int) -> None:
        """Free a live slot.

        Raises:
            ValueError: ``slot`` is not live (a double free: a bug in the caller).
        """
        if slot not in self._live:
            raise ValueError(f"slot {slot} is not live")
        self._live.remove(slot)
        heapq.heappush(self._free, slot)

    def offset(self, slot: int) -> int:
        return slot * self.slot_bytes

    @property
    def extent(self) -> int:
        """Bytes the arena file must cover: every slot ever handed out."""
        return self.high_water * self.slot_bytes

    @property
    def live(self) -> int:
        return len(self._live)


class Budget:
    """Bytes reserved at once, at most ``limit``."""

    __slots__ = ("limit", "reserved")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        self.limit = limit
        self.reserved = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit; False (and nothing reserved) if not."""
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        if self.reserved + size > self.limit:
            return False
        self.reserved += size
        return True

    def give(self, size: int) -> None:
        """Return ``size`` reserved bytes.

        Raises:
            ValueError: more than is reserved (a bug in the caller).
        """
        if not 0 <= size <= self.reserved:
            raise ValueError(f"cannot give back {size} of {self.reserved} reserved bytes")
        self.reserved -= size
