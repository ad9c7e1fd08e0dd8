"""The HTTP edge: raw ASGI endpoints for senders (POST/PUT) and receivers (GET) of a pipe.

These are raw ASGI callables, not Starlette endpoints, because chunk sizes and flow control
matter here; Starlette serves the reserved pages (``pages.py``).

A sender's life: validate → ``Join`` the owner → (waiting: log lines, hang-up watched with
``EPOLLRDHUP``, body untouched) → ``Start`` → pump the body into the ring while the owner's
notes become log lines → ``Finish`` ends the log. A receiver's: validate → ``Join`` →
(waiting: no response at all) → ``Start`` → response head with the sender's headers → copy
ring → socket → clean end, or a *visibly broken* end (connection closed before the last
chunk) if the producer vanished, the pipe was cancelled or the reader was evicted.

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

from ringpipe import metrics, shm
from ringpipe.connection import EXTENSION, Connection, HangupWatcher
from ringpipe.errors import PeerGone
from ringpipe.multipart import FirstPart, boundary_of
from ringpipe.node import Hangup, LocalParty, Node
from ringpipe.paths import parse_int_like_js, query_param
from ringpipe.protocol import Broken, PipeStatus, Start
from ringpipe.relay import HEADER_BLOCK, HEADER_MAGIC, WATCHER_SLOT, Consumer, Ingest, Producer, parse_header_block
from ringpipe.rendezvous import (
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

__all__ = ["PipeEndpoints", "reject"]

log = logging.getLogger("ringpipe.edge")

TEXT_HEADERS: Final = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*")]
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Bytes a receiver sends between two updates of the bytes-out metric.
METER_BYTES: Final = 1 << 20
OWNER_LOST: Final = "The transfer was broken: a worker process of the server died."
STATUS_HEADERS: Final = b"Ringpipe-State, Ringpipe-Receivers, Ringpipe-Offset, Ringpipe-Epoch"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d+)\s*-\s*$")
_EVENT_ID = re.compile(r"^([0-9a-z]*)-(\d+)$")
_MIME = re.compile(r"^\s*([^;]*)(\s*;?.*)$", re.DOTALL)


async def reject(send: Send, status: int, message: str, *, close: bool = False, head: bool = False) -> None:
    """Answer with the piping error form: ``[ERROR] <message>``, text/plain, CORS open."""
    body = f"[ERROR] {message}\n".encode()
    headers = [*TEXT_HEADERS, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    metrics.REJECTIONS.labels(code=str(status)).inc()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope["headers"] if k == name]


def _header(scope: Scope, name: bytes) -> str | None:
    values = _header_values(scope, name)
    return values[0] if values else None


#: Internal marker in a Join's receiver headers (never sent): the sender's upload is
#: multipart, and the first part's headers come through the ring ahead of its data.
HEADERS_IN_RING: Final = "ringpipe-headers-in-ring"


def _safe_content_type(value: str) -> str:
    """text/html is relayed as text/plain, so a pipe never serves a page of our origin."""
    match = _MIME.match(value)
    if match and match.group(1) == "text/html":
        return "text/plain" + match.group(2)
    return value


def content_headers(length: str | None, content_type: str | None, disposition: str | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if length is not None:
        out.append(("content-length", length))
    if content_type is not None:
        out.append(("content-type", _safe_content_type(content_type)))
    if disposition is not None:
        out.append(("content-disposition", disposition))
    return out


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


def worker_header(index: int) -> tuple[bytes, bytes]:
    """``Ringpipe-Worker``: which worker process served this party (for operators and tests)."""
    return (b"ringpipe-worker", str(index).encode())


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


def _with_length(headers: list[tuple[str, str]], start: int) -> list[tuple[str, str]]:
    """Headers for a body that starts ``start`` bytes into the pipe (Content-Length cut down)."""
    out = []
    for name, value in headers:
        if name == "content-length":
            if not value.isdigit() or int(value) < start:
                continue
            value = str(int(value) - start)
        out.append((name, value))
    return out


class SenderLog:
    """The sender's response: a live log of ``[INFO]`` lines (one body at the end for HTTP/1.0)."""

    def __init__(self, send: Send, *, http10: bool, worker: int) -> None:
        self._send = send
        self._http10 = http10
        # nosniff: browsers would otherwise hold a text/plain response back to sniff its
        # type, and a page showing the live log would see nothing until the upload ended.
        self._headers = [*TEXT_HEADERS, (b"x-content-type-options", b"nosniff"), worker_header(worker)]
        self._held: list[bytes] = []
        self.started = False
        self.ended = False

    async def start(self) -> None:
        self.started = True
        if not self._http10:
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers})

    async def line(self, text: str) -> None:
        data = (text + "\n").encode()
        if self._http10:
            self._held.append(data)
        else:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, text: str) -> None:
        await self.line(text)
        self.ended = True
        if self._http10:
            body = b"".join(self._held)
            headers = [*self._headers, (b"content-length", str(len(body)).encode())]
            await self._send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._send({"type": "http.response.body", "body": body})
        else:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class PipeEndpoints:
    """Sender and receiver handlers bound to one worker's ``Node``."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.hangups = HangupWatcher()

    def parse_n(self, scope: Scope, role: Role) -> int | str:
        """``?n`` as an int, or the rejection message (SPEC 1.2, 8; piping's texts)."""
        raw = query_param(scope["query_string"], "n")
        if raw is None:
            return 1
        n = parse_int_like_js(raw)
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
        out = SenderLog(send, http10=scope.get("http_version") == "1.0", worker=self.node.index)
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
        self.hangups.watch(fd, lambda: party.deliver(Hangup()))
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

    async def _fail_log(self, out: SenderLog, conn: Connection, message: str) -> None:
        if not out.ended:
            await out.end(f"[ERROR] {message}")
        await conn.close()

    async def _sender_run(
        self, scope: Scope, conn: Connection, party: LocalParty, out: SenderLog, start: Start
    ) -> None:
        n = len(start.relay.readers)
        await out.line(f"[INFO] Start sending to {n} receiver(s)!")
        try:
            ring = shm.RingSegment.attach(start.relay.segment)
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
                        await self._fail_log(out, conn, ingest.error)
                tg.cancel_scope.cancel()
                return
            producer.finish()
            eof = True
            await out.line("[INFO] Sent successfully!")
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
            metrics.BYTES_IN.inc(producer.bytes_written)
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
        if _header(scope, b"service-worker") == "script":
            await reject(send, 400, "Service Worker registration is rejected.")
            return
        n = self.parse_n(scope, Role.RECEIVER)
        if isinstance(n, str):
            await reject(send, 400, n)
            return
        query = scope["query_string"]
        watch = query_param(query, "watch") in ("1", "true")
        point = None if watch else resume_point(scope)
        stall = stall_ms(scope)
        if isinstance(point, str) or isinstance(stall, str):
            await reject(send, 400, point if isinstance(point, str) else str(stall))
            return
        conn: Connection = scope["extensions"][EXTENSION]
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

        def hangup() -> None:
            party.deliver(Hangup())

        conn.call_when_lost(hangup)  # a callback, not a task: waiting receivers stay cheap
        reader = _Reader(
            point=point,
            live=watch and query_param(query, "from") == "live",
            resumable=resumable,
            http10=scope.get("http_version") == "1.0",
        )
        try:
            await self._receiver_life(send, conn, party, reader)
        finally:
            conn.forget_when_lost(hangup)
            if not party.left:
                self.node.leave(party, completed=False)

    async def _receiver_life(self, send: Send, conn: Connection, party: LocalParty, reader: _Reader) -> None:
        start: Start | None = None
        async for item in party.inbox:
            if isinstance(item, Start):
                start = item
                break
            if isinstance(item, Reject):
                self.node.leave(party, completed=False)
                await reject(send, item.status, item.message)
                return
            if isinstance(item, Cancelled):
                self.node.leave(party, completed=False)
                await reject(send, 410, f"The transfer on '{party.path}' was cancelled.")
                return
            if isinstance(item, Broken):
                self.node.leave(party, completed=False)
                await reject(send, 503, OWNER_LOST)
                return
            if isinstance(item, Hangup):
                return
        if start is None:
            return
        try:
            ring = shm.RingSegment.attach(start.relay.segment)
        except FileNotFoundError:  # the sender vanished before we attached
            await conn.close()
            return
        watcher = start.slot == WATCHER_SLOT
        first: int | None = None
        if reader.point is not None:
            first = reader.point.offset
        elif watcher and reader.live:
            first = ring.write_seq
        elif reader.resumable and not watcher:
            # A reloaded page takes back a dropped reader's slot from the oldest byte held
            # (at a fresh start that is the slot's own cursor, 0).
            first = ring.oldest_held()
        consumer = Consumer(self.node, ring, start.relay, start.slot, start=first, worker=self.node.index)
        completed = False
        try:
            offset = consumer.offset
            relayed: list[tuple[str, str]] | None = list(start.receiver_headers)
            if (HEADERS_IN_RING, "1") in start.receiver_headers:
                if offset == 0:
                    relayed = await _headers_from_ring(consumer, list(start.receiver_headers))
                else:  # joined past the part's headers: relay the bytes untyped
                    relayed = [h for h in start.receiver_headers if h[0] != HEADERS_IN_RING]
            if relayed is None:  # the sender vanished before its part headers
                return
            status = 200
            if watcher or reader.point is not None or offset > 0:
                relayed = _with_length(relayed, consumer.offset)
                relayed += [("ringpipe-offset", str(consumer.offset)), ("ringpipe-epoch", start.relay.epoch)]
                if reader.point is not None and reader.point.by_range:
                    status = 206
                    total = next((int(v) + offset for k, v in relayed if k == "content-length"), None)
                    last = f"{total - 1}/{total}" if total else "*/*"
                    relayed.append(("content-range", f"bytes {offset}-{last}"))
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in relayed]
            headers.append(worker_header(self.node.index))
            if reader.http10 and not any(k == b"content-length" for k, _ in headers):
                conn.unframed_response()  # HTTP/1.0 has no chunks: the body ends at close
            await send({"type": "http.response.start", "status": status, "headers": headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_inbox, party, tg.cancel_scope)
                completed = await _copy_out(consumer, conn)
                if completed:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            ending = None if completed else consumer.ending()
            if completed:
                consumer.leave(shm.DONE)
            elif not (reader.resumable and ending is None):  # a resumable drop keeps gating (grace)
                consumer.leave(shm.DETACHED)
            self.node.leave(party, completed=completed)
            consumer.close()
            if not completed and not conn.lost.is_set():
                with anyio.CancelScope(shield=True):
                    await conn.close()


@dataclass(frozen=True, slots=True)
class _Reader:
    """What a receiver asked for besides its path: a resume point, a live start, resumability."""

    point: ResumePoint | None
    live: bool
    resumable: bool
    http10: bool


async def _headers_from_ring(consumer: Consumer, relayed: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """A multipart upload's first-part headers, read from the head of the ring; None if the
    producer vanished first (the receiver's connection is then closed unanswered)."""
    try:
        magic, size = HEADER_BLOCK.unpack(await consumer.read_exact(HEADER_BLOCK.size))
        if magic != HEADER_MAGIC:
            raise PeerGone("no header block at the head of the ring")
        part = dict(parse_header_block(await consumer.read_exact(size)))
    except PeerGone:
        return None
    content = content_headers(None, part.get("content-type"), part.get("content-disposition"))
    return content + [h for h in relayed if h[0] != HEADERS_IN_RING]


async def _copy_out(consumer: Consumer, conn: Connection) -> bool:
    """Ring → socket for one receiver, zero-copy; True at the producer's clean end.

    Each round sends whatever is published (up to ``READ_LIMIT``) with one ``writev`` of
    views into the ring (plus the chunk-size line when the response is chunked) and only
    then commits the read cursor, so the ring space stays reserved while the kernel copies.
    The bytes-out metric is updated per ``METER_BYTES`` (an update costs microseconds,
    which a stream of 64-byte tokens to 16 readers would pay thousands of times a second).
    """
    chunked = conn.chunked_response
    unmetered = 0
    try:
        while True:
            try:
                views, next_seq = await consumer.views()
            except PeerGone:
                return False
            if not views:
                return True
            size = sum(map(len, views))
            parts: list[memoryview | bytes] = [b"%x\r\n" % size, *views, b"\r\n"] if chunked else [*views]
            try:
                await conn.write_parts(parts, size + (len(parts[0]) + 2 if chunked else 0))
            except ConnectionError:
                return False
            finally:
                del parts
                for view in views:
                    view.release()
            consumer.commit(next_seq, size)
            unmetered += size
            if unmetered >= METER_BYTES:
                metrics.BYTES_OUT.inc(unmetered)
                unmetered = 0
            if not chunked:
                conn.account_body(size)
                if conn.body_left == 0:
                    # The client has the whole Content-Length and may hang up before the
                    # producer's EOF reaches us: this receiver is complete now.
                    return True
    finally:
        if unmetered:
            metrics.BYTES_OUT.inc(unmetered)


async def _cancel_on_inbox(party: LocalParty, scope: anyio.CancelScope) -> None:
    """During a transfer, anything in a receiver's inbox (Broken, Cancelled, Evicted, Hangup)
    ends it; the ring then says which ending (``Consumer.ending``)."""
    async for _item in party.inbox:
        scope.cancel()
        return


def message_type(message: Message) -> str:
    return str(message["type"])
