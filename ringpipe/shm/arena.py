"""A worker's arena: the one ``/dev/shm`` file its rings live in, reserved page by page.

Theory of operation
-------------------
A worker owns the rings of the paths that hash to it. It carves them out of one file,
``ringpipe-<supervisor pid>-<worker pid>-arena``, made at its first ring and unlinked when
the worker exits (the supervisor sweeps it by prefix when the worker dies, kill -9
included). The file is a row of equal slots (``core.arena.SlotTable``), each big enough for
the largest header and the largest ring (``--ring-bytes``); most of it is a hole.

- **Reserve** (a new ring's header and first capacity, and every growth): the bytes are
  counted against the worker's budget (``core.arena.Budget``: ``--max-memory`` / workers),
  then ``posix_fallocate`` allocates the pages. On a full ``/dev/shm`` that call fails with
  ENOSPC, which becomes ``RingMemoryFull`` (503, or a ring that stops growing) instead of a
  SIGBUS at the first touch of a page nobody could allocate.
- **Free**: ``MADV_REMOVE`` punches the slot's reserved bytes out of the file: the pages go
  back to the system at once and out of every mapping (the owner frees a slot only when no
  process touches it any more: see "Users" below). The slot is then reused, lowest
  first, so an idle worker's arena holds no page at all.
- **Grow**: the arena registers itself as the grower of its rings in this process
  (``mapping.register_grower``); a producer here that runs short of room reserves more
  (``RingSegment._grow``). A producer in another worker cannot, so its ring is made at full
  size.

What ``reserved`` counts is what the file holds: headers and capacities, page-rounded,
never a nominal ring size.

Pages and SIGBUS: a page of a ``/dev/shm`` file that nobody reserved is allocated when it is
first touched, and when ``/dev/shm`` is full that touch is a SIGBUS. So no process touches a
byte outside the header and the first ``capacity`` data bytes, and the owner reserves those
(``posix_fallocate``, where a full ``/dev/shm`` is an error) before anybody may touch them.

Users, and when a slot may be reused: ``users[w]`` is 1 while worker ``w`` has a party's
handle open on the ring (``mapping.Region.parties``); only worker ``w`` writes it (the owner
clears it for a dead ``w``). The owner frees the slot (punches its pages and reuses it) only
once every party it sent a START has left and no ``users`` byte is set: the owner reads
the byte after the party's Leave frame arrived, and the party set it before sending that
frame, so a handle still open after its Leave (a few header loads on the way out) keeps
the slot alive. ``relay_id`` in the header lets ``attach`` refuse a reused slot.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
from collections.abc import Callable
from typing import Final

from ringpipe.core.arena import Budget, SlotTable
from ringpipe.core.errors import RingMemoryFull
from ringpipe.shm import mapping
from ringpipe.shm.layout import MAX_HEADER_BYTES, data_offset, init_header
from ringpipe.shm.segment import RingSegment

__all__ = ["Arena"]

log = logging.getLogger("ringpipe.arena")

#: Linux's ``MADV_POPULATE_WRITE`` (5.14+; Python's ``mmap`` module does not name it).
MADV_POPULATE_WRITE: Final = 23
#: Growths smaller than this fault their few pages in as they are written.
POPULATE_MIN_BYTES: Final = 64 << 10
_populate_works = sys.platform == "linux"


def _no_change(delta: int) -> None:
    return None


def _no_refusal(reason: str) -> None:
    return None


class Arena:
    """One worker's rings: their file, their slots, their reserved bytes."""

    def __init__(
        self,
        name: str,
        *,
        ring_bytes: int,
        budget: int,
        on_change: Callable[[int], None] = _no_change,
        on_refusal: Callable[[str], None] = _no_refusal,
    ) -> None:
        """``ring_bytes``: the largest ring; ``budget``: bytes reserved at once at most;
        ``on_change(delta)`` after every reservation and free (the reserved-bytes gauge);
        ``on_refusal(reason)`` when a reservation is refused ("memory_limit", "shm_full")."""
        self.name = name
        self.ring_bytes = ring_bytes
        self.slots = SlotTable(MAX_HEADER_BYTES + ring_bytes)
        self.budget = Budget(budget)
        self.on_change = on_change
        self.on_refusal = on_refusal
        #: The owner's handle on each live ring, by slot, and the bytes reserved from its start.
        self._rings: dict[int, RingSegment] = {}
        self._reserved: dict[int, int] = {}
        self._fd: int | None = None
        self._size = 0

    @property
    def path(self) -> str:
        return os.path.join(mapping.SHM_DIR, self.name)

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            mapping.register_grower(self.name, self.grow)
        return self._fd

    def create_ring(self, relay_id: int, *, n_readers: int, capacity: int, window: int) -> RingSegment:
        """Reserve and map a ring of ``capacity`` bytes (it may grow to ``ring_bytes``);
        the owner's handle on it.

        Raises:
            RingMemoryFull: the budget is spent or ``/dev/shm`` is full; nothing is reserved.
            ValueError: a shape that breaks a ring invariant (a bug in the caller).
        """
        header = data_offset(n_readers)
        size = header + capacity
        if not self.budget.take(size):
            self.on_refusal("memory_limit")
            raise RingMemoryFull("memory_limit")
        slot = self.slots.take()
        offset = self.slots.offset(slot)
        length = header + self.ring_bytes
        try:
            fd = self._file()
            if self.slots.extent > self._size:  # a hole: no memory, and room for every slot
                os.ftruncate(fd, self.slots.extent)
                self._size = self.slots.extent
            os.posix_fallocate(fd, offset, size)
            mm = mmap.mmap(fd, length, offset=offset)
        except OSError as exc:
            self.budget.give(size)
            self.slots.give(slot)
            log.warning("cannot reserve a ring in %s: %s", self.name, exc)
            self.on_refusal("shm_full")
            raise RingMemoryFull("shm_full") from exc
        region = mapping.adopt_region(mapping.ring_name(self.name, relay_id, offset, length), mm)
        try:
            with memoryview(mm) as buf:
                init_header(
                    buf,
                    capacity=capacity,
                    max_capacity=self.ring_bytes,
                    n_readers=n_readers,
                    window=window,
                    relay_id=relay_id,
                )
        except ValueError:
            mm.madvise(mmap.MADV_REMOVE, 0, size)
            mapping.close_region(region)
            self.budget.give(size)
            self.slots.give(slot)
            raise
        ring = RingSegment(region, owned=True)
        self._rings[slot] = ring
        self._reserved[slot] = size
        self.on_change(size)
        return ring

    def grow(self, ring_offset: int, start: int, end: int) -> bool:
        """Reserve bytes ``[start, end)`` of the ring at ``ring_offset`` (a ``mapping.Grower``);
        False, with nothing reserved, if the budget or ``/dev/shm`` refuses."""
        slot = ring_offset // self.slots.slot_bytes
        reserved = self._reserved.get(slot)
        if reserved is None or start != reserved or end <= start:
            return reserved is not None and end <= reserved
        size = end - start
        if not self.budget.take(size):
            self.on_refusal("memory_limit")
            return False
        try:
            os.posix_fallocate(self._file(), ring_offset + start, size)
        except OSError as exc:
            self.budget.give(size)
            self._rings[slot].region.mm.madvise(mmap.MADV_REMOVE, start, size)  # what was allocated, if anything
            log.warning("cannot grow a ring in %s: %s", self.name, exc)
            self.on_refusal("shm_full")
            return False
        self._reserved[slot] = end
        self.on_change(size)
        if size >= POPULATE_MIN_BYTES:
            self._populate(self._rings[slot], start, size)
        return True

    def _populate(self, ring: RingSegment, start: int, size: int) -> None:
        """Map a growth's pages into this process now, in one call, instead of one page fault
        per page as the producer first writes each (a bulk transfer's ring grows to its full
        size within its first MiB: ~25 % of the pages' cost). The pages are reserved already,
        so this never allocates one that nobody reserved; a kernel without it (before Linux
        5.14) says EINVAL once and faults the pages as before."""
        global _populate_works
        if not _populate_works:
            return
        try:
            ring.region.mm.madvise(MADV_POPULATE_WRITE, start, size)
        except OSError:
            _populate_works = False

    def free(self, ring: RingSegment) -> None:
        """Give a ring's pages back to the system and its slot to the next ring. Only when no
        process touches it any more (see "Users" above); the owner's handle closes."""
        slot = ring.region.offset // self.slots.slot_bytes
        if self._rings.get(slot) is not ring:
            raise ValueError(f"{ring.name!r} is not a live ring of {self.name}")
        size = self._reserved.pop(slot)
        del self._rings[slot]
        ring.region.mm.madvise(mmap.MADV_REMOVE, 0, size)
        ring.close()
        self.budget.give(size)
        self.slots.give(slot)
        self.on_change(-size)

    @property
    def reserved(self) -> int:
        """Bytes this arena holds now (headers and capacities of its live rings)."""
        return self.budget.reserved

    @property
    def live(self) -> int:
        return self.slots.live

    def close(self) -> None:
        """Worker exit: unlink the file (mappings elsewhere stay valid until they close)."""
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        if self._fd is not None:
            mapping.unregister_grower(self.name)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
