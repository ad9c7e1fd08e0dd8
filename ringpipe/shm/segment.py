"""The shared-memory ring: its layout, handles on it, cursor loads and stores, growth.

Theory of operation
-------------------
Each established pipe has one ring. Its owner worker carves it out of its arena
(``arena.py``: one ``/dev/shm`` file per worker, rings in equal slots) and names it by
arena, relay id, offset and length (``mapping.ring_name``); the START frame carries that
name. The producer's worker and every reader's worker map the ring's slot by name
(``RingSegment.attach``). When a worker dies, the supervisor sweeps its files, arena
included, and at start-up it sweeps those of supervisors that no longer run.

Layout, and what the metrics words mean: ``layout.py``. Reserved pages (never a SIGBUS),
the users bytes and when a ring's slot may be reused: ``arena.py``.

Growth: a ring whose producer runs in its owner's worker starts small and doubles while it
has not wrapped (``ring.grown``): the writer reserves the new pages through its arena's
grower, stores ``capacity``, and only then writes a byte past the old one. Readers load
``capacity`` after ``write_seq``, so a reader that sees such a byte sees the capacity that
covers it. A producer in another worker gets its ring at full size (it cannot reserve in
another worker's arena). When growth is refused (budget, full ``/dev/shm``), the ring keeps
its capacity and, if its replay window would not leave the writer room, the window shrinks
to half the ring (stored before any byte wraps; a smaller window only moves the gate up).

Replay window and watchers: the writer is gated by ``ring.gate`` (the slowest attached
reader, but at most ``write_seq - replay_window``), so the newest ``replay_window`` bytes
stay readable after every reader has read them. Watchers have no cursor here and never
gate the writer: each keeps its position in its own process, copies bytes out, and checks
with ``ring.held`` that the gate did not pass its position meanwhile (``read_behind``). A
sleeping watcher sets its worker's byte and then ``watchers_waiting`` (plain stores, no
read-modify-write across processes); the writer, after publishing, takes the summary word
and, only if it was set, the per-worker bytes, and wakes each such worker once (all its
watchers of the ring). With no watcher, that costs the writer one load per publish.

Memory ordering: CPython has no fences. On x86-64 (TSO) stores become visible in program
order, so "copy the data, then store the sequence" is enough for a reader that loads the
sequence first and the data after; likewise a reader copies out before it stores its
``read_seq``. A reader loads ``state`` *before* ``write_seq``, and the writer stores
``write_seq`` before ``state``, so a reader that sees EOF also sees the final sequence.

Wake-ups: a side about to sleep sets its *waiting* word, re-checks, and sleeps; the other
side, after publishing, takes (reads and clears) the waiting words and wakes only those
sleepers (``wakeup.py`` across workers). TSO may reorder a store with a later load, so a
wake-up can be missed; sleepers therefore sleep with a timeout (``relay.py``). A missed wake
costs latency, never a hang, and no process ever spins.
"""

from __future__ import annotations

import mmap
import os

from ringpipe.core import ring
from ringpipe.core.errors import Gap, PeerGone, WouldBlock
from ringpipe.shm import mapping
from ringpipe.shm.layout import (
    ATTACHED,
    BROKEN,
    CANCELLED,
    DETACHED,
    DONE,
    EOF,
    EVICTED,
    LINE,
    MAGIC,
    MAX_HEADER_BYTES,
    NO_USERS,
    OPEN,
    R_FRAMING,
    RELEASED_VIEW,
    W_CAPACITY,
    W_CREATED_NS,
    W_DATA,
    W_MAGIC,
    W_MAX_CAPACITY,
    W_READERS,
    W_RELAY,
    W_STAMP_NS,
    W_STAMP_SEQ,
    W_STATE,
    W_WATCHERS,
    W_WINDOW,
    W_WRITE_SEQ,
    W_WRITER_WAITING,
    WATCHER_WORKERS,
    ReaderStatus,
    RingState,
    check_shape,
    data_offset,
    ring_views,
    segment_bytes,
    views_at,
    write_header,
)
from ringpipe.shm.mapping import segment_name, segment_prefix, sweep, sweep_orphans

__all__ = [
    "ATTACHED",
    "BROKEN",
    "CANCELLED",
    "DETACHED",
    "DONE",
    "EOF",
    "EVICTED",
    "MAX_HEADER_BYTES",
    "OPEN",
    "ReaderStatus",
    "RingSegment",
    "RingState",
    "data_offset",
    "segment_bytes",
    "segment_name",
    "segment_prefix",
    "set_worker_slot",
    "sweep",
    "sweep_orphans",
]

#: The users byte this process sets (its worker slot; 0 outside a worker).
_worker_slot = 0


def set_worker_slot(index: int) -> None:
    """Which ``users`` byte this process's handles set: its worker slot (``WorkerPipes`` calls it)."""
    global _worker_slot
    if not 0 <= index < WATCHER_WORKERS:
        raise ValueError(f"worker slot {index} is out of range")
    _worker_slot = index


class RingSegment:
    """One pipe's ring in shared memory, seen through one handle (writer, reader or owner; slotted: 3 per pipe)."""

    __slots__ = tuple(
        "_cached_slowest _data _data_offset _grower _region _users _watch_flags _words"
        " max_capacity n_readers name owned words".split()
    )

    def __init__(self, region: mapping.Region, *, owned: bool) -> None:
        """A handle on a mapped ring (``region`` counts it already).

        Raises:
            FileNotFoundError: the region holds no ring, or another relay's (its slot was reused).
        """
        self._region = region
        self.owned = owned
        self.name = region.name
        views = region.views
        if views is None:  # the first handle in this process; later ones share its views
            views = region.views = ring_views(region.mm)
        words = views[0]
        if words[W_MAGIC] != MAGIC or (region.relay_id and words[W_RELAY] != region.relay_id):
            mapping.close_region(region)
            raise FileNotFoundError(f"{region.name!r} holds no ring (any more)")
        self.n_readers = int(words[W_READERS])
        self.max_capacity = int(words[W_MAX_CAPACITY])
        self._data_offset = int(words[W_DATA])
        self._words: memoryview | None = words
        #: The header as uint64 words: a plain attribute, as the relay loads and stores a few of
        #: them per token. ``close`` swaps in a released view, so any use after that raises ``ValueError``.
        self.words: memoryview = words
        self._data: memoryview | None = views[1]
        self._watch_flags: memoryview | None = views[2]
        self._users: memoryview | None = views[3]
        self._grower = mapping.grower_of(region)
        self._cached_slowest = 0
        if not owned:
            region.parties += 1
            if region.parties == 1:
                self._users[_worker_slot] = 1

    # -- lifecycle --

    @classmethod
    def create(cls, name: str, capacity: int, n_readers: int, window: int = 0) -> RingSegment:
        """Create a ring in a file of its own (tests, tools; workers use ``arena.Arena``).
        ``window``: replay bytes kept after every reader read them (<= capacity/2).

        Raises:
            ValueError: a shape that breaks a ring invariant (``layout.check_shape``).
        """
        check_shape(capacity=capacity, max_capacity=capacity, n_readers=n_readers, window=window)
        size = segment_bytes(capacity, n_readers)
        fd = os.open(os.path.join(mapping.SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(os.path.join(mapping.SHM_DIR, name))
            raise
        finally:
            os.close(fd)
        region = mapping.adopt_region(name, mm, file=name)
        with memoryview(mm) as buf:
            region.views = views_at(buf, 0, n_readers=n_readers, max_capacity=capacity)
        write_header(
            region.views[0], capacity=capacity, max_capacity=capacity, n_readers=n_readers, window=window, relay_id=0
        )
        return cls(region, owned=True)

    @classmethod
    def attach(cls, name: str) -> RingSegment:
        """A party's handle on ring ``name``. Raises ``FileNotFoundError`` if it is gone."""
        return cls(mapping.open_region(name), owned=False)

    def close(self) -> None:
        """Drop this handle (idempotent): its views, its users byte if it was the last party
        handle of this process, the mapping if it was the last handle. Freeing the ring's
        memory is its owner's business (``arena.Arena.free``, or ``unlink`` for a file of its own)."""
        if self._words is None:
            return
        region = self._region
        if not self.owned:
            region.parties -= 1
            if region.parties == 0 and self._users is not None:
                self._users[_worker_slot] = 0
        self._words = self._data = self._watch_flags = self._users = None
        self.words = RELEASED_VIEW
        mapping.close_region(region)  # the last handle releases the shared views

    def unlink(self) -> None:
        """Remove a ring's own file (``create``); arena rings are freed by their arena."""
        if ":" not in self.name:
            try:
                os.unlink(os.path.join(mapping.SHM_DIR, self.name))
            except FileNotFoundError:
                pass

    @property
    def region(self) -> mapping.Region:
        return self._region

    @property
    def capacity(self) -> int:
        """The ring's capacity now (it may grow until the first wrap, see the module docstring)."""
        return int(self.words[W_CAPACITY])

    @property
    def window(self) -> int:
        return int(self.words[W_WINDOW])

    @property
    def relay_id(self) -> int:
        return int(self.words[W_RELAY])

    def has_users(self) -> bool:
        """Whether any worker has a party's handle open on the ring (the owner's free check)."""
        users = self._users
        return users is not None and users.tobytes() != NO_USERS

    def clear_user(self, worker: int) -> None:
        """Forget a dead worker's users byte (the owner, on ``WorkerGone``)."""
        if self._users is not None:
            self._users[worker] = 0

    # -- writer side --

    @property
    def write_seq(self) -> int:
        return int(self.words[W_WRITE_SEQ])

    @property
    def state(self) -> int:
        return int(self.words[W_STATE])

    def reader_status(self, slot: int) -> int:
        return int(self.words[LINE * (2 + slot) + 1])

    def read_seq(self, slot: int) -> int:
        return int(self.words[LINE * (2 + slot)])

    def _slowest_attached(self) -> int:
        """The writer's gate (``ring.gate``): attached readers and the replay window."""
        words = self.words
        write_seq = int(words[W_WRITE_SEQ])
        return ring.gate(
            write_seq,
            (int(words[LINE * (2 + i)]) for i in range(self.n_readers) if words[LINE * (2 + i) + 1] == ATTACHED),
            int(words[W_WINDOW]),
        )

    def oldest_held(self) -> int:
        """The oldest pipe offset still intact in the ring (the gate, see ``ring.gate``)."""
        return self._slowest_attached()

    def gating_readers(self) -> list[tuple[int, int]]:
        """``(slot, read_seq)`` of every attached reader (the stall check watches them)."""
        words = self.words
        return [(i, int(words[LINE * (2 + i)])) for i in range(self.n_readers) if words[LINE * (2 + i) + 1] == ATTACHED]

    def evict(self, slot: int) -> bool:
        """Stop reader ``slot`` gating the writer because it stalled; False if it was not attached."""
        status = LINE * (2 + slot) + 1
        if self.words[status] != ATTACHED:
            return False
        self.words[status] = EVICTED
        self._cached_slowest = self._slowest_attached()
        return True

    def write_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` as fits, publish it, and return the bytes written.

        ``ring.plan_write``'s arithmetic, inlined: this runs once per token a producer sends.

        Raises:
            WouldBlock: the ring is full; set ``writer_waiting``, re-check, then sleep.
        """
        words, area = self.words, self._data
        assert area is not None
        write_seq = words[W_WRITE_SEQ]
        size = len(data)
        capacity = words[W_CAPACITY]
        if write_seq - self._cached_slowest + size > capacity:
            capacity = self._room_for(write_seq, size)  # refreshes the cached gate; may grow the ring
        room = capacity - (write_seq - self._cached_slowest)
        if size <= 0 or not 0 <= room <= capacity:
            raise ValueError(f"bad write request: size={size}, room={room}, capacity={capacity}")
        if room == 0:
            raise WouldBlock("ring full")
        take = size if size <= room else room
        start = write_seq & (capacity - 1)
        first = capacity - start
        if take == size and take <= first:
            area[start : start + take] = data
        else:
            src = memoryview(data)
            if take <= first:
                area[start : start + take] = src[:take]
            else:
                area[start:capacity] = src[:first]
                area[: take - first] = src[first:take]
        words[W_WRITE_SEQ] = write_seq + take
        return take

    def free_span(self, limit: int) -> memoryview | None:
        """A writable view of up to ``limit`` contiguous free bytes at the write position.

        For reading a socket straight into the ring; ``publish`` makes what was put there
        visible. None when the ring is full. Release the view before ``close``.
        """
        words, area = self.words, self._data
        assert area is not None
        write_seq = int(words[W_WRITE_SEQ])
        capacity = self._room_for(write_seq, limit)  # first: it may refresh the cached gate
        try:
            plan = ring.plan_write(
                write_seq=write_seq, slowest_read_seq=self._cached_slowest, capacity=capacity, size=limit
            )
        except WouldBlock:
            return None
        span = plan.spans[0]
        return area[span.offset : span.offset + span.length]

    def _room_for(self, write_seq: int, size: int) -> int:
        """The capacity to plan a write of ``size`` bytes with: refreshes the cached gate when
        the ring looks short of room, and grows the ring when it still is and may."""
        capacity = int(self.words[W_CAPACITY])
        if write_seq - self._cached_slowest + size > capacity:
            self._cached_slowest = self._slowest_attached()
            if write_seq - self._cached_slowest + size > capacity and write_seq <= capacity < self.max_capacity:
                capacity = self._grow(write_seq, size, capacity)
        return capacity

    def _grow(self, write_seq: int, size: int, capacity: int) -> int:
        """Grow before the first wrap (see the module docstring): to the smallest doubling with
        room for ``size``, else the largest the arena grants; the capacity now in effect."""
        words = self.words
        target = ring.grown(
            write_seq=write_seq,
            gate=self._cached_slowest,
            capacity=capacity,
            max_capacity=self.max_capacity,
            size=size,
        )
        grower, start = self._grower, self._data_offset
        while target > capacity and grower is not None:  # else the largest doubling the budget allows
            if grower(self._region.offset, start + capacity, start + target):
                words[W_CAPACITY] = target  # reserved first; stored before any byte past the old capacity
                return target
            target //= 2
        if words[W_WINDOW] > capacity // 2:  # refused: leave the writer half of what it has
            words[W_WINDOW] = capacity // 2
            self._cached_slowest = self._slowest_attached()
        return capacity

    def publish(self, size: int) -> None:
        """Publish ``size`` bytes written into the last ``free_span`` (one 8-byte store)."""
        self.words[W_WRITE_SEQ] = int(self.words[W_WRITE_SEQ]) + size

    def finish_writing(self, *, broken: bool = False) -> None:
        """Publish the end: EOF (clean) or BROKEN (producer vanished). Idempotent."""
        if self._words is not None and self.state == OPEN:
            self.words[W_STATE] = BROKEN if broken else EOF

    def break_ring(self) -> None:
        """Mark the ring broken whatever its state (the owner, when a producer's worker died)."""
        if self._words is not None and self.state not in (EOF, CANCELLED):
            self.words[W_STATE] = BROKEN

    def cancel(self) -> None:
        """Mark the ring cancelled (``DELETE``): readers end with the cancelled ending."""
        if self._words is not None:
            self.words[W_STATE] = CANCELLED

    def take_watcher_workers(self) -> list[int]:
        """Worker slots with a sleeping watcher of this ring; their flags are cleared."""
        words = self.words
        if not words[W_WATCHERS]:
            return []
        words[W_WATCHERS] = 0
        flags = self._watch_flags
        assert flags is not None
        workers = [w for w in range(WATCHER_WORKERS) if flags[w]]
        for w in workers:
            flags[w] = 0
        return workers

    def set_watcher_waiting(self, worker: int) -> None:
        flags = self._watch_flags
        assert flags is not None
        flags[worker] = 1
        self.words[W_WATCHERS] = 1

    def set_writer_waiting(self) -> None:
        self.words[W_WRITER_WAITING] = 1

    def take_sleeping_readers(self) -> list[int]:
        """Slots that asked to be woken; their flags are cleared."""
        words = self.words
        slots = []
        for i in range(self.n_readers):
            flag = LINE * (2 + i) + 2
            if words[flag]:
                words[flag] = 0
                slots.append(i)
        return slots

    def take_sleepers(self) -> tuple[list[int], list[int]] | None:
        """``take_sleeping_readers`` and ``take_watcher_workers`` in one call (the producer
        asks after every publish); None when nobody sleeps."""
        words = self.words
        if self.n_readers == 1:
            slots = [0] if words[LINE * 2 + 2] else []
            if slots:
                words[LINE * 2 + 2] = 0
        else:
            slots = self.take_sleeping_readers()
        if not words[W_WATCHERS]:
            return (slots, []) if slots else None
        return slots, self.take_watcher_workers()

    def attached_readers(self) -> int:
        words = self.words
        return sum(1 for i in range(self.n_readers) if words[LINE * (2 + i) + 1] == ATTACHED)

    # -- reader side --

    def peek(self, slot: int, limit: int) -> tuple[list[memoryview], int]:
        """Views of up to ``limit`` published bytes for reader ``slot``, without consuming them.

        Returns the views (one, or two where the bytes wrap) and the ``read_seq`` that
        ``commit_read`` must store once they have been sent; no views means clean EOF.
        The views alias the ring: release them before ``commit_read`` lets the writer reuse
        the space, and before ``close``. (``ring.plan_read``'s arithmetic, inlined: this runs
        once per token a reader sends.)

        Raises:
            WouldBlock: nothing new yet; set ``reader_waiting``, re-check, then sleep.
            PeerGone: the producer vanished (or its worker died); end the response broken.
        """
        words, area = self.words, self._data
        assert area is not None
        state = words[W_STATE]
        line = LINE * (2 + slot)
        if state > EOF or words[line + 1] == EVICTED:
            raise _ending(state)
        read_seq = words[line]
        ready = words[W_WRITE_SEQ] - read_seq
        if ready == 0:
            if state == EOF:
                return [], read_seq
            raise WouldBlock("nothing published")
        capacity = words[W_CAPACITY]  # after write_seq: it covers every byte before it
        if limit <= 0 or not 0 < ready <= capacity:
            raise ValueError(f"bad read request: limit={limit}, ready={ready}, capacity={capacity}")
        take = ready if ready <= limit else limit
        start = read_seq & (capacity - 1)
        first = capacity - start
        if take <= first:
            return [area[start : start + take]], read_seq + take
        return [area[start:capacity], area[: take - first]], read_seq + take

    def read_behind(self, pos: int, limit: int) -> bytes:
        """Copy up to ``limit`` bytes from pipe offset ``pos`` without a cursor (watchers, catch-up).

        Returns ``b""`` at a clean end. The copy is checked after the fact (``ring.held``).

        Raises:
            WouldBlock: nothing after ``pos`` yet; set the waiting flag, re-check, sleep.
            Gap: bytes from ``pos`` are no longer held; ``lost_to`` is the oldest one held.
            PeerGone: the pipe ended broken or cancelled.
        """
        words, area = self.words, self._data
        assert area is not None
        state = words[W_STATE]
        if state > EOF:
            raise _ending(state)
        write_seq = int(words[W_WRITE_SEQ])
        oldest = self._slowest_attached()
        if pos < oldest:
            raise Gap(pos, oldest)
        if pos >= write_seq:
            if state == EOF:
                return b""
            raise WouldBlock("nothing published")
        capacity = int(words[W_CAPACITY])  # after write_seq, as in ``peek``
        plan = ring.plan_read(read_seq=pos, write_seq=write_seq, capacity=capacity, limit=limit)
        out = b"".join([area[s.offset : s.offset + s.length] for s in plan.spans])
        oldest = self._slowest_attached()
        if not ring.held(pos, oldest):
            raise Gap(pos, oldest)
        return out

    def commit_read(self, slot: int, read_seq: int) -> None:
        """Store reader ``slot``'s cursor: the bytes before it may now be overwritten."""
        self.words[LINE * (2 + slot)] = read_seq

    def set_reader_waiting(self, slot: int) -> None:
        self.words[LINE * (2 + slot) + 2] = 1

    def arm_reader(self, slot: int) -> bool:
        """Set reader ``slot``'s waiting word, then re-check: True if it may sleep (nothing
        published past its cursor, the ring still open and the reader not evicted)."""
        words = self.words
        line = LINE * (2 + slot)
        words[line + 2] = 1
        return words[W_WRITE_SEQ] == words[line] and words[W_STATE] == OPEN and words[line + 1] != EVICTED

    def caught_up_at(self, slot: int, read_seq: int) -> bool:
        """Whether reader ``slot`` is attached (not evicted) with its cursor exactly at
        ``read_seq``: the producer's direct hand-over (``relay.Producer.offer``) may then
        give it the bytes from there on."""
        words = self.words
        line = LINE * (2 + slot)
        return words[line] == read_seq and words[line + 1] != EVICTED

    def commit_read_waking(self, slot: int, read_seq: int) -> bool:
        """``commit_read``, then ``take_writer_waiting``: True if the writer sleeps and must be woken."""
        words = self.words
        words[LINE * (2 + slot)] = read_seq
        if words[W_WRITER_WAITING]:
            words[W_WRITER_WAITING] = 0
            return True
        return False

    def take_writer_waiting(self) -> bool:
        words = self.words
        if words[W_WRITER_WAITING]:
            words[W_WRITER_WAITING] = 0
            return True
        return False

    def set_reader_status(self, slot: int, status: int) -> None:
        """Detach or finish a reader: from then on it no longer gates the writer."""
        if self._words is not None:
            self.words[LINE * (2 + slot) + 1] = status

    # -- metrics words (see the module docstring) --

    def created_ns(self) -> int:
        """CLOCK_MONOTONIC nanoseconds when the owner established the pipe."""
        return int(self.words[W_CREATED_NS])

    def stamp_latency(self, seq: int, ns: int) -> None:
        """Producer: the bytes before ``seq`` were in the ring at ``ns`` (time first, then seq)."""
        words = self.words
        words[W_STAMP_NS] = ns
        words[W_STAMP_SEQ] = seq

    def latency_stamp_seq(self) -> int:
        """The sequence of the latest latency sample (0: none yet)."""
        return int(self.words[W_STAMP_SEQ])

    def latency_stamp_ns(self) -> int:
        return int(self.words[W_STAMP_NS])

    def set_reader_framing(self, slot: int, code: int) -> None:
        self.words[LINE * (2 + slot) + R_FRAMING] = code

    def reader_framing(self, slot: int) -> int:
        return int(self.words[LINE * (2 + slot) + R_FRAMING])


def _ending(state: int) -> PeerGone:
    """The error a reader gets from a ring that ended in ``state`` (or its own eviction)."""
    if state == BROKEN:
        return PeerGone("producer vanished")
    if state == CANCELLED:
        return PeerGone("the transfer was cancelled", ending="cancelled")
    return PeerGone("this reader made no progress and was evicted", ending="lagged")
