"""The HTTP edge: raw ASGI endpoints for senders (POST/PUT) and receivers (GET) of a pipe.

These are raw ASGI callables, not Starlette endpoints, because chunk sizes and flow control
matter here; Starlette serves the reserved pages (``pages.py``).

A sender's life: validate → ``Join`` the owner → (waiting: log lines, hang-up watched with
``EPOLLRDHUP``, body untouched) → ``Start`` → pump the body into the ring while the owner's
notes become log lines → ``Finish`` ends the log. A receiver's: validate → ``Join`` →
(waiting: no response at all, except an SSE reader's head and pings) → ``Start`` → its
``Reader`` (``readers/``, ``websocket.py``: raw, SSE, NDJSON, WebSocket) relays ring →
socket → clean end, or an end that says how the transfer broke (producer vanished, pipe
cancelled, reader evicted; raw: the connection closed before the last chunk).

Lifecycle entry points (SPEC 2.3–2.6, 2.8): ``cancel`` (DELETE) and ``status`` (HEAD) ask
the owner and answer; a watcher (``?watch=1``) is a receiver without a slot; a receiver
with an offset (``Last-Event-ID``, ``?last_event_id=``, ``?offset=``, ``Range: bytes=N-``)
resumes. Read keys travel to the owner only as sha256 digests.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Final

import anyio
from starlette.types import Message, Receive, Scope, Send

from ringpipe.core.control_frames import Broken, PipeStatus, Start
from ringpipe.core.multipart import FirstPart, boundary_of
from ringpipe.core.paths import query_n, query_param
from ringpipe.core.rendezvous import (
    Accepted,
    Answer,
    Cancelled,
    Finish,
    ReceiverAborted,
    ReceiverConnected,
    ReceiverEvicted,
    Reject,
    Role,
)
from ringpipe.http.connection import EXTENSION, Connection, HangupWatcher
from ringpipe.http.readers.base import Reader, ReadOptions, ReadStart, read_options
from ringpipe.http.readers.encoded import NdjsonReader, SseReader
from ringpipe.http.readers.raw import HttpReader
from ringpipe.http.responses import (
    HEADERS_IN_RING,
    STREAM_HEADERS,
    TEXT_HEADERS,
    content_headers,
    reject,
    worker_header,
)
from ringpipe.http.websocket import WebSocketReader
from ringpipe.mesh.node import Hangup, LocalParty, Node
from ringpipe.mesh.relay import WATCHER_SLOT, Consumer, Ingest, Producer
from ringpipe.ops import metrics
from ringpipe.shm import segment

__all__ = ["HEADERS_IN_RING", "PipeEndpoints", "content_headers", "reject", "worker_header"]

log = logging.getLogger("ringpipe.edge")

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Longest we try to tell a reader how its transfer ended (a stalled client may never read it).
FINISH_TIMEOUT_S: Final = 10.0
OWNER_LOST: Final = "The transfer was broken: a worker process of the server died."
STATUS_HEADERS: Final = b"Ringpipe-State, Ringpipe-Receivers, Ringpipe-Offset, Ringpipe-Epoch"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d+)\s*-\s*$")
_EVENT_ID = re.compile(r"^([0-9a-z]*)-(\d+)$")


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope["headers"] if k == name]


def _header(scope: Scope, name: bytes) -> str | None:
    values = _header_values(scope, name)
    return values[0] if values else None


def receiver_headers(scope: Scope) -> tuple[tuple[str, str], ...]:
    """The response headers every receiver gets, from the sender's request (SPEC 1.1, 4).

    For a multipart upload (SPEC 1.4, 16) the content headers are the first part's, which
    only the sender's worker can read: they travel in the ring (``relay.header_block``).
    """
    content_type = _header(scope, b"content-type")
    if boundary_of(content_type) is not None:
        out = [(HEADERS_IN_RING, "1")]
    else:
        out = content_headers(_header(scope, b"content-length"), content_type, _header(scope, b"content-disposition"))
    x_piping = _header_values(scope, b"x-piping")
    out += [("x-piping", value) for value in x_piping]
    out.append(("access-control-allow-origin", "*"))
    if x_piping:
        out.append(("access-control-expose-headers", "X-Piping"))
    out.append(("x-robots-tag", "none"))
    return tuple(out)


def read_key(scope: Scope) -> str:
    """The hex sha256 of the party's read key (``Ringpipe-Read-Key`` or ``?key=``), or ``""``.

    Only this digest leaves the edge (control frames, comparisons); the key is never logged.
    """
    key = _header(scope, b"ringpipe-read-key")
    if key is None:
        key = query_param(scope["query_string"], "key")
    return hashlib.sha256(key.encode()).hexdigest() if key else ""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a reconnecting receiver continues: pipe ``offset`` of pipe ``epoch`` (``""``: any)."""

    offset: int
    epoch: str
    by_range: bool


def resume_point(scope: Scope) -> ResumePoint | str | None:
    """The reader's resume request (SPEC 2.4), None without one, or why it is malformed."""
    query = scope["query_string"]
    event_id = _header(scope, b"last-event-id") or query_param(query, "last_event_id")
    if event_id:
        match = _EVENT_ID.match(event_id.strip())
        if match is None:
            return f"The event id {event_id!r} is not <epoch>-<offset>."
        return ResumePoint(int(match.group(2)), match.group(1), False)
    raw = query_param(query, "offset")
    if raw is not None:
        if not raw.isdigit():
            return f"The offset {raw!r} is not a number of bytes."
        return ResumePoint(int(raw), "", False)
    ranges = _header(scope, b"range")
    if ranges is not None:
        match = _RANGE.match(ranges)
        if match is None:
            return "Only one open range 'bytes=N-' can be resumed."
        return ResumePoint(int(match.group(1)), "", True)
    return None


def stall_ms(scope: Scope) -> int | str:
    """``?stall_timeout=`` in ms (-1: the server's default), or why it is malformed."""
    raw = query_param(scope["query_string"], "stall_timeout")
    if raw is None:
        return -1
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        return f"stall_timeout should be 0..86400 seconds, but it is {raw!r}."
    return round(seconds * 1000)


def can_resume(scope: Scope) -> bool:
    """Whether a receiver can come back (so its slot is reserved when it drops, SPEC 2.4):
    EventSource/SSE, NDJSON and WebSocket readers, or a raw reader asking ``?resume=1``."""
    query = scope["query_string"]
    if query_param(query, "resume") in ("1", "true"):
        return True
    if query_param(query, "format") in ("sse", "ndjson", "lines"):
        return True
    if "text/event-stream" in (_header(scope, b"accept") or ""):
        return True
    return (_header(scope, b"upgrade") or "").lower() == "websocket"


class SenderLog:
    """The sender's response: a live log of ``[INFO]`` lines (one body at the end for HTTP/1.0).

    With ``late`` (``--sender-response late``, SPEC Part 3) nothing of the response is sent
    until ``body_read()``: the log lines are held, then the status line and every held line
    go out at once and the log is live from there on. nginx stops forwarding a request body
    once the upstream has answered, so a relay behind it must not answer before the body
    is in. An error before that is answered at once with its own status (``fail``).

    Invariant: ``started`` is True exactly when the response is committed to be the 200
    log (its head is on the wire, or, for HTTP/1.0, will be at ``end``); until then an
    error may still become a rejection with its own status.
    """

    def __init__(self, send: Send, *, http10: bool, worker: int, late: bool = False) -> None:
        self._send = send
        self._http10 = http10
        # nosniff: browsers would otherwise hold a text/plain response back to sniff its
        # type, and a page showing the live log would see nothing until the upload ended.
        self._headers = [*TEXT_HEADERS, *STREAM_HEADERS, (b"x-content-type-options", b"nosniff"), worker_header(worker)]
        self._held: list[bytes] = []
        #: Late mode, head not yet sent: lines go to ``_held``.
        self._holding = late and not http10
        self.started = False
        self.ended = False

    async def start(self) -> None:
        if self._holding:
            return  # late: the head waits for ``body_read``
        self.started = True
        if not self._http10:
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers})

    async def body_read(self) -> None:
        """The whole request body is in: a late log sends its head and held lines now."""
        if not self._holding or self.started:
            return
        self.started = True  # before any await: a concurrent ``end`` must not send a second head
        await self._send({"type": "http.response.start", "status": 200, "headers": self._headers})
        while self._held:  # lines logged while we were sending are held too, in order
            body, self._held = b"".join(self._held), []
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
        self._holding = False

    async def line(self, text: str) -> None:
        data = (text + "\n").encode()
        if self._http10 or self._holding:
            self._held.append(data)
        else:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, text: str) -> None:
        if not self._http10 and not self._holding:
            # The last line and the final chunk in one write (one syscall, one wake-up of
            # the client) instead of two: the same bytes on the wire.
            self.ended = True
            await self._send({"type": "http.response.body", "body": (text + "\n").encode(), "more_body": False})
            return
        await self.line(text)
        self.ended = True
        if self._http10:
            body = b"".join(self._held)
            headers = [*self._headers, (b"content-length", str(len(body)).encode())]
            await self._send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._send({"type": "http.response.body", "body": body})
            return
        await self.body_read()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def fail(self, status: int, message: str) -> None:
        """End with ``[ERROR] message``: as the log's last line once the log has started,
        else (late mode, body not read yet) as a rejection with ``status``, at once."""
        if self.ended:
            return
        if self.started or not self._holding:
            await self.end(f"[ERROR] {message}")
            return
        self.ended = self.started = True
        await reject(self._send, status, message, close=True)


class PipeEndpoints:
    """Sender and receiver handlers bound to one worker's ``Node``."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.hangups = HangupWatcher()

    def parse_n(self, scope: Scope, role: Role) -> int | str:
        """``?n`` as an int, or the rejection message (SPEC 1.2, 8; piping's texts)."""
        n = query_n(scope["query_string"])
        if n is None:
            return 'Invalid "n" query parameter' if role is Role.SENDER else 'Invalid query parameter "n"'
        if n <= 0:
            return f"n should > 0, but n = {n}."
        limit = self.node.settings.max_receivers
        if n > limit:
            return f"n should be at most {limit}, but n = {n}."
        return n

    # -- senders --

    async def sender(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if _header(scope, b"content-range") is not None:
            await reject(send, 400, f"Content-Range is not supported for now in {scope['method']}", close=True)
            return
        n = self.parse_n(scope, Role.SENDER)
        if isinstance(n, str):
            await reject(send, 400, n, close=True)
            return
        stall = stall_ms(scope)
        if isinstance(stall, str):
            await reject(send, 400, stall, close=True)
            return
        conn: Connection = scope["extensions"][EXTENSION]
        party = self.node.open_party(path, Role.SENDER, n, receiver_headers(scope), key=read_key(scope), stall_ms=stall)
        out = SenderLog(
            send,
            http10=scope.get("http_version") == "1.0",
            worker=self.node.index,
            late=self.node.settings.sender_response == "late",
        )
        try:
            start = await self._sender_wait(scope, send, conn, party, out)
            if start is not None:
                await self._sender_run(scope, conn, party, out, start)
        finally:
            if not party.left:
                self.node.leave(party, completed=False)

    async def _sender_wait(
        self, scope: Scope, send: Send, conn: Connection, party: LocalParty, out: SenderLog
    ) -> Start | None:
        fd = conn.fileno()
        self.hangups.watch(fd, party.hang_up)
        expects_continue = (_header(scope, b"expect") or "").lower() == "100-continue"
        try:
            async for item in party.inbox:
                if isinstance(item, Start):
                    return item
                if isinstance(item, Accepted):
                    if expects_continue:
                        conn.write_raw(CONTINUE)
                        conn.continue_sent()
                    await out.start()
                    await out.line(f"[INFO] Waiting for {item.n} receiver(s)...")
                    if item.connected is not None:
                        await out.line(f"[INFO] {item.connected} receiver(s) has/have been connected.")
                elif isinstance(item, ReceiverConnected):
                    await out.line("[INFO] A receiver was connected.")
                elif isinstance(item, Cancelled):
                    self.node.leave(party, completed=False)
                    await self._cancelled_log(send, conn, out, party.path)
                    return None
                elif isinstance(item, (Reject, Broken)):
                    status, message = (item.status, item.message) if isinstance(item, Reject) else (503, OWNER_LOST)
                    self.node.leave(party, completed=False)
                    if out.started:
                        await self._fail_log(out, conn, message)
                    else:
                        await reject(send, status, message, close=True)
                    return None
                elif isinstance(item, Hangup):
                    log.info("waiting sender left", extra={"path": party.path})
                    await conn.abort()
                    return None
            return None
        finally:
            self.hangups.unwatch(fd)

    async def _cancelled_log(self, send: Send, conn: Connection, out: SenderLog, path: str) -> None:
        """DELETE ended the sender's pipe: ``[INFO] Cancelled.``, then close without the final
        chunk, so the uploading client (``curl -T -``) fails and stops its producer."""
        log.info("sender cancelled", extra={"path": path})
        if not out.started:
            await reject(send, 410, f"The transfer on '{path}' was cancelled.", close=True)
            return
        if not out.ended:
            await out.line("[INFO] Cancelled.")
        await conn.close()

    async def _fail_log(self, out: SenderLog, conn: Connection, message: str, status: int = 503) -> None:
        """End the sender's response with an error (``status`` if it is still unanswered) and close."""
        await out.fail(status, message)
        await conn.close()

    async def _sender_run(
        self, scope: Scope, conn: Connection, party: LocalParty, out: SenderLog, start: Start
    ) -> None:
        n = len(start.relay.readers)
        await out.line(f"[INFO] Start sending to {n} receiver(s)!")
        try:
            ring = segment.RingSegment.attach(start.relay.segment)
        except FileNotFoundError:  # every receiver left before we could start
            await self._fail_log(out, conn, "All receivers left before the transfer started.")
            return
        producer = Producer(
            self.node,
            ring,
            start.relay,
            stall_s=start.relay.stall_ms / 1000,
            on_stall=lambda slot: self.node.report_stall(party, slot),
        )
        uploaded = anyio.Event()
        eof = False
        vanished = False
        cancelled = False

        boundary = boundary_of(_header(scope, b"content-type"))
        ingest = Ingest(producer, conn, first_part=FirstPart(boundary) if boundary else None)
        conn.divert_body(ingest)  # from here on the body flows into the ring

        async def pump() -> None:
            nonlocal eof, vanished
            if not await ingest.run():
                vanished = True
                producer.finish(broken=True)
                self.node.leave(party, completed=False)
                if ingest.error is not None and not conn.lost.is_set():  # malformed, not gone
                    with anyio.CancelScope(shield=True):
                        await self._fail_log(out, conn, ingest.error, 400)
                tg.cancel_scope.cancel()
                return
            producer.finish()
            eof = True
            await out.line("[INFO] Sent successfully!")
            await out.body_read()
            uploaded.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                async for item in party.inbox:
                    if isinstance(item, ReceiverAborted):
                        await out.line("[INFO] A receiver aborted.")
                    elif isinstance(item, ReceiverEvicted):
                        stalled = f"{start.relay.stall_ms / 1000:g}"
                        await out.line(f"[INFO] A receiver was evicted: it read nothing for {stalled} s.")
                    elif isinstance(item, Cancelled):
                        cancelled = True
                        tg.cancel_scope.cancel()
                        break
                    elif isinstance(item, Finish):
                        if item.all_aborted:
                            tg.cancel_scope.cancel()
                            await out.end("[INFO] All receiver(s) was/were aborted halfway.")
                            if not eof:  # stop the upload, as the reference does
                                await conn.close()
                        else:
                            await uploaded.wait()
                            await out.end("[INFO] All receiver(s) was/were received successfully.")
                        tg.cancel_scope.cancel()
                        break
                    elif isinstance(item, Broken):
                        producer.finish(broken=True)
                        tg.cancel_scope.cancel()
                        await self._fail_log(out, conn, OWNER_LOST)
                        break
            if cancelled:
                await self._cancelled_log(self._no_send, conn, out, party.path)
        finally:
            if conn.sink is ingest:
                conn.sink = None  # later body bytes, if any, are uvicorn's again
            if not vanished and not eof:
                producer.finish(broken=True)
            self.node.leave(party, completed=eof)
            producer.close()

    @staticmethod
    async def _no_send(message: Message) -> None:
        """A ``send`` for a response already started (never called: the log has started)."""

    # -- DELETE and HEAD (SPEC 2.3, 2.6) --

    async def cancel(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """``DELETE /p``: 204 when a waiting or running transfer was cancelled, 404 when free."""
        answer = await self._ask(path, cancel=True, key=read_key(scope))
        if isinstance(answer, Answer) and answer.status == 204:
            log.info("pipe cancelled", extra={"path": path})
            headers = [TEXT_HEADERS[1], worker_header(self.node.index)]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif isinstance(answer, Answer):
            await reject(send, answer.status, answer.message)
        else:
            await reject(send, 503, OWNER_LOST)

    async def status(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """``HEAD /p``: the pipe's state in ``Ringpipe-*`` headers; 404 when free. Registers nobody."""
        answer = await self._ask(path, cancel=False, key=read_key(scope))
        if isinstance(answer, PipeStatus):
            headers = [
                *TEXT_HEADERS,
                (b"cache-control", b"no-cache, no-transform"),
                (b"ringpipe-state", answer.state.encode()),
                (b"ringpipe-receivers", f"{answer.connected}/{answer.n}".encode()),
                (b"ringpipe-offset", str(answer.offset).encode()),
                (b"ringpipe-epoch", answer.epoch.encode()),
                (
                    b"access-control-expose-headers",
                    b"Ringpipe-State, Ringpipe-Receivers, Ringpipe-Offset, Ringpipe-Epoch",
                ),
                (b"content-length", b"0"),
                worker_header(self.node.index),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif isinstance(answer, Answer):
            await reject(send, answer.status, answer.message, head=True)
        else:
            await reject(send, 503, OWNER_LOST, head=True)

    async def _ask(self, path: str, *, cancel: bool, key: str) -> Answer | PipeStatus | None:
        party = self.node.ask(path, cancel=cancel, key=key)
        try:
            async for item in party.inbox:
                if isinstance(item, (Answer, PipeStatus)):
                    return item
                if isinstance(item, Broken):
                    return None
            return None
        finally:
            self.node.forget(party)

    # -- receivers --

    async def receiver(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """A GET (any framing, ``readers/``) or a WebSocket (``websocket.py``) on a pipe path:
        a receiver, a watcher (``?watch=1``) or a resuming receiver (an offset)."""
        options = read_options(scope)
        reader = self._reader(scope, receive, send, options if isinstance(options, ReadOptions) else ReadOptions())
        if isinstance(options, str):
            await reader.reject(400, options)
            return
        if _header(scope, b"service-worker") == "script":
            await reader.reject(400, "Service Worker registration is rejected.")
            return
        n = self.parse_n(scope, Role.RECEIVER)
        if isinstance(n, str):
            await reader.reject(400, n)
            return
        query = scope["query_string"]
        watch = query_param(query, "watch") in ("1", "true")
        point = None if watch else resume_point(scope)
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
        )

        plan = _ReadPlan(point=point, live=watch and query_param(query, "from") == "live", resumable=resumable)
        try:
            async with reader.session(party.hang_up):  # hang-ups are a callback: waiting receivers stay cheap
                await self._receiver_life(reader, party, plan)
        finally:
            if not party.left:
                self.node.leave(party, completed=False)

    def _reader(self, scope: Scope, receive: Receive, send: Send, options: ReadOptions) -> Reader:
        if scope["type"] == "websocket":
            return WebSocketReader(scope, receive, send, options)
        worker, heartbeat = self.node.index, self.node.settings.heartbeat
        if options.format == "sse":
            return SseReader(scope, send, options, worker=worker, heartbeat=heartbeat)
        if options.format == "ndjson":
            return NdjsonReader(scope, send, options, worker=worker, heartbeat=heartbeat)
        return HttpReader(scope, send, worker=worker, heartbeat=heartbeat)

    async def _receiver_life(self, reader: Reader, party: LocalParty, plan: _ReadPlan) -> None:
        start: Start | None = None
        async for item in party.inbox:
            if isinstance(item, Start):
                start = item
                break
            if isinstance(item, Reject):
                self.node.leave(party, completed=False)
                await reader.reject(item.status, item.message)
                return
            if isinstance(item, Cancelled):
                self.node.leave(party, completed=False)
                await reader.reject(410, f"The transfer on '{party.path}' was cancelled.")
                return
            if isinstance(item, Broken):
                self.node.leave(party, completed=False)
                await reader.reject(503, OWNER_LOST)
                return
            if isinstance(item, Hangup):
                return
        if start is None:
            return
        try:
            ring = segment.RingSegment.attach(start.relay.segment)
        except FileNotFoundError:  # the sender vanished before we attached
            with anyio.CancelScope(shield=True):
                await reader.finish(False)
            return
        watcher = start.slot == WATCHER_SLOT
        first: int | None = None
        if plan.point is not None:
            first = plan.point.offset
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
            continue_gaps=watcher and not isinstance(reader, WebSocketReader) and type(reader) is not HttpReader,
            worker=self.node.index,
        )
        framing = _framing_of(reader)
        if watcher:
            metrics.watcher_started()
        else:
            metrics.reader_started(framing, consumer)
        completed = False
        try:
            begin = ReadStart(
                watcher=watcher,
                resumed=plan.point is not None,
                by_range=plan.point is not None and plan.point.by_range,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_inbox, party, tg.cancel_scope)
                completed = await reader.relay(consumer, start, begin)
                tg.cancel_scope.cancel()
        finally:
            ending = None if completed else consumer.ending()
            if watcher:
                metrics.watcher_ended()
            else:
                metrics.reader_ended(framing)
            if ending == "lagged":
                metrics.evicted("window" if watcher else "stall")
            if completed:
                consumer.leave(segment.DONE)
            elif not (plan.resumable and ending is None):  # a resumable drop keeps gating (grace)
                consumer.leave(segment.DETACHED)
            self.node.leave(party, completed=completed)
            consumer.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINISH_TIMEOUT_S):
                await reader.finish(completed, ending)  # a stalled client must not hold us


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """What a receiver asked for besides its path and framing: a resume point, a live start
    (watchers), resumability (its slot is held for ``reconnect_grace`` when it drops)."""

    point: ResumePoint | None
    live: bool
    resumable: bool


def _framing_of(reader: Reader) -> str:
    """The metrics label of a reader's framing (``metrics.FRAMINGS``)."""
    if isinstance(reader, WebSocketReader):
        return "websocket"
    if isinstance(reader, SseReader):
        return "sse"
    if isinstance(reader, NdjsonReader):
        return "ndjson"
    return "raw"


async def _cancel_on_inbox(party: LocalParty, scope: anyio.CancelScope) -> None:
    """During a transfer, anything in a receiver's inbox (Broken, Cancelled, Evicted, Hangup)
    ends it; the ring then says which ending (``Consumer.ending``)."""
    async for _item in party.inbox:
        scope.cancel()
        return


def message_type(message: Message) -> str:
    return str(message["type"])
