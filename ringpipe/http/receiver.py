"""The receiver endpoint: a GET or a WebSocket on a pipe path, as a raw ASGI callable.

A receiver's life: validate → ``Join`` → the owner's answer: a refusal (a plain HTTP answer in
every framing, SPEC 2.4), ``Accepted`` (it waits: no response at all, except an SSE reader's
head and pings, a WebSocket's handshake; a reader with nothing to send while it waits, raw or
NDJSON, joins ``quiet`` and is not told) or ``Start`` → its ``Reader`` (``http.readers``, ``http.websocket``:
raw, SSE, NDJSON, WebSocket) relays ring → socket → clean end, or an end that says how the
transfer broke (producer vanished, pipe cancelled, reader evicted; raw: the connection
closed before the last chunk).

A watcher (``?watch=1``) is a receiver without a slot; a receiver with an offset
(``Last-Event-ID``, ``?last_event_id=``, ``?offset=``, ``Range: bytes=N-``) resumes (SPEC 2.4).
An SSE or NDJSON reader whose resume point is no longer held, or belongs to an older pipe on
the path, is never refused for it: it reads from the oldest byte held, after a gap that says
what it lost (``_resume_from``); a raw one gets 410.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import anyio
from starlette.types import Receive, Scope, Send

from ringpipe.core.control_frames import Broken, Start
from ringpipe.core.paths import query_param
from ringpipe.core.rendezvous import Accepted, Cancelled, Reject, Role
from ringpipe.http.readers.base import FRESH_START, Reader, ReadOptions, ReadStart, read_options
from ringpipe.http.readers.encoded import NdjsonReader, SseReader
from ringpipe.http.readers.raw import HttpReader
from ringpipe.http.request_params import (
    ResumePoint,
    can_resume,
    forget_headers,
    header,
    parse_n,
    read_key,
    resume_point,
    stall_ms,
)
from ringpipe.http.responses import OWNER_LOST
from ringpipe.http.websocket import WebSocketReader
from ringpipe.mesh.party import InboxItem
from ringpipe.mesh.relay import Consumer, Slot
from ringpipe.mesh.worker_pipes import Hangup, LocalParty, WorkerPipes
from ringpipe.ops import metrics
from ringpipe.shm import segment

__all__ = ["ReceiverEndpoint"]

#: The options of a reader refused for its options (it is answered in the plain form).
_PLAIN: Final = ReadOptions()
#: Longest we try to tell a reader how its transfer ended (a stalled client may never read it).
FINISH_TIMEOUT_S: Final = 10.0


class ReceiverEndpoint:
    """``GET /p`` (any framing) and WebSocket receivers, bound to one worker's ``WorkerPipes``."""

    def __init__(self, node: WorkerPipes) -> None:
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """A receiver, a watcher (``?watch=1``) or a resuming receiver (an offset)."""
        options = read_options(scope)
        reader = self._reader(scope, receive, send, options if isinstance(options, ReadOptions) else _PLAIN)
        if isinstance(options, str):
            await reader.reject(400, options)
            return
        if header(scope, b"service-worker") == "script":
            await reader.reject(400, "Service Worker registration is rejected.")
            return
        n = parse_n(scope, Role.RECEIVER, self.node.settings.max_receivers)
        if isinstance(n, str):
            await reader.reject(400, n)
            return
        query = scope["query_string"]
        watch = query_param(query, "watch") in ("1", "true")
        point = None if watch else resume_point(scope, takes_gaps=options.takes_gaps)
        stall = stall_ms(scope)
        if isinstance(point, str) or isinstance(stall, str):
            await reader.reject(400, point if isinstance(point, str) else str(stall))
            return
        resumable = point is not None or can_resume(scope)
        party = self.node.open_party(
            path,
            Role.WATCHER if watch else Role.RECEIVER,
            n,
            key=read_key(scope),
            offset=point.offset if point is not None else -1,
            epoch=point.epoch if point is not None else "",
            resumable=resumable,
            stall_ms=stall,
            gaps=options.takes_gaps,
            quiet=type(reader).admitted is Reader.admitted,  # nothing to send on ``Accepted``
        )
        forget_headers(scope)

        plan = _ReadPlan(
            point=point,
            live=watch and query_param(query, "from") == "live",
            resumable=resumable,
            gaps=options.takes_gaps,
        )
        del scope, receive  # read (a WebSocket reader keeps its own): a streaming reader keeps neither
        try:
            async with reader.session(party.hang_up):  # hang-ups are a callback: waiting receivers stay cheap
                # The owner's answers until the transfer starts (waited for here, not in a
                # coroutine of their own: a frame less per waiting receiver).
                start: Start | None = None
                async for item in party.inbox:
                    if isinstance(item, Start):
                        start = item
                        break
                    if not await self._answer_while_waiting(reader, party, item):
                        return
                if start is None:
                    return
                await reader.admitted()
                began = self._begin(reader, plan, start)
                if began is None:  # the sender vanished before we attached
                    with anyio.CancelScope(shield=True):
                        await reader.finish(False)
                    return
                # The transfer runs here, not in a coroutine of its own: a frame less per
                # streaming receiver.
                consumer, begin = began
                completed = False
                try:
                    # Anything in the inbox during the transfer (Broken, Cancelled, Evicted,
                    # Hangup) ends it; the ring then says which ending (``Consumer.ending``).
                    ends = _EndOnItem()
                    party.inbox.on_item(ends)
                    try:
                        completed = await reader.relay(consumer, start, begin)
                    except asyncio.CancelledError:
                        if not ends.taken_back():
                            raise  # cancelled from outside (too)
                    finally:
                        party.inbox.on_item(None)
                        if ends.pending:
                            await ends.absorb()
                finally:
                    ending = self._end(reader, party, plan, start, consumer, completed)
                    if reader.finish_needed(completed):
                        with anyio.CancelScope(shield=True), anyio.move_on_after(FINISH_TIMEOUT_S):
                            await reader.finish(completed, ending)  # a stalled client must not hold us
        finally:
            if not party.left:
                self.node.leave(party, completed=False)

    def _reader(self, scope: Scope, receive: Receive, send: Send, options: ReadOptions) -> Reader:
        """The reader for the request's framing (``ReadOptions.format``)."""
        if scope["type"] == "websocket":
            return WebSocketReader(scope, receive, send, options)
        worker, heartbeat = self.node.index, self.node.settings.heartbeat
        if options.format == "sse":
            return SseReader(scope, send, options, worker=worker, heartbeat=heartbeat)
        if options.format == "ndjson":
            return NdjsonReader(scope, send, options, worker=worker, heartbeat=heartbeat)
        return HttpReader(scope, send, worker=worker, heartbeat=heartbeat)

    async def _answer_while_waiting(self, reader: Reader, party: LocalParty, item: InboxItem) -> bool:
        """Answer an inbox item that came before the transfer's start; False: the receiver's
        life is over (refused or cancelled, and answered so, or it hung up)."""
        if isinstance(item, Accepted):
            await reader.admitted()
            return True
        if isinstance(item, Reject):
            self.node.leave(party, completed=False)
            await reader.reject(item.status, item.message)
            return False
        if isinstance(item, Cancelled):
            self.node.leave(party, completed=False)
            await reader.cancelled_while_waiting(f"The transfer on '{party.path}' was cancelled.")
            return False
        if isinstance(item, Broken):
            self.node.leave(party, completed=False)
            await reader.reject(503, OWNER_LOST)
            return False
        return not isinstance(item, Hangup)

    def _begin(self, reader: Reader, plan: _ReadPlan, start: Start) -> tuple[Consumer, ReadStart] | None:
        """The reader's consumer of the ring, and where it starts; None if the ring is gone
        (the sender vanished before we attached)."""
        try:
            ring = segment.RingSegment.attach(start.relay.segment)
        except FileNotFoundError:
            return None
        watcher = start.slot == Slot.WATCHER
        first: int | None = None
        lost: tuple[int, int] | None = None
        if plan.point is not None:
            first, lost = _resume_from(plan.point, ring, start.relay.epoch) if plan.gaps else (plan.point.offset, None)
        elif watcher and plan.live:
            first = ring.write_seq
        elif plan.resumable and not watcher:
            # A reloaded page takes back a dropped reader's slot from the oldest byte held
            # (at a fresh start that is the slot's own cursor, 0).
            first = ring.oldest_held()
        consumer = Consumer(
            self.node,
            ring,
            start.relay,
            start.slot,
            start=first,
            continue_gaps=plan.gaps,
            worker=self.node.index,
        )
        if watcher:
            metrics.watcher_started()
        else:
            metrics.reader_started(_framing_of(reader), consumer)
        begin = FRESH_START
        if watcher or plan.point is not None:
            begin = ReadStart(
                watcher=watcher,
                resumed=plan.point is not None,
                by_range=plan.point is not None and plan.point.by_range,
                lost=lost,
                aligned=plan.point is not None and bool(plan.point.epoch) and lost is None,
            )
        return consumer, begin

    def _end(
        self, reader: Reader, party: LocalParty, plan: _ReadPlan, start: Start, consumer: Consumer, completed: bool
    ) -> str | None:
        """Leave the ring and the pipe after the relay; how the transfer ended (None: done,
        or unknown)."""
        watcher = start.slot == Slot.WATCHER
        ending = None if completed else consumer.ending()
        if watcher:
            metrics.watcher_ended()
        else:
            metrics.reader_ended(_framing_of(reader))
        if ending == "lagged":
            metrics.evicted("window" if watcher else "stall")
        if completed:
            consumer.leave(segment.DONE)
        elif not (plan.resumable and ending is None):  # a resumable drop keeps gating (grace)
            consumer.leave(segment.DETACHED)
        self.node.leave(party, completed=completed)
        consumer.close()
        return ending


class _EndOnItem:
    """The inbox callback that ends a receiver's transfer: it cancels the receiver's task,
    once, with plain asyncio cancellation (an anyio ``CancelScope`` costs each streaming
    receiver ~0.7 KiB and a few calls to enter and leave).

    One ``cancel`` is enough: the readers' relays never swallow a ``CancelledError``, so it
    ends the relay at the await it is suspended at. The receiver takes its own cancellation
    back (``taken_back``), exactly as a cancel scope swallows its own, and passes any other
    on. ``pending``: it fired but the relay ended before the cancellation reached it (it
    never suspended after that), so ``absorb`` must take it at the next await.
    """

    __slots__ = ("_task", "fired", "pending")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.fired = False
        self.pending = False

    def __call__(self) -> None:
        if not self.fired:
            self.fired = self.pending = True
            self._task.cancel()

    def taken_back(self) -> bool:
        """A ``CancelledError`` reached the relay: True if it was only ours (swallow it)."""
        if not self.pending:
            return False
        self.pending = False
        return self._task.uncancel() == 0

    async def absorb(self) -> None:
        """Take back a cancellation of ours that is still on its way (see the class)."""
        self.pending = False
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            if self._task.uncancel():
                raise
        else:  # it was delivered elsewhere meanwhile: only the count is left to undo
            self._task.uncancel()


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """What a receiver asked for besides its path and framing: a resume point, a live start
    (watchers), resumability (its slot is held for ``reconnect_grace`` when it drops), and
    whether it takes gaps (SSE, NDJSON: lost bytes are reported, never a refusal or a cut)."""

    point: ResumePoint | None
    live: bool
    resumable: bool
    gaps: bool


def _resume_from(point: ResumePoint, ring: segment.RingSegment, epoch: str) -> tuple[int, tuple[int, int] | None]:
    """Where a reader that takes gaps resumes in pipe ``epoch``, and the range it lost (None: none).

    Its offset if this pipe still holds it; else the oldest byte held, after losing
    ``[offset, oldest)``, or ``[0, oldest)`` where the point is of another pipe (another
    epoch, a foreign event id, an offset this pipe never reached).
    """
    oldest, head = ring.oldest_held(), ring.write_seq
    if point.foreign or (point.epoch and point.epoch != epoch) or point.offset > head:
        return oldest, (0, oldest)
    if point.offset < oldest:
        return oldest, (point.offset, oldest)
    return point.offset, None


def _framing_of(reader: Reader) -> str:
    """The metrics label of a reader's framing (``metrics.FRAMINGS``)."""
    if isinstance(reader, WebSocketReader):
        return "websocket"
    if isinstance(reader, SseReader):
        return "sse"
    if isinstance(reader, NdjsonReader):
        return "ndjson"
    return "raw"
