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
  back to the system and out of every mapping (the owner frees a slot only when no process
  touches it any more: see "Users" below). The slot is then reused, lowest first, so an
  idle worker's arena holds no page at all.
- **Keep, briefly** (only where the worker gives the arena a timer): a freed slot keeps its
  pages for ``keep_s`` (``--ring-keep``, 1 s by default, 0 turns it off), its header
  zeroed so that nothing can attach to the old ring, and the worker's next ring takes the
  slot freed last, pages and all. Allocating a page of ``/dev/shm`` and punching it out
  again costs ~1.2 ms of kernel time per MiB on a 2-vCPU VM, against ~40 µs to copy that
  MiB, so a worker that ends and starts bulk pipes all the time spends more on its rings'
  pages than on their bytes; reused, they cost nothing. Kept pages stay counted as reserved
  (the budget, the ``ringpipe_ring_bytes`` gauge) and go back: a kept slot's ``keep_s``
  after it was freed; the pages a reused slot holds beyond what its new ring uses (a token
  stream in a slot a 1 MiB ring left) once they were unused that long; and all of them at
  once when a reservation would otherwise be refused (the budget, or a full ``/dev/shm``).
  So an idle worker still holds no page a second after its last pipe ended, and no ring is
  ever refused for pages kept.
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

What ``reserved`` counts is what the file holds: headers and capacities, page-rounded, and
pages kept for the next ring; never a nominal ring size.

Pages and SIGBUS: a page of a ``/dev/shm`` file that nobody reserved is allocated when it is
first touched, and when ``/dev/shm`` is full that touch is a SIGBUS. So no process touches a
byte outside the header and the first ``capacity`` data bytes, and the owner reserves those
(``posix_fallocate``, where a full ``/dev/shm`` is an error) before anybody may touch them.

Users, and when a slot may be reused: ``users[w]`` is 1 while worker ``w`` has a party's
handle open on the ring (``mapping.Region.parties``); only worker ``w`` writes it (the owner
clears it for a dead ``w``). The owner frees the slot (zeroes its header, keeps or punches
its pages, and reuses it) only
once every party it sent a START has left and no ``users`` byte is set: the owner reads
the byte after the party's Leave frame arrived, and the party set it before sending that
frame, so a handle still open after its Leave (a few header loads on the way out) keeps
the slot alive. ``relay_id`` in the header lets ``attach`` refuse a reused slot.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import sys
import time
from collections.abc import Callable
from typing import Final

from ringpipe.core.arena import Budget, SlotTable
from ringpipe.core.errors import RingMemoryFull
from ringpipe.shm import mapping
from ringpipe.shm.layout import (
    MAX_HEADER_BYTES,
    W_CAPACITY,
    W_READERS,
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
#: How long a freed slot keeps its pages for the next ring ("Keep, briefly" above), and how
#: long pages a reused slot's ring does not use stay before they go back (``--ring-keep``).
KEEP_FREED_S: Final = 1.0
#: Zeros for a header (a kept slot's, when it is freed and when it is reused).
_ZEROS: Final = memoryview(bytes(MAX_HEADER_BYTES))

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
        keep_s: float = KEEP_FREED_S,
    ) -> None:
        """``ring_bytes``: the largest ring; ``budget``: bytes reserved at once at most;
        ``on_change(delta)`` after every reservation and free (the reserved-bytes gauge);
        ``on_refusal(reason)`` when a reservation is refused ("memory_limit", "shm_full");
        ``call_later``: a timer to unmap empty chunks with (none: unmap them at once);
        ``keep_s``: how long a freed ring's pages are kept for the next ring, with a timer (0:
        given back at once)."""
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
        #: Freed slots that keep their pages ("Keep, briefly"), oldest first: slot -> (bytes
        #: allocated from its start, when it was freed). Their slots stay taken in ``slots``
        #: and their chunks mapped (``_Chunk.live`` counts them) until they are given back.
        self._kept: dict[int, tuple[int, float]] = {}
        #: Live rings made in a kept slot with pages beyond their capacity, oldest first: slot -> when.
        self._tails: dict[int, float] = {}
        self._keep_timer_pending = False
        self.keep_s = keep_s
        self.clock: Callable[[], float] = time.monotonic

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
        mapping, in the slot freed last if one keeps its pages; the owner's handle on it.

        Raises:
            RingMemoryFull: the budget is spent or ``/dev/shm`` is full; nothing is reserved.
            ValueError: a shape that breaks a ring invariant (a bug in the caller); nothing
                is reserved.
        """
        ring_bytes = self.ring_bytes
        check_shape(capacity=capacity, max_capacity=ring_bytes, n_readers=n_readers, window=window)
        header = data_offset(n_readers)
        size = segment_bytes(capacity, n_readers)
        slot, size = self._reuse_kept(header, size) if self._kept else self._take_fresh(size)
        index, within = divmod(slot, self.chunk_slots)
        chunk = self._chunks[index]
        offset = self.slots.offset(slot)
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
        return ring

    def _reuse_kept(self, header: int, size: int) -> tuple[int, int]:
        """Take the slot freed last, with its pages, for a ring of ``size`` bytes with a
        ``header``-byte header: the slot and the bytes it now reserves (``size``, or more).

        Raises:
            RingMemoryFull: it held fewer pages and no more could be reserved (the slot is
                given back).
        """
        slot, (held, _freed) = self._kept.popitem()  # the last freed: its pages the likeliest mapped
        index, within = divmod(slot, self.chunk_slots)
        if size > held:
            try:
                self._allocate(self.slots.offset(slot) + held, size - held)
            except RingMemoryFull:
                self._give_back_slot(slot, held)
                raise
            self.on_change(size - held)
        elif held > size:
            self._tails[slot] = self.clock()  # pages it may grow into; given back if it does not
            self._arm_keep_timer()
        base = within * self.slots.slot_bytes
        self._chunks[index].buf[base : base + header] = _ZEROS[:header]  # as fresh pages are
        return slot, max(size, held)

    def _take_fresh(self, size: int) -> tuple[int, int]:
        """The lowest free slot, its chunk mapped and ``size`` bytes of it reserved.

        Raises:
            RingMemoryFull: the budget or ``/dev/shm`` refused; nothing is reserved.
        """
        slot = self.slots.take()
        index = slot // self.chunk_slots
        chunk = self._chunks.get(index)
        try:
            fd = self._fd if self._fd is not None else self._file()
            if chunk is None:
                chunk = self._map_chunk(fd, index)
            self._allocate(self.slots.offset(slot), size)
        except (OSError, RingMemoryFull) as exc:
            self.slots.give(slot)
            if chunk is not None and not chunk.live:
                del self._chunks[index]
                chunk.unmap()
            if isinstance(exc, RingMemoryFull):
                raise
            log.warning("cannot map a chunk of %s: %s", self.name, exc)
            self.on_refusal("shm_full")
            raise RingMemoryFull("shm_full") from exc
        chunk.live += 1
        self.on_change(size)
        return slot, size

    def _allocate(self, offset: int, size: int) -> None:
        """Count ``size`` bytes against the budget and allocate the file's pages at ``offset``
        (``on_change`` is the caller's). Kept pages go back first when either is short.

        Raises:
            RingMemoryFull: the budget or ``/dev/shm`` refused; nothing is reserved.
        """
        if not self.budget.take(size) and not (self.give_back_kept() and self.budget.take(size)):
            self.on_refusal("memory_limit")
            raise RingMemoryFull("memory_limit")
        fd = self._fd if self._fd is not None else self._file()
        try:
            os.posix_fallocate(fd, offset, size)
            return
        except OSError as exc:
            error = exc
        if error.errno == errno.ENOSPC and self.give_back_kept():  # a full /dev/shm: kept pages first
            try:
                os.posix_fallocate(fd, offset, size)
                return
            except OSError as exc:
                error = exc
        self.budget.give(size)
        log.warning("cannot reserve ring pages in %s: %s", self.name, error)
        self.on_refusal("shm_full")
        raise RingMemoryFull("shm_full") from error

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
        ``start`` is where its capacity ends now, within the page it ends in): the pages up
        to ``end``, rounded up, of which a ring in a kept slot may hold some already. False,
        with nothing reserved, if the budget or ``/dev/shm`` refuses."""
        slot = ring_offset // self.slots.slot_bytes
        reserved = self._reserved.get(slot)
        end = page_round(end)
        if reserved is None or page_round(start) > reserved:
            return False
        if end <= reserved:
            return True
        self._tails.pop(slot, None)  # it grows past them: kept pages it holds are its own now
        size = end - reserved
        try:
            self._allocate(ring_offset + reserved, size)
        except RingMemoryFull:
            self._rings[slot].region.madvise(mmap.MADV_REMOVE, reserved, size)  # what was allocated, if anything
            return False
        self._reserved[slot] = end
        self.on_change(size)
        if size >= POPULATE_MIN_BYTES:
            self._populate(self._rings[slot], reserved, size)
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
        """Give a ring's slot to the next ring, and its pages back to the system: at once, or,
        where the arena has a timer, after ``keep_s`` unless a new ring takes them first
        ("Keep, briefly"). Only when no process touches the ring any more (see
        "Users" above); the owner's handle closes."""
        region = ring.region
        slot = region.offset // self.slots.slot_bytes
        if self._rings.get(slot) is not ring:
            raise ValueError(f"{ring.name!r} is not a live ring of {self.name}")
        size = self._reserved.pop(slot)
        del self._rings[slot]
        self._tails.pop(slot, None)
        if self.call_later is None or self.keep_s <= 0:
            ring.close()
            self._give_back_slot(slot, size)
            return
        header = data_offset(ring.n_readers)
        region.mm[region.base : region.base + header] = _ZEROS[:header]  # no attach finds the old ring
        ring.close()
        self._kept[slot] = (size, self.clock())
        self._arm_keep_timer()

    def give_back_kept(self) -> bool:
        """Give back every kept page now (a reservation would be refused otherwise); True if
        there were any."""
        had = bool(self._kept or self._tails)
        self._give_back_since(math.inf)
        return had

    def give_back_stale(self) -> None:
        """The timer's callback: give back what was kept ``keep_s`` and is still unused."""
        self._keep_timer_pending = False
        self._give_back_since(self.clock() - self.keep_s)
        self._arm_keep_timer()

    def _give_back_since(self, cutoff: float) -> None:
        """Give back the kept slots freed, and the tails kept, at ``cutoff`` or before (both
        oldest first, so the first newer one ends each pass)."""
        while self._kept:
            slot, (held, freed) = next(iter(self._kept.items()))
            if freed > cutoff:
                break
            del self._kept[slot]
            self._give_back_slot(slot, held)
        while self._tails:
            slot, since = next(iter(self._tails.items()))
            if since > cutoff:
                break
            del self._tails[slot]
            self._trim(slot)

    def _arm_keep_timer(self) -> None:
        """Have ``give_back_stale`` run when the oldest kept pages are due (if anything is kept)."""
        if self._keep_timer_pending or self.call_later is None:
            return
        due = [next(iter(self._kept.values()))[1]] if self._kept else []
        if self._tails:
            due.append(next(iter(self._tails.values())))
        if due:
            self._keep_timer_pending = True
            self.call_later(max(0.01, min(due) + self.keep_s - self.clock()), self.give_back_stale)

    def _give_back_slot(self, slot: int, held: int) -> None:
        """Punch a freed slot's ``held`` bytes (through its chunk's mapping, which it keeps
        alive) and free the slot."""
        index, within = divmod(slot, self.chunk_slots)
        self._chunks[index].mm.madvise(mmap.MADV_REMOVE, within * self.slots.slot_bytes, held)
        self.budget.give(held)
        self.slots.give(slot)
        self.on_change(-held)
        self._chunk_lost_one(index)

    def _trim(self, slot: int) -> None:
        """Give back the pages a live ring in a reused slot holds beyond its capacity (nobody
        touches them: a ring's bytes stay within its capacity, which only ``grow`` raises)."""
        ring = self._rings.get(slot)
        if ring is None:
            return
        words = ring.words
        used = page_round(data_offset(int(words[W_READERS])) + int(words[W_CAPACITY]))
        extra = self._reserved[slot] - used
        if extra > 0:
            ring.region.madvise(mmap.MADV_REMOVE, used, extra)
            self._reserved[slot] = used
            self.budget.give(extra)
            self.on_change(-extra)

    def _chunk_lost_one(self, index: int) -> None:
        """A ring or kept slot of chunk ``index`` is gone: unmap the chunk once it holds none."""
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
        """Bytes this arena holds now: headers and capacities of its live rings, and the
        pages it keeps ("Keep, briefly")."""
        return self.budget.reserved

    @property
    def live(self) -> int:
        """Live rings (kept slots are not)."""
        return self.slots.live - len(self._kept)

    def close(self) -> None:
        """Worker exit: unlink the file (mappings elsewhere stay valid until they close)."""
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        self._kept.clear()
        self._tails.clear()
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
