"""The shared-memory ring: segment layout, create/attach/unlink, cursor loads and stores, sweep.

Theory of operation
-------------------
Each established pipe has one ``multiprocessing.shared_memory`` segment, created and
unlinked by the pipe's *owner* worker, named ``ringpipe-<supervisor pid>-<owner pid>-<relay
id>``. The producer's worker and every reader's worker attach to it by name. The owner
unlinks it when every party has left; when a worker dies, the supervisor sweeps the names
that carry its pid, and at start-up it sweeps those of supervisors that no longer run. An
unlinked segment stays mapped in processes that still use it, so a sweep never pulls memory
out from under a live reader.

Layout (every header field is one aligned little-endian uint64; 64-byte lines so the writer
and each reader write to their own cache line)::

    line 0       magic "RPRING01" | capacity | n_readers | data_offset | created_ns
    line 1       write_seq | state (0 open, 1 eof, 2 broken, 3 cancelled) | writer_waiting
                 | replay_window | watchers_waiting | stamp_seq | stamp_ns
    line 2+i     read_seq[i] | status[i] (0 attached, 1 detached, 2 done, 3 evicted)
                 | reader_waiting[i] | framing[i]
    line 2+n..   256 bytes: watcher_waiting[w], one byte per worker slot w
    data_offset  capacity bytes of data (data_offset is page-aligned)

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

Metrics words (``metrics.py`` reads and writes them; no relay decision depends on them):
``created_ns`` is the owner's CLOCK_MONOTONIC when the pipe was established (system-wide on
Linux, so comparable in every worker: time to first byte); ``stamp_seq``/``stamp_ns`` is the
producer's latest latency sample, "the bytes before ``stamp_seq`` were in the ring at
``stamp_ns``" (``stamp_ns`` is stored first, so a reader that loads ``stamp_seq`` first never
pairs a new sequence with an old time); ``framing[i]`` is what reader *i* is served as (for
the transfer's log line).

Wake-ups: a side about to sleep sets its *waiting* word, re-checks, and sleeps; the other
side, after publishing, takes (reads and clears) the waiting words and wakes only those
sleepers (``wakeup.py`` across workers). TSO may reorder a store with a later load, so a wake-up can be
missed; sleepers therefore sleep with a timeout (``relay.py``). A missed wake costs latency,
never a hang, and no process ever spins.

Python 3.11/3.12 register every segment with the ``resource_tracker``, which may unlink a
segment when *any* attaching process exits (cpython gh-82300). We own unlinking ourselves
(one owner + the supervisor's sweep), so tracking is turned off: ``track=False`` on 3.13+,
and on older versions the tracker calls of ``multiprocessing.shared_memory`` are replaced
by no-ops for this process.
"""

from __future__ import annotations

import os
import sys
import time
from multiprocessing import shared_memory
from typing import Any, Final

from ringpipe.core import ring
from ringpipe.core.errors import Gap, PeerGone, WouldBlock

__all__ = [
    "STAMP_SEQ_WORD",
    "RingSegment",
    "segment_bytes",
    "segment_name",
    "segment_prefix",
    "sweep",
    "sweep_orphans",
]

MAGIC: Final = int.from_bytes(b"RPRING01", "little")
SHM_DIR: Final = "/dev/shm"
PREFIX: Final = "ringpipe-"

OPEN, EOF, BROKEN, CANCELLED = 0, 1, 2, 3
ATTACHED, DETACHED, DONE, EVICTED = 0, 1, 2, 3
#: Worker slots with a watcher-waiting byte (config caps workers at 256).
WATCHER_WORKERS: Final = 256

_LINE = 8  # uint64 words per 64-byte line
_W_MAGIC, _W_CAPACITY, _W_READERS, _W_DATA = 0, 1, 2, 3
_W_CREATED_NS = 4
_W_WRITE_SEQ, _W_STATE, _W_WRITER_WAITING, _W_WINDOW, _W_WATCHERS = 8, 9, 10, 11, 12
_W_STAMP_SEQ, _W_STAMP_NS = 13, 14
#: The header word (``words[STAMP_SEQ_WORD]``) holding the latency stamp's sequence: a reader's
#: meter loads it after every chunk it sends, without a method call.
STAMP_SEQ_WORD: Final = _W_STAMP_SEQ
_R_FRAMING = 3  # word of a reader's line


class _NoTracker:
    """Stands in for ``resource_tracker`` inside ``multiprocessing.shared_memory`` (< 3.13)."""

    @staticmethod
    def register(name: str, rtype: str) -> None:
        return None

    @staticmethod
    def unregister(name: str, rtype: str) -> None:
        return None


if sys.version_info < (3, 13):  # pragma: no branch - depends on the interpreter
    shared_memory.resource_tracker = _NoTracker  # type: ignore[attr-defined]


def _open(name: str, *, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    kwargs: dict[str, Any] = {"track": False} if sys.version_info >= (3, 13) else {}
    return shared_memory.SharedMemory(name=name, create=create, size=size, **kwargs)


def segment_prefix(supervisor_pid: int, owner_pid: int | None = None) -> str:
    """Name prefix of a supervisor's segments, or of one owner worker's."""
    base = f"{PREFIX}{supervisor_pid}-"
    return base if owner_pid is None else f"{base}{owner_pid}-"


def segment_name(supervisor_pid: int, owner_pid: int, relay_id: int) -> str:
    return f"{segment_prefix(supervisor_pid, owner_pid)}{relay_id}"


def sweep(prefix: str) -> list[str]:
    """Unlink every segment whose name starts with ``prefix``; return the names removed."""
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:  # pragma: no cover - no /dev/shm
        return removed
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans() -> list[str]:
    """Unlink segments of supervisors that no longer run (one killed with SIGKILL, say)."""
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:  # pragma: no cover
        return removed
    pids = {int(p) for p in (n[len(PREFIX) :].split("-", 1)[0] for n in names if n.startswith(PREFIX)) if p.isdigit()}
    for pid in pids:
        if not _alive(pid):
            removed += sweep(segment_prefix(pid))
    return removed


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _data_offset(n_readers: int) -> int:
    return _round_up(64 * (2 + n_readers) + WATCHER_WORKERS, 4096)


def segment_bytes(capacity: int, n_readers: int) -> int:
    """The size of a ring segment: its header pages plus ``capacity`` bytes of data."""
    return _data_offset(n_readers) + capacity


def _buffer(shm: shared_memory.SharedMemory) -> memoryview:
    """The mapped bytes of an open segment (typeshed allows None once closed)."""
    buf = shm.buf
    if buf is None:  # pragma: no cover - only after close()
        raise ValueError(f"segment {shm.name!r} is closed")
    return buf


class RingSegment:
    """One pipe's ring in shared memory, seen from one process (writer, reader or owner)."""

    def __init__(self, shm: shared_memory.SharedMemory, *, owned: bool) -> None:
        self._shm = shm
        self.owned = owned
        self.name = shm.name
        buf = _buffer(shm)
        words = buf.cast("Q")
        if words[_W_MAGIC] != MAGIC:
            shm.close()
            raise ValueError(f"segment {shm.name!r} is not a ringpipe ring")
        self.capacity = int(words[_W_CAPACITY])
        self.n_readers = int(words[_W_READERS])
        self._data_offset = int(words[_W_DATA])
        words.release()
        self._words: memoryview | None = buf[: self._data_offset].cast("Q")
        #: The header as uint64 words: a plain attribute, not a property, as the relay loads
        #: and stores a few of them per token. ``close`` releases it, so any use after that
        #: raises ``ValueError`` (as the memoryview of a closed ring must).
        self.words: memoryview = self._words
        self._data: memoryview | None = buf[self._data_offset : self._data_offset + self.capacity]
        self._watch_flags: memoryview | None = buf[64 * (2 + self.n_readers) : 64 * (2 + self.n_readers) + 256]
        self.window = int(self._words[_W_WINDOW])
        self._cached_slowest = 0

    # -- lifecycle --

    @classmethod
    def create(cls, name: str, capacity: int, n_readers: int, window: int = 0) -> RingSegment:
        """Create a ring; ``window``: replay bytes kept after every reader read them (<= capacity/2)."""
        if capacity <= 0 or capacity & (capacity - 1) or n_readers < 1 or not 0 <= window <= capacity // 2:
            raise ValueError(f"bad ring shape: capacity={capacity}, n_readers={n_readers}, window={window}")
        data_offset = _data_offset(n_readers)
        shm = _open(name, create=True, size=data_offset + capacity)
        words = _buffer(shm).cast("Q")
        words[_W_CAPACITY] = capacity
        words[_W_READERS] = n_readers
        words[_W_DATA] = data_offset
        words[_W_WINDOW] = window
        words[_W_CREATED_NS] = time.monotonic_ns()
        words[_W_MAGIC] = MAGIC  # last: a half-built header never looks valid
        words.release()
        return cls(shm, owned=True)

    @classmethod
    def attach(cls, name: str) -> RingSegment:
        """Map an existing ring. Raises ``FileNotFoundError`` if it is already unlinked."""
        return cls(_open(name, create=False), owned=False)

    def close(self) -> None:
        """Unmap (idempotent). Unlinking is the owner's business: see ``unlink``."""
        if self._words is not None:
            self._words.release()
            assert self._data is not None and self._watch_flags is not None
            self._data.release()
            self._watch_flags.release()
            self._words = self._data = self._watch_flags = None
            try:
                self._shm.close()
            except BufferError:  # a view lent to the event loop is still alive: unmapped at GC
                pass

    def unlink(self) -> None:
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass

    # -- writer side --

    @property
    def write_seq(self) -> int:
        return int(self.words[_W_WRITE_SEQ])

    @property
    def state(self) -> int:
        return int(self.words[_W_STATE])

    def reader_status(self, slot: int) -> int:
        return int(self.words[_LINE * (2 + slot) + 1])

    def read_seq(self, slot: int) -> int:
        return int(self.words[_LINE * (2 + slot)])

    def _slowest_attached(self) -> int:
        """The writer's gate (``ring.gate``): attached readers and the replay window."""
        words = self.words
        write_seq = int(words[_W_WRITE_SEQ])
        return ring.gate(
            write_seq,
            (int(words[_LINE * (2 + i)]) for i in range(self.n_readers) if words[_LINE * (2 + i) + 1] == ATTACHED),
            self.window,
        )

    def oldest_held(self) -> int:
        """The oldest pipe offset still intact in the ring (the gate, see ``ring.gate``)."""
        return self._slowest_attached()

    def gating_readers(self) -> list[tuple[int, int]]:
        """``(slot, read_seq)`` of every attached reader (the stall check watches them)."""
        words = self.words
        return [
            (i, int(words[_LINE * (2 + i)])) for i in range(self.n_readers) if words[_LINE * (2 + i) + 1] == ATTACHED
        ]

    def evict(self, slot: int) -> bool:
        """Stop reader ``slot`` gating the writer because it stalled; False if it was not attached."""
        status = _LINE * (2 + slot) + 1
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
        write_seq = words[_W_WRITE_SEQ]
        size = len(data)
        capacity = self.capacity
        if write_seq - self._cached_slowest + size > capacity:
            self._cached_slowest = self._slowest_attached()
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
        words[_W_WRITE_SEQ] = write_seq + take
        return take

    def free_span(self, limit: int) -> memoryview | None:
        """A writable view of up to ``limit`` contiguous free bytes at the write position.

        For reading a socket straight into the ring; ``publish`` makes what was put there
        visible. None when the ring is full. Release the view before ``close``.
        """
        words, area = self.words, self._data
        assert area is not None
        write_seq = int(words[_W_WRITE_SEQ])
        if write_seq - self._cached_slowest + limit > self.capacity:
            self._cached_slowest = self._slowest_attached()
        try:
            plan = ring.plan_write(
                write_seq=write_seq, slowest_read_seq=self._cached_slowest, capacity=self.capacity, size=limit
            )
        except WouldBlock:
            return None
        span = plan.spans[0]
        return area[span.offset : span.offset + span.length]

    def publish(self, size: int) -> None:
        """Publish ``size`` bytes written into the last ``free_span`` (one 8-byte store)."""
        self.words[_W_WRITE_SEQ] = int(self.words[_W_WRITE_SEQ]) + size

    def finish_writing(self, *, broken: bool = False) -> None:
        """Publish the end: EOF (clean) or BROKEN (producer vanished). Idempotent."""
        if self._words is not None and self.state == OPEN:
            self.words[_W_STATE] = BROKEN if broken else EOF

    def break_ring(self) -> None:
        """Mark the ring broken whatever its state (the owner, when a producer's worker died)."""
        if self._words is not None and self.state not in (EOF, CANCELLED):
            self.words[_W_STATE] = BROKEN

    def cancel(self) -> None:
        """Mark the ring cancelled (``DELETE``): readers end with the cancelled ending."""
        if self._words is not None:
            self.words[_W_STATE] = CANCELLED

    def take_watcher_workers(self) -> list[int]:
        """Worker slots with a sleeping watcher of this ring; their flags are cleared."""
        words = self.words
        if not words[_W_WATCHERS]:
            return []
        words[_W_WATCHERS] = 0
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
        self.words[_W_WATCHERS] = 1

    def set_writer_waiting(self) -> None:
        self.words[_W_WRITER_WAITING] = 1

    def take_sleeping_readers(self) -> list[int]:
        """Slots that asked to be woken; their flags are cleared."""
        words = self.words
        if self.n_readers == 1:  # the common token stream: one load, no loop
            if not words[_LINE * 2 + 2]:
                return []
            words[_LINE * 2 + 2] = 0
            return [0]
        slots = []
        for i in range(self.n_readers):
            flag = _LINE * (2 + i) + 2
            if words[flag]:
                words[flag] = 0
                slots.append(i)
        return slots

    def take_sleepers(self) -> tuple[list[int], list[int]] | None:
        """``take_sleeping_readers`` and ``take_watcher_workers`` in one call (the producer
        asks after every publish); None when nobody sleeps."""
        words = self.words
        if self.n_readers == 1:
            slots = [0] if words[_LINE * 2 + 2] else []
            if slots:
                words[_LINE * 2 + 2] = 0
        else:
            slots = self.take_sleeping_readers()
        if not words[_W_WATCHERS]:
            return (slots, []) if slots else None
        return slots, self.take_watcher_workers()

    def attached_readers(self) -> int:
        words = self.words
        return sum(1 for i in range(self.n_readers) if words[_LINE * (2 + i) + 1] == ATTACHED)

    # -- reader side --

    def read_nowait(self, slot: int, limit: int) -> bytes:
        """Copy out up to ``limit`` published bytes for reader ``slot``; ``b""`` means clean EOF.

        Raises:
            WouldBlock: nothing new yet; set ``reader_waiting``, re-check, then sleep.
            PeerGone: the producer vanished (or its worker died); end the response broken.
        """
        views, next_seq = self.peek(slot, limit)
        out = b"".join(views)
        for view in views:
            view.release()
        self.commit_read(slot, next_seq)
        return out

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
        state = words[_W_STATE]
        line = _LINE * (2 + slot)
        if state > EOF or words[line + 1] == EVICTED:
            raise _ending(state)
        read_seq = words[line]
        ready = words[_W_WRITE_SEQ] - read_seq
        if ready == 0:
            if state == EOF:
                return [], read_seq
            raise WouldBlock("nothing published")
        capacity = self.capacity
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
        state = words[_W_STATE]
        if state > EOF:
            raise _ending(state)
        write_seq = int(words[_W_WRITE_SEQ])
        oldest = self._slowest_attached()
        if pos < oldest:
            raise Gap(pos, oldest)
        if pos >= write_seq:
            if state == EOF:
                return b""
            raise WouldBlock("nothing published")
        plan = ring.plan_read(read_seq=pos, write_seq=write_seq, capacity=self.capacity, limit=limit)
        out = b"".join([area[s.offset : s.offset + s.length] for s in plan.spans])
        oldest = self._slowest_attached()
        if not ring.held(pos, oldest):
            raise Gap(pos, oldest)
        return out

    def commit_read(self, slot: int, read_seq: int) -> None:
        """Store reader ``slot``'s cursor: the bytes before it may now be overwritten."""
        self.words[_LINE * (2 + slot)] = read_seq

    def set_reader_waiting(self, slot: int) -> None:
        self.words[_LINE * (2 + slot) + 2] = 1

    def arm_reader(self, slot: int) -> bool:
        """Set reader ``slot``'s waiting word, then re-check: True if it may sleep (nothing
        published past its cursor, the ring still open and the reader not evicted)."""
        words = self.words
        line = _LINE * (2 + slot)
        words[line + 2] = 1
        return words[_W_WRITE_SEQ] == words[line] and words[_W_STATE] == OPEN and words[line + 1] != EVICTED

    def commit_read_waking(self, slot: int, read_seq: int) -> bool:
        """``commit_read``, then ``take_writer_waiting``: True if the writer sleeps and must be woken."""
        words = self.words
        words[_LINE * (2 + slot)] = read_seq
        if words[_W_WRITER_WAITING]:
            words[_W_WRITER_WAITING] = 0
            return True
        return False

    def take_writer_waiting(self) -> bool:
        words = self.words
        if words[_W_WRITER_WAITING]:
            words[_W_WRITER_WAITING] = 0
            return True
        return False

    def set_reader_status(self, slot: int, status: int) -> None:
        """Detach or finish a reader: from then on it no longer gates the writer."""
        if self._words is not None:
            self.words[_LINE * (2 + slot) + 1] = status

    # -- metrics words (see the module docstring) --

    def created_ns(self) -> int:
        """CLOCK_MONOTONIC nanoseconds when the owner established the pipe."""
        return int(self.words[_W_CREATED_NS])

    def stamp_latency(self, seq: int, ns: int) -> None:
        """Producer: the bytes before ``seq`` were in the ring at ``ns`` (time first, then seq)."""
        words = self.words
        words[_W_STAMP_NS] = ns
        words[_W_STAMP_SEQ] = seq

    def latency_stamp_seq(self) -> int:
        """The sequence of the latest latency sample (0: none yet)."""
        return int(self.words[_W_STAMP_SEQ])

    def latency_stamp_ns(self) -> int:
        return int(self.words[_W_STAMP_NS])

    def slowest_read_seq(self) -> int:
        """The cursor of the slowest attached reader (``write_seq`` when none is attached)."""
        return self._slowest_attached()

    def set_reader_framing(self, slot: int, code: int) -> None:
        self.words[_LINE * (2 + slot) + _R_FRAMING] = code

    def reader_framing(self, slot: int) -> int:
        return int(self.words[_LINE * (2 + slot) + _R_FRAMING])


def _ending(state: int) -> PeerGone:
    """The error a reader gets from a ring that ended in ``state`` (or its own eviction)."""
    if state == BROKEN:
        return PeerGone("producer vanished")
    if state == CANCELLED:
        return PeerGone("the transfer was cancelled", ending="cancelled")
    return PeerGone("this reader made no progress and was evicted", ending="lagged")
