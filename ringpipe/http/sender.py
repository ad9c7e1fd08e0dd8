"""The sender endpoint: a POST or PUT on a pipe path, as a raw ASGI callable.

A sender's life: validate → ``Join`` the owner → (waiting: log lines, hang-up watched with
``EPOLLRDHUP``, body untouched) → ``Start`` → pump the body into the ring while the owner's
notes become log lines (``sender_log.SenderLog``) → ``Finish`` ends the log. Raw ASGI, not a
Starlette endpoint, because chunk sizes and flow control matter here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import anyio
from starlette.types import Message, Receive, Scope, Send

from ringpipe.core.control_frames import Broken, Start
from ringpipe.core.multipart import FirstPart, boundary_of
from ringpipe.core.rendezvous import (
    Accepted,
    Cancelled,
    Finish,
    ReceiverAborted,
    ReceiverConnected,
    ReceiverEvicted,
    Reject,
    Role,
)
from ringpipe.http.connection import EXTENSION, Connection
from ringpipe.http.hangup import HangupWatcher
from ringpipe.http.request_params import forget_headers, header, parse_n, read_key, receiver_headers, stall_ms
from ringpipe.http.responses import OWNER_LOST, reject
from ringpipe.http.sender_log import SenderLog
from ringpipe.mesh.ingest import Ingest
from ringpipe.mesh.party import InboxItem
from ringpipe.mesh.relay import Producer
from ringpipe.mesh.worker_pipes import Hangup, LocalParty, WorkerPipes
from ringpipe.shm import segment

__all__ = ["SenderEndpoint"]

log = logging.getLogger("ringpipe.edge")

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class SenderEndpoint:
    """``POST``/``PUT /p`` bound to one worker's ``WorkerPipes``; a waiting sender's hang-up is
    noticed by ``hangups`` (its body is left untouched until the transfer starts)."""

    def __init__(self, node: WorkerPipes, hangups: HangupWatcher) -> None:
        self.node = node
        self.hangups = hangups

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if header(scope, b"content-range") is not None:
            await reject(send, 400, f"Content-Range is not supported for now in {scope['method']}", close=True)
            return
        n = parse_n(scope, Role.SENDER, self.node.settings.max_receivers)
        if isinstance(n, str):
            await reject(send, 400, n, close=True)
            return
        stall = stall_ms(scope)
        if isinstance(stall, str):
            await reject(send, 400, stall, close=True)
            return
        conn: Connection = scope["extensions"][EXTENSION]
        party = self.node.open_party(path, Role.SENDER, n, receiver_headers(scope), key=read_key(scope), stall_ms=stall)
        expects_continue = (header(scope, b"expect") or "").lower() == "100-continue"
        boundary = boundary_of(header(scope, b"content-type"))
        forget_headers(scope)
        out = SenderLog(
            send,
            http10=scope.get("http_version") == "1.0",
            worker=self.node.index,
            late=self.node.settings.sender_response == "late",
            conn=conn,
        )
        del scope, receive  # read: a held upload keeps neither (the scope, its headers: ~1 KiB)
        fd = conn.fileno()
        # The owner's answers until the transfer starts, waited for here (not in a coroutine
        # of their own: a frame less per waiting sender). The hang-up is watched from the
        # first wait for receivers on: until the owner's first answer (a loop turn, or a
        # control frame's round trip) nothing is owed to a client that left, and a sender
        # that starts at once never needs the two epoll calls. The watch is level-triggered:
        # a hang-up before it is reported at once.
        start: Start | None = None
        watching = False
        try:
            try:
                async for item in party.inbox:
                    if isinstance(item, Start):
                        start = item
                        break
                    if not await self._answer_while_waiting(send, conn, party, out, item, expects_continue):
                        break
                    if not watching and not party.inbox.ready():
                        self.hangups.watch(fd, party.hang_up)
                        watching = True
            finally:
                if watching:
                    self.hangups.unwatch(fd)
            upload = None if start is None else await self._begin(conn, party, out, start, boundary)
            if upload is not None:  # (run outside ``_begin``: one coroutine frame less per held upload)
                await upload.run()
        finally:
            if not party.left:
                self.node.leave(party, completed=False)

    async def _answer_while_waiting(
        self, send: Send, conn: Connection, party: LocalParty, out: SenderLog, item: InboxItem, expects_continue: bool
    ) -> bool:
        """Answer an inbox item that came before the transfer's start; False: the sender's life
        is over (refused or cancelled, and answered so, or it hung up)."""
        if isinstance(item, Accepted):
            if expects_continue:
                conn.write_raw(CONTINUE)
                conn.continue_sent()
            opening = [f"[INFO] Waiting for {item.n} receiver(s)..."]
            if item.connected is not None:
                opening.append(f"[INFO] {item.connected} receiver(s) has/have been connected.")
            # A Start (or refusal) already here is answered before we next wait:
            # the head and opening lines go out with its line.
            await out.start(*opening, more_coming=party.inbox.ready())
        elif isinstance(item, ReceiverConnected):
            await out.line("[INFO] A receiver was connected.", more_coming=party.inbox.ready())
        elif isinstance(item, Cancelled):
            self.node.leave(party, completed=False)
            await _cancelled_log(send, conn, out, party.path)
            return False
        elif isinstance(item, (Reject, Broken)):
            status, message = (item.status, item.message) if isinstance(item, Reject) else (503, OWNER_LOST)
            self.node.leave(party, completed=False)
            if out.started:
                await _fail_log(out, conn, message)
            else:
                await reject(send, status, message, close=True)
            return False
        elif isinstance(item, Hangup):
            log.info("waiting sender left", extra={"path": party.path})
            await conn.abort()
            return False
        return True

    async def _begin(
        self, conn: Connection, party: LocalParty, out: SenderLog, start: Start, boundary: bytes | None
    ) -> _Upload | None:
        """Start the transfer; the upload to run, or None if it failed to start (logged)."""
        n = len(start.relay.readers)
        await out.line(f"[INFO] Start sending to {n} receiver(s)!")
        try:
            ring = segment.RingSegment.attach(start.relay.segment)
        except FileNotFoundError:  # every receiver left before we could start
            await _fail_log(out, conn, "All receivers left before the transfer started.")
            return None
        return _Upload(self.node, conn, party, out, ring, start, boundary)


class _Upload:
    """A running upload: the body flows into the ring while the owner's notes become log lines.

    One loop (``run``, in the request's task) serves both sides: the inbox, and the end of
    the body. A token stream's body never waits for ring room: the parser's callbacks put
    it in the ring (``Ingest.feed``), and the loop only hears that it ended or vanished,
    and logs that itself. Only a body that has to wait for room (``Ingest.pending``: a
    bulk upload, a slow reader) gets a pump (``pump``, a bare task running ``Ingest.run``),
    from then on to its end, and the loop goes on serving the inbox meanwhile
    (``_UploadIngest`` wakes the loop for these changes of the body). So a task, and its
    coroutines (~1 KiB a held upload keeps), is only spent where the body really waits.

    The pump and the loop stop each other as a task group's members would, and the loop
    waits for the pump at the end; but the pump is stopped with plain asyncio cancellation
    (an anyio task group costs each held upload ~2 KiB more, a cancel scope ~0.7 KiB), and
    the end of the body (either way) ends the loop by leaving the pipe or by ``broken``.
    One slotted object holds what both share, where closures over the request's locals
    cost each held upload a cell per variable and a function object per closure.
    """

    __slots__ = (
        "body_done",
        "broken",
        "conn",
        "eof",
        "failing",
        "ingest",
        "node",
        "out",
        "party",
        "producer",
        "stall_ms",
        "task",
        "uploaded",
        "vanished",
        "wake",
    )

    def __init__(
        self,
        node: WorkerPipes,
        conn: Connection,
        party: LocalParty,
        out: SenderLog,
        ring: segment.RingSegment,
        start: Start,
        boundary: bytes | None,
    ) -> None:
        self.node = node
        self.conn = conn
        self.party = party
        self.out = out
        self.stall_ms = start.relay.stall_ms
        self.producer = Producer(
            node, ring, start.relay, stall_s=self.stall_ms / 1000, on_stall=_StallReport(node, party)
        )
        #: The producer's clean end is in the ring.
        self.eof = False
        #: The sender's client vanished (or sent a malformed body) before its end.
        self.vanished = False
        #: The pump is logging why the upload failed: it is not cancelled.
        self.failing = False
        #: The end of the body was logged (``uploaded``: as a success), whatever its end.
        self.body_done = False
        self.uploaded = False
        #: The pump failed: the loop stops too.
        self.broken = False
        #: Set by an inbox item, a change of the body, the pump's end (the loop's one wait).
        self.wake = _Wake()
        self.task: asyncio.Task[None] | None = None
        first_part = FirstPart(boundary) if boundary else None
        self.ingest = _UploadIngest(self.producer, conn, self.wake, first_part=first_part)
        conn.divert_body(self.ingest)  # from here on the body flows into the ring

    def stop(self) -> None:
        if self.task is not None and not self.failing:
            self.task.cancel()

    async def _body_end(self, moved: bool) -> None:
        """The body's end: ``moved`` all into the ring (log it), or vanished first."""
        out = self.out
        try:
            if not moved:
                self.vanished = self.failing = True
                self.producer.finish(broken=True)
                self.node.leave(self.party, completed=False)  # the loop ends
                error = self.ingest.error
                if error is not None and not self.conn.lost.is_set():  # malformed, not gone
                    await _fail_log(out, self.conn, error, 400)
                return
            self.producer.finish()
            self.eof = True
            await out.line("[INFO] Sent successfully!")
            await out.body_read()
            self.uploaded = True
        finally:
            self.body_done = True

    async def pump(self) -> None:
        try:
            await self._body_end(await self.ingest.run())
        except BaseException:
            self.broken = True  # the loop stops too
            raise
        finally:
            self.wake.set()

    async def run(self) -> None:
        """The loop (see the class), with the pump beside it if one starts; returns once both
        have ended."""
        out, conn, party, producer, ingest = self.out, self.conn, self.party, self.producer, self.ingest
        wake, inbox = self.wake, party.inbox
        inbox.on_item(wake.set)
        cancelled = False
        try:
            try:
                while True:
                    wake.clear()
                    if self.task is None and not self.body_done:
                        if ingest.pending:  # it waits for ring room: a pump moves it, to the end
                            self.task = asyncio.get_running_loop().create_task(self.pump())
                        elif ingest.vanished or ingest.ended:
                            await self._body_end(not ingest.vanished)
                    if party.left or self.broken:
                        break
                    if not inbox.ready():
                        if not wake.is_set:
                            await wake.future()
                        continue
                    item = await inbox.__anext__()  # at once: an item is waiting
                    if isinstance(item, ReceiverAborted):
                        await out.line("[INFO] A receiver aborted.")
                    elif isinstance(item, ReceiverEvicted):
                        stalled = f"{self.stall_ms / 1000:g}"
                        await out.line(f"[INFO] A receiver was evicted: it read nothing for {stalled} s.")
                    elif isinstance(item, Cancelled):
                        cancelled = True
                        self.stop()
                        break
                    elif isinstance(item, Finish):
                        if item.all_aborted:
                            self.stop()
                            with _stopping():
                                await out.end("[INFO] All receiver(s) was/were aborted halfway.")
                                if not self.eof:  # stop the upload, as the reference does
                                    await conn.close()
                        else:  # the end of the body is logged first: nothing left to cancel
                            while self.task is not None and not self.body_done and not self.broken:
                                wake.clear()
                                await wake.future()
                            if self.uploaded:
                                await out.end("[INFO] All receiver(s) was/were received successfully.")
                        break
                    elif isinstance(item, Broken):
                        producer.finish(broken=True)
                        self.stop()
                        with _stopping():
                            await _fail_log(out, conn, OWNER_LOST)
                        break
            except BaseException:
                self.stop()  # the loop failed or was cancelled: so is the pump
                raise
            finally:
                inbox.on_item(None)
                task = self.task
                if task is not None and not task.done():
                    await asyncio.wait([task])
            error = None if task is None or task.cancelled() else task.exception()
            if error is not None:
                raise error
            if cancelled:
                await _cancelled_log(_no_send, conn, out, party.path)
        finally:
            if conn.sink is ingest:
                conn.sink = None  # later body bytes, if any, are uvicorn's again
            if not self.vanished and not self.eof:
                producer.finish(broken=True)
            self.node.leave(party, completed=self.eof)
            producer.close()
            self.task = None  # no cycle through the finished task


class _StallReport:
    """The producer's stall callback, ``node.report_stall(party, slot)``: two slots, where a
    ``functools.partial`` of the bound method kept four objects (~0.25 KiB) per held upload.
    It names the node and the party, not the upload: the producer is the upload's, and a
    callback back to it would make every finished upload a cycle that only a full
    collection frees (with its connection and transport)."""

    __slots__ = ("_node", "_party")

    def __init__(self, node: WorkerPipes, party: LocalParty) -> None:
        self._node, self._party = node, party

    def __call__(self, slot: int) -> None:
        self._node.report_stall(self._party, slot)


class _Wake:
    """The upload loop's one wait (``Flag``'s ``set``/``clear``): set by an inbox item, a change
    of the body, the pump's end. The loop awaits ``future()`` itself, a bare future: a
    ``Flag.wait`` would keep a coroutine more and a list of waiters under every held upload."""

    __slots__ = ("_future", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self._future: asyncio.Future[None] | None = None

    def set(self) -> None:
        self.is_set = True
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    def clear(self) -> None:
        self.is_set = False

    def future(self) -> asyncio.Future[None]:
        """What to await until the next ``set`` (ask only while not set; one waiter at a time)."""
        future = self._future = asyncio.get_running_loop().create_future()
        return future


class _UploadIngest(Ingest):
    """An upload's ``Ingest`` that also wakes the upload's loop (``wake``) when the body ends
    or vanishes, or first has to wait for ring room (it pauses reading then). It holds the
    loop's flag, not the upload: no reference cycle for the collector."""

    __slots__ = ("_wake",)

    def __init__(self, producer: Producer, conn: Connection, wake: _Wake, *, first_part: FirstPart | None) -> None:
        super().__init__(producer, _FirstPauseTold(conn, wake), first_part=first_part)
        self._wake = wake

    def end(self) -> None:
        super().end()
        self._wake.set()

    def lost(self) -> None:
        super().lost()
        self._wake.set()


class _FirstPauseTold:
    """``Ingest.reading``: the connection's, and the first pause (a body that waits for ring
    room, which a pump then moves to its end) also sets ``wake``."""

    __slots__ = ("_conn", "_wake")

    def __init__(self, conn: Connection, wake: _Wake) -> None:
        self._conn = conn
        self._wake: _Wake | None = wake

    def pause_reading(self) -> None:
        self._conn.pause_reading()
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()

    def resume_reading(self) -> None:
        self._conn.resume_reading()


def _stopping() -> anyio.CancelScope:
    """A scope cancelled from the start, for a sender's ending after ``stop``: its writes go
    out while they need no wait, and a wait (a full transport, the close's wait for the
    client to go) is cut at once, so the request ends without waiting on the client."""
    scope = anyio.CancelScope()
    scope.cancel()
    return scope


async def _cancelled_log(send: Send, conn: Connection, out: SenderLog, path: str) -> None:
    """DELETE ended the sender's pipe: ``[INFO] Cancelled.``, then close without the final
    chunk, so the uploading client (``curl -T -``) fails and stops its producer."""
    log.info("sender cancelled", extra={"path": path})
    if not out.started:
        await reject(send, 410, f"The transfer on '{path}' was cancelled.", close=True)
        return
    if not out.ended:
        await out.line("[INFO] Cancelled.")
    await conn.close()


async def _fail_log(out: SenderLog, conn: Connection, message: str, status: int = 503) -> None:
    """End the sender's response with an error (``status`` if it is still unanswered) and close."""
    await out.fail(status, message)
    await conn.close()


async def _no_send(message: Message) -> None:
    """A ``send`` for a response already started (never called: the log has started)."""
