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

- **Map**: the owner maps its file a *chunk* of slots at a time (``chunk_slots`` of them,
  the file extended to cover the chunk: a hole costs nothing), and a ring's region is a
  view into its chunk's mapping: no mmap, munmap or file descriptor per ring. A chunk that
  holds no ring is unmapped (it holds no page either): at once, or, where the worker gives
  its arena a timer (``call_later``), ``UNMAP_DELAY_S`` after it emptied, so that pipes
  that come and go one at a time do not map and unmap it each. An idle worker maps
  nothing. Readers in other workers map just the ring's slot, by name
  (``mapping.open_region``).

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
from ringpipe.shm.layout import (
    MAX_HEADER_BYTES,
    check_shape,
    data_offset,
    page_round,
    segment_bytes,
    views_at,
    write_header,
)
from ringpipe.shm.segment import RingSegment

__all__ = ["Arena"]

log = logging.getLogger("ringpipe.arena")

#: Linux's ``MADV_POPULATE_WRITE`` (5.14+; Python's ``mmap`` module does not name it).
MADV_POPULATE_WRITE: Final = 23
#: Growths smaller than this fault their few pages in as they are written.
POPULATE_MIN_BYTES: Final = 64 << 10
_populate_works = sys.platform == "linux"
#: Slots per owner mapping ("Map" above), and the address space one may take at most (a
#: chunk of 1 GiB rings holds a few).
CHUNK_SLOTS: Final = 64
CHUNK_MAX_BYTES: Final = 4 << 30
#: How long a chunk may stay mapped without a ring, where the arena has a timer.
UNMAP_DELAY_S: Final = 1.0

#: ``call_later(delay, callback)``: run ``callback`` in ``delay`` seconds (the event loop's).
CallLater = Callable[[float, Callable[[], None]], object]


class _Chunk:
    """The owner's mapping of ``chunk_slots`` consecutive slots, and its live rings."""

    __slots__ = ("buf", "live", "mm")

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm
        #: The view every region in the chunk slices its views from.
        self.buf = memoryview(mm)
        self.live = 0

    def unmap(self) -> None:
        """Release the view and unmap (or leave that to the garbage collector while a view
        lent to the event loop is still alive: nothing touches it any more)."""
        self.buf.release()
        try:
            self.mm.close()
        except BufferError:
            pass


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
        call_later: CallLater | None = None,
    ) -> None:
        """``ring_bytes``: the largest ring; ``budget``: bytes reserved at once at most;
        ``on_change(delta)`` after every reservation and free (the reserved-bytes gauge);
        ``on_refusal(reason)`` when a reservation is refused ("memory_limit", "shm_full");
        ``call_later``: a timer to unmap empty chunks with (none: unmap them at once)."""
        self.name = name
        self.ring_bytes = ring_bytes
        self.slots = SlotTable(page_round(MAX_HEADER_BYTES + ring_bytes))  # slots start on a page
        self.budget = Budget(budget)
        self.on_change = on_change
        self.on_refusal = on_refusal
        #: The owner's handle on each live ring, by slot, and the bytes reserved from its start.
        self._rings: dict[int, RingSegment] = {}
        self._reserved: dict[int, int] = {}
        self.chunk_slots = max(1, min(CHUNK_SLOTS, CHUNK_MAX_BYTES // self.slots.slot_bytes))
        #: The mapped chunks, by index (slot // chunk_slots).
        self._chunks: dict[int, _Chunk] = {}
        self.call_later = call_later
        self._unmap_pending = False
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
        """Reserve a ring of ``capacity`` bytes (it may grow to ``ring_bytes``) in its chunk's
        mapping; the owner's handle on it.

        Raises:
            RingMemoryFull: the budget is spent or ``/dev/shm`` is full; nothing is reserved.
            ValueError: a shape that breaks a ring invariant (a bug in the caller); nothing
                is reserved.
        """
        ring_bytes = self.ring_bytes
        check_shape(capacity=capacity, max_capacity=ring_bytes, n_readers=n_readers, window=window)
        header = data_offset(n_readers)
        size = segment_bytes(capacity, n_readers)
        if not self.budget.take(size):
            self.on_refusal("memory_limit")
            raise RingMemoryFull("memory_limit")
        slot = self.slots.take()
        index, within = divmod(slot, self.chunk_slots)
        offset = self.slots.offset(slot)
        chunk = self._chunks.get(index)
        try:
            fd = self._fd if self._fd is not None else self._file()
            if chunk is None:
                chunk = self._map_chunk(fd, index)
            os.posix_fallocate(fd, offset, size)
        except OSError as exc:
            self.budget.give(size)
            self.slots.give(slot)
            if chunk is not None and not chunk.live:
                del self._chunks[index]
                chunk.unmap()
            log.warning("cannot reserve a ring in %s: %s", self.name, exc)
            self.on_refusal("shm_full")
            raise RingMemoryFull("shm_full") from exc
        chunk.live += 1
        base = within * self.slots.slot_bytes
        region = mapping.adopt_region(
            mapping.ring_name(self.name, relay_id, offset, header + ring_bytes),
            chunk.mm,
            file=self.name,
            relay_id=relay_id,
            offset=offset,
            base=base,
            own_mapping=False,
        )
        views = region.views = views_at(chunk.buf, base, n_readers=n_readers, max_capacity=ring_bytes)
        write_header(
            views[0], capacity=capacity, max_capacity=ring_bytes, n_readers=n_readers, window=window, relay_id=relay_id
        )
        ring = RingSegment(region, owned=True)
        self._rings[slot] = ring
        self._reserved[slot] = size
        self.on_change(size)
        return ring

    def _map_chunk(self, fd: int, index: int) -> _Chunk:
        """Map chunk ``index``, the file extended to cover it first (a hole: no memory).

        Raises:
            OSError: the kernel refuses the mapping.
        """
        length = self.chunk_slots * self.slots.slot_bytes
        start = index * length
        if start + length > self._size:
            os.ftruncate(fd, start + length)
            self._size = start + length
        chunk = self._chunks[index] = _Chunk(mmap.mmap(fd, length, offset=start))
        return chunk

    def grow(self, ring_offset: int, start: int, end: int) -> bool:
        """Reserve bytes ``[start, end)`` of the ring at ``ring_offset`` (a ``mapping.Grower``;
        ``start`` is where its reservation ends now, within the page it ends in): the pages up
        to ``end``, rounded up. False, with nothing reserved, if the budget or ``/dev/shm``
        refuses."""
        slot = ring_offset // self.slots.slot_bytes
        reserved = self._reserved.get(slot)
        end = page_round(end)
        if reserved is None or page_round(start) != reserved or end <= reserved:
            return reserved is not None and end <= reserved
        start = reserved
        size = end - start
        if not self.budget.take(size):
            self.on_refusal("memory_limit")
            return False
        try:
            os.posix_fallocate(self._file(), ring_offset + start, size)
        except OSError as exc:
            self.budget.give(size)
            self._rings[slot].region.madvise(mmap.MADV_REMOVE, start, size)  # what was allocated, if anything
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
            ring.region.madvise(MADV_POPULATE_WRITE, start, size)
        except OSError:
            _populate_works = False

    def free(self, ring: RingSegment) -> None:
        """Give a ring's pages back to the system and its slot to the next ring. Only when no
        process touches it any more (see "Users" above); the owner's handle closes."""
        region = ring.region
        slot = region.offset // self.slots.slot_bytes
        if self._rings.get(slot) is not ring:
            raise ValueError(f"{ring.name!r} is not a live ring of {self.name}")
        size = self._reserved.pop(slot)
        del self._rings[slot]
        region.mm.madvise(mmap.MADV_REMOVE, region.base, size)  # ``region.madvise(REMOVE, 0, size)``
        ring.close()
        self.budget.give(size)
        self.slots.give(slot)
        self.on_change(-size)
        index = slot // self.chunk_slots
        chunk = self._chunks[index]
        chunk.live -= 1
        if not chunk.live:
            if self.call_later is None:
                del self._chunks[index]
                chunk.unmap()
            elif not self._unmap_pending:
                self.call_later(UNMAP_DELAY_S, self.unmap_empty)
                self._unmap_pending = True

    def unmap_empty(self) -> None:
        """Unmap every chunk that holds no ring (the timer's callback; see "Map" above)."""
        self._unmap_pending = False
        for index in [index for index, chunk in self._chunks.items() if not chunk.live]:
            self._chunks.pop(index).unmap()

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
        for chunk in self._chunks.values():
            chunk.unmap()
        self._chunks.clear()
        if self._fd is not None:
            mapping.unregister_grower(self.name)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
