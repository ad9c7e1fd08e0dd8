"""One live relay as seen from one worker: the producer (body → ring) and consumers (ring → socket).

Backpressure is "don't read more": bytes that do not fit in the ring wait in ``Ingest.pending``
(``ingest.py``: at most one socket read) and the sender's socket is not read until they are
in, so TCP slows the uploader. A consumer commits its ``read_seq`` only once the kernel has
the bytes it sent from the ring, so a receiver whose socket is backed up holds the writer back.

Wait strategy: a side that finds nothing to do sets its *waiting* word in the ring header,
re-checks, and sleeps on a local future (``sleeper.py``). The other side wakes it after
publishing, locally if both live in this worker, else with a datagram (``wakeup.py``).
Because a wake-up can in theory be missed (see ``segment.py``), every sleep has a timeout
that backs off from 0.1 s to 1 s: a missed wake costs latency, never a hang, and an idle
relay wakes at most once a second.
"""

from __future__ import annotations

import logging
import time
from enum import IntEnum
from typing import TYPE_CHECKING, Final, Protocol

from ringpipe.core.control_frames import RelayInfo
from ringpipe.core.errors import Gap, PeerGone, WouldBlock
from ringpipe.mesh.sleeper import Sleeper
from ringpipe.ops import metrics
from ringpipe.shm import segment
from ringpipe.shm.layout import W_WATCHERS, W_WRITE_SEQ
from ringpipe.shm.segment import RingSegment

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("ringpipe.relay")

__all__ = [
    "RAW_READ_LIMIT",
    "READ_LIMIT",
    "Consumer",
    "DirectSink",
    "Producer",
    "Slot",
    "WakeRouter",
]

#: Bytes one consumer copies out per ``send()``: large enough to amortize per-chunk cost,
#: small enough that a reader holds little outside the ring.
READ_LIMIT: Final = 256 * 1024
#: Bytes a zero-copy raw reader may take per round (``views(RAW_READ_LIMIT)``): nothing is
#: copied, so one ``writev`` can hand the kernel all that is published (a default ring's
#: worth), which halves the syscalls and the receiver's wake-ups per MB of a bulk transfer
#: compared with ``READ_LIMIT``. Readers that copy (watchers, SSE/NDJSON) keep ``READ_LIMIT``.
RAW_READ_LIMIT: Final = 1024 * 1024


class Slot(IntEnum):
    """The slots (``Start.slot``, wake-ups) that name no reader cursor; readers are 0 .. n-1.

    All of one worker's watchers of a ring share ``WATCHER``: they read without a cursor
    and are woken together.
    """

    WRITER = -1
    WATCHER = -2


class DirectSink(Protocol):
    """A reader in the producer's own worker that takes the producer's bytes straight from
    its data callback (see ``Producer.offer``): no wake-up, no read of the ring."""

    def deliver(self, data: bytes | bytearray | memoryview, size: int, end_seq: int) -> bool:
        """``data`` (``size`` bytes) was just published and ends at ``end_seq``: send it now
        if this reader can (caught up exactly to its start, its task asleep, its socket
        free), commit its cursor to ``end_seq`` and return True; else return False, having
        done nothing."""
        ...


class WakeRouter(Protocol):
    """Delivers a wake-up to ring ``info``'s ``slot``, wherever it lives."""

    #: This worker's index (a ring's ``RelayInfo`` names the worker of each party).
    index: int

    def wake(self, info: RelayInfo, slot: int) -> None: ...

    def wake_many(self, info: RelayInfo, slots: list[int]) -> None: ...

    def wake_watchers(self, info: RelayInfo, workers: list[int]) -> None: ...

    def register(self, segment: str, slot: int, callback: Callable[[], None]) -> None: ...

    def unregister(self, segment: str, slot: int, callback: Callable[[], None] | None = None) -> None: ...

    def direct_sinks(self, segment: str) -> list[DirectSink]:
        """The list, shared by this worker's producer and readers of ring ``segment``, of
        readers that take the producer's bytes directly (made on first use)."""
        ...

    def drop_direct_sinks(self, segment: str, sinks: list[DirectSink]) -> None:
        """Forget ``segment``'s list if it is ``sinks`` (its producer is gone, or it is empty)."""
        ...


class _Endpoint:
    """A producer's or a reader's side of a ring in this worker (slotted, as the subclasses:
    a held stream keeps one of each for its life)."""

    __slots__ = ("info", "ring", "router", "sleeper", "slot")

    def __init__(
        self, router: WakeRouter, ring: RingSegment, info: RelayInfo, slot: int, *, patient: bool = False
    ) -> None:
        self.router = router
        self.ring = ring
        self.info = info
        self.slot = slot
        self.sleeper = Sleeper(patient=patient)
        router.register(info.segment, slot, self._on_wake)

    def _on_wake(self) -> None:
        self.sleeper.wake()

    def close(self) -> None:
        self.router.unregister(self.info.segment, self.slot, self._on_wake)
        self.ring.close()


class Producer(_Endpoint):
    """Writes one sender's body into the ring.

    Stall eviction (SPEC 2.5): while ``write`` waits for room, it notes when each attached
    reader's cursor last moved; a reader that holds the writer back (its cursor is the
    gate) and has not moved for ``stall_s`` seconds is evicted: its slot stops gating the
    writer (``RingSegment.evict``) and ``on_stall(slot)`` tells the owner, which ends that
    reader with the ``lagged`` ending. ``stall_s`` 0 never evicts.
    """

    __slots__ = ("_progress", "bytes_written", "meter", "on_stall", "sinks", "stall_s")

    def __init__(
        self,
        router: WakeRouter,
        ring: RingSegment,
        info: RelayInfo,
        *,
        stall_s: float = 0.0,
        on_stall: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(router, ring, info, Slot.WRITER)
        self.bytes_written = 0
        self.stall_s = stall_s
        self.on_stall = on_stall
        #: slot -> (its read_seq, when it was first seen there) while the writer waits; made
        #: by the first wait that checks for stalls (a token stream's writer never waits).
        self._progress: dict[int, tuple[int, float]] | None = None
        self.meter = metrics.ProducerMeter(ring)
        #: Readers of this ring in this worker that take ``offer``'s bytes directly.
        self.sinks = router.direct_sinks(info.segment)

    def offer(self, data: bytes | bytearray | memoryview) -> int:
        """Put as much of ``data`` in the ring as fits now; return how much (0 if full).

        When every reader of the ring is a ``DirectSink`` here and takes the bytes (the
        token stream's common case: its readers caught up and asleep in this worker), they
        go to the readers' sockets from right here, from ``data`` itself: no wake-up
        callback, no ``peek`` of the ring. A reader that cannot take them is woken as usual.
        """
        ring = self.ring
        try:
            written = ring.write_nowait(data)
        except WouldBlock:
            return 0
        self.bytes_written += written
        sinks = self.sinks
        if not sinks or written != len(data):
            self._wake_readers()
            return written
        end_seq = ring.words[W_WRITE_SEQ]
        served = 0
        for sink in sinks:
            if sink.deliver(data, written, end_seq):
                served += 1
        if served != ring.n_readers:
            self._wake_readers(handed_to=end_seq if served else None)
            return written
        meter = self.meter  # ``_wake_readers`` for readers that need no wake-up
        if time.monotonic_ns() >= meter.due_ns:
            meter.published()
        if ring.words[W_WATCHERS]:
            self._wake_watchers()
        return written

    def free_span(self, limit: int) -> memoryview | None:
        """Room to read a socket into (see ``RingSegment.free_span``); None when full."""
        return self.ring.free_span(limit)

    def publish(self, size: int) -> None:
        """Make ``size`` bytes put into the last ``free_span`` visible to the readers."""
        self.ring.publish(size)
        self.bytes_written += size
        self._wake_readers()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Put all of ``data`` in the ring, waiting for room as long as it takes."""
        view = memoryview(data)
        ring = self.ring
        while view:
            try:
                written = ring.write_nowait(view)
            except WouldBlock:
                ring.set_writer_waiting()
                try:  # re-check after announcing the sleep: a reader may have just moved
                    written = ring.write_nowait(view)
                except WouldBlock:
                    written = -1
            if written < 0:  # sleep outside the ``except``: it would keep the exceptions alive
                await self.sleeper.sleep()
                if self.stall_s > 0:
                    self._evict_stalled(time.monotonic())
                continue
            self.sleeper.progressed()
            if self._progress:
                self._progress.clear()
            view = view[written:]
            self.bytes_written += written
            self._wake_readers()

    def _evict_stalled(self, now: float) -> None:
        """Evict each reader that gates the writer and has not moved for ``stall_s``."""
        cursors = self.ring.gating_readers()
        if not cursors:
            return
        slowest = min(seq for _slot, seq in cursors)
        progress = self._progress
        if progress is None:
            progress = self._progress = {}
        for slot, seq in cursors:
            seen = progress.get(slot)
            if seen is None or seen[0] != seq:
                progress[slot] = (seq, now)
            elif seq == slowest and now - seen[1] >= self.stall_s and self.ring.evict(slot):
                log.info("receiver evicted", extra={"slot": slot, "stalled_s": round(now - seen[1], 3)})
                del progress[slot]
                self.router.wake(self.info, slot)
                if self.on_stall is not None:
                    self.on_stall(slot)

    def finish(self, *, broken: bool = False) -> None:
        """Publish EOF (or a break) and wake every reader and watcher to see it."""
        self.ring.finish_writing(broken=broken)
        for slot in range(self.ring.n_readers):
            self.router.wake(self.info, slot)
        self._wake_watchers()

    def close(self) -> None:
        self.meter.close()
        self.router.drop_direct_sinks(self.info.segment, self.sinks)
        super().close()

    def _wake_readers(self, handed_to: int | None = None) -> None:
        """After a publish: wake the readers and watchers that sleep (their words say so).

        ``handed_to``: some readers already took the bytes up to there directly (``offer``);
        those keep sleeping, their waiting words still set.
        """
        meter = self.meter
        if time.monotonic_ns() >= meter.due_ns:
            meter.published()
        ring = self.ring
        sleepers = ring.take_sleepers()
        if sleepers is not None:
            slots, workers = sleepers
            if handed_to is not None and slots:
                served = [slot for slot in slots if ring.read_seq(slot) == handed_to]
                for slot in served:
                    ring.set_reader_waiting(slot)
                slots = [slot for slot in slots if slot not in served]
            if slots:
                self.router.wake_many(self.info, slots)
            if workers:
                self.router.wake_watchers(self.info, workers)

    def _wake_watchers(self) -> None:
        workers = self.ring.take_watcher_workers()
        if workers:
            self.router.wake_watchers(self.info, workers)


class Consumer(_Endpoint):
    """Reads the ring for one receiver (reader ``slot``) or one watcher (``Slot.WATCHER``).

    A receiver reads in lockstep: its cursor in the ring header gates the writer, and
    ``views`` hands out views of the ring itself. A watcher, and a receiver that resumed
    behind its slot's cursor (``start``), read *behind*: from a position kept here, by
    copying bytes out and checking they were still held (``RingSegment.read_behind``);
    such a receiver switches to lockstep once it reaches its slot's cursor.

    ``continue_gaps`` (watchers in SSE/NDJSON, SPEC 2.4): falling out of the replay window
    raises ``Gap`` and continues from the oldest held byte; otherwise it is ``PeerGone``
    with the ``lagged`` ending.
    """

    __slots__ = (
        "_pos",
        "bytes_read",
        "continue_gaps",
        "express",
        "in_lockstep",
        "meter",
        "moved",
        "satisfied",
        "worker",
    )

    def __init__(
        self,
        router: WakeRouter,
        ring: RingSegment,
        info: RelayInfo,
        slot: int,
        *,
        start: int | None = None,
        continue_gaps: bool = False,
        worker: int | None = None,
    ) -> None:
        """``start``: the pipe offset to begin at (resume; a watcher's default is the oldest
        byte held). ``worker``: this worker's index (watchers and resumed receivers need it
        for wake-ups)."""
        # A receiver in its producer's worker cannot miss the producer's wake-ups (``Sleeper``).
        local = 0 <= slot < len(info.readers) and info.readers[slot] == info.producer
        super().__init__(router, ring, info, slot, patient=local and (worker is None or worker == info.producer))
        self.bytes_read = 0
        self.continue_gaps = continue_gaps
        self.worker = 0 if worker is None else worker
        #: A receiver that resumed on another worker than its slot's: the writer's wake-ups
        #: for the slot go to the old worker, so it also sleeps as a watcher of its worker.
        self.moved = worker is not None and 0 <= slot < len(info.readers) and info.readers[slot] != worker
        if self.moved:
            router.register(info.segment, Slot.WATCHER, self.sleeper.wake)
        #: The position of a reader that reads behind (watcher, catching-up receiver), else None.
        self._pos: int | None = None
        if slot == Slot.WATCHER:
            self._pos = ring.oldest_held() if start is None else start
        elif start is not None:
            if start < ring.read_seq(slot):
                self._pos = start
            elif start > ring.read_seq(slot):
                ring.commit_read(slot, start)
        #: Whether ``peek``/``commit`` on the ring cursor are this reader's next step (not a
        #: watcher, not catching up, not moved to another worker than its slot's). Kept up to
        #: date where ``_pos`` changes: the wake-up callback asks on every token.
        self.in_lockstep = self._pos is None and slot >= 0 and not self.moved
        #: Metrics of this reader; the transfer's time to first byte is a fresh receiver's only.
        self.meter = metrics.ReaderMeter(ring, self.offset, first_byte=start is None and slot != Slot.WATCHER)
        #: Set by a reader that can send from inside the wake-up callback (see ``_on_wake``).
        self.express: Callable[[], bool] | None = None
        #: Set by ``express`` when this reader needs no more bytes (its Content-Length is
        #: sent): ``views`` then reports the end at once instead of waiting for the producer's.
        self.satisfied = False

    def _on_wake(self) -> None:
        """A wake-up for this reader: serve it right here when the reader can, else wake its task.

        When the reader's task sleeps in ``views`` waiting for bytes, ``express`` (set by
        the reader) sends what was published from inside this callback, the producer's
        read callback or the wake-up datagram's, and returns True if the task may keep
        sleeping: no task switch per reader per chunk. Anything else (an ending, a full
        socket, an error) returns False and the task handles it as before.
        """
        express = self.express
        if express is not None:
            future = self.sleeper.future  # ``parked``, inlined: this runs per token
            if future is not None and not future.done() and express():
                return
        self.sleeper.wake()

    def take_directly(self, sink: DirectSink) -> list[DirectSink] | None:
        """Offer ``sink`` to this worker's producer of the ring (``Producer.offer``); the list
        it joined (give it to ``stop_taking_directly``), or None where that cannot be: the
        producer is in another worker, or this is not a reader slot of this worker."""
        if self.slot < 0 or self.moved or self.info.producer != self.router.index:
            return None
        sinks = self.router.direct_sinks(self.info.segment)
        sinks.append(sink)
        return sinks

    def stop_taking_directly(self, sinks: list[DirectSink], sink: DirectSink) -> None:
        if sink in sinks:
            sinks.remove(sink)
        if not sinks:
            self.router.drop_direct_sinks(self.info.segment, sinks)

    def rearm(self) -> bool:
        """Ask the writer for the next wake-up; True if nothing was published meanwhile and
        the transfer goes on (the same announce-then-re-check as ``views`` does before it
        sleeps)."""
        return self.ring.arm_reader(self.slot)

    async def views(self, limit: int = READ_LIMIT) -> tuple[list[memoryview], int]:
        """Views of the next published bytes (at most ``limit``; a reader that reads behind
        copies at most ``READ_LIMIT``) and the cursor to ``commit`` after sending them.

        No views means a clean end. The views alias the ring: release them before
        ``commit`` (which lets the writer reuse the space).

        Raises:
            PeerGone: the transfer ended other than cleanly; ``ending`` says how
                (aborted, cancelled, lagged). End the response visibly broken.
            Gap: (watchers with ``continue_gaps`` only) bytes were lost; the cursor is
                past them already: report the gap and call ``views`` again.
        """
        if self._pos is not None:
            return await self._views_behind(self._pos)
        ring, slot, sleeper = self.ring, self.slot, self.sleeper
        while True:
            if self.satisfied:
                return [], self.offset
            got = _peek(ring, slot, limit)
            if got is not None:
                return got
            ring.set_reader_waiting(slot)
            if self.moved:
                ring.set_watcher_waiting(self.worker)
            got = _peek(ring, slot, limit)
            if got is not None:
                return got
            # ``sleeper.sleep()``, awaited here: a coroutine less under every waiting reader.
            future = sleeper.park()
            if future is not None:
                woken = None
                try:
                    woken = await future
                finally:
                    sleeper.unpark(woken)

    async def _views_behind(self, pos: int) -> tuple[list[memoryview], int]:
        ring = self.ring
        while True:
            try:
                try:
                    data = ring.read_behind(pos, READ_LIMIT)
                except WouldBlock:
                    ring.set_watcher_waiting(self.worker)
                    try:
                        data = ring.read_behind(pos, READ_LIMIT)
                    except WouldBlock:
                        data = None
                if data is None:  # sleep outside the ``except``: it would keep the exceptions alive
                    await self.sleeper.sleep()
                    continue
            except Gap as gap:
                if not self.continue_gaps:
                    raise PeerGone("this reader fell out of the replay window", ending="lagged") from None
                self._pos = gap.lost_to
                raise
            if not data:
                return [], pos
            return [memoryview(data)], pos + len(data)

    def ending(self) -> str | None:
        """How the transfer ended for this reader if not cleanly (see ``errors.ENDINGS``), else None."""
        ring = self.ring
        state = ring.state
        if state == segment.CANCELLED:
            return "cancelled"
        if self.slot >= 0 and ring.reader_status(self.slot) == segment.EVICTED:
            return "lagged"
        if state == segment.BROKEN:
            return "aborted"
        return None

    async def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes from the ring (a header block), consumed.

        Raises:
            PeerGone: the producer vanished, or ended before ``size`` bytes.
        """
        out = bytearray()
        while len(out) < size:
            views, next_seq = await self.views()
            if not views:
                raise PeerGone("the producer ended inside a header block")
            want = size - len(out)
            available = sum(map(len, views))
            taken = 0
            for view in views:
                part = view[: want - taken]
                out += part
                taken += len(part)
                part.release()
                view.release()
            self.commit(next_seq if taken == available else self.offset + taken, taken)
        return bytes(out)

    @property
    def offset(self) -> int:
        """The pipe offset of the next byte this reader will get (bytes of the ring before it,
        a multipart header block included)."""
        return self._pos if self._pos is not None else self.ring.read_seq(self.slot)

    def commit(self, read_seq: int, size: int) -> None:
        """``size`` bytes up to ``read_seq`` are sent: free them and wake a waiting writer."""
        self.meter.sent(read_seq)
        self.bytes_read += size
        self.sleeper.progressed()
        ring = self.ring
        if self._pos is not None:
            self._pos = read_seq
            if self.slot >= 0 and read_seq >= ring.read_seq(self.slot):
                self._pos = None  # caught up with the slot's cursor: lockstep from here
                self.in_lockstep = not self.moved
            else:
                return
        if ring.commit_read_waking(self.slot, read_seq):
            self.router.wake(self.info, Slot.WRITER)

    def close(self) -> None:
        self.meter.close(self.offset)  # idempotent: also counts a resumable drop's bytes
        if self.moved:
            self.router.unregister(self.info.segment, Slot.WATCHER, self.sleeper.wake)
        super().close()

    def leave(self, status: int) -> None:
        """Stop gating the writer (detached or done) and let a sleeping writer re-check."""
        self.meter.close(self.offset)
        if self.slot >= 0:
            self.ring.set_reader_status(self.slot, status)
            self.router.wake(self.info, Slot.WRITER)


def _peek(ring: RingSegment, slot: int, limit: int) -> tuple[list[memoryview], int] | None:
    """``ring.peek``; None for nothing published yet (``WouldBlock``). Caught here, the
    exception never passes through the waiting reader's coroutine, whose frame it would
    make into an object (~0.2 KiB) kept for as long as the reader waits."""
    try:
        return ring.peek(slot, limit)
    except WouldBlock:
        return None
