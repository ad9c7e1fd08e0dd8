"""The HTTP edge: raw ASGI endpoints for senders (POST/PUT) and receivers (GET) of a pipe.

These are raw ASGI callables, not Starlette endpoints, because chunk sizes and flow control
matter here; Starlette serves the reserved pages (``pages.py``).

A sender's life: validate → ``Join`` the owner → (waiting: log lines, hang-up watched with
``EPOLLRDHUP``, body untouched) → ``Start`` → pump the body into the ring while the owner's
notes become log lines → ``Finish`` ends the log. A receiver's: validate → ``Join`` →
(waiting: no response at all) → ``Start`` → response head with the sender's headers → copy
ring → socket → clean end, or a *visibly broken* end (connection closed before the last
chunk) if the producer vanished.
"""

from __future__ import annotations

import logging
import re
from typing import Final

import anyio
from starlette.types import Message, Receive, Scope, Send

from ringpipe import metrics, shm
from ringpipe.connection import EXTENSION, Connection, HangupWatcher
from ringpipe.errors import PeerGone
from ringpipe.multipart import FirstPart, boundary_of
from ringpipe.node import Hangup, LocalParty, Node
from ringpipe.paths import parse_int_like_js, query_param
from ringpipe.protocol import Broken, Start
from ringpipe.relay import HEADER_BLOCK, HEADER_MAGIC, Consumer, Ingest, Producer, parse_header_block
from ringpipe.rendezvous import Accepted, Finish, ReceiverAborted, ReceiverConnected, Reject, Role

__all__ = ["PipeEndpoints", "reject"]

log = logging.getLogger("ringpipe.edge")

TEXT_HEADERS: Final = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*")]
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
OWNER_LOST: Final = "The transfer was broken: a worker process of the server died."
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
        conn: Connection = scope["extensions"][EXTENSION]
        party = self.node.open_party(path, Role.SENDER, n, receiver_headers(scope))
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
        producer = Producer(self.node, ring, start.relay)
        uploaded = anyio.Event()
        eof = False
        vanished = False

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
        finally:
            if conn.sink is ingest:
                conn.sink = None  # later body bytes, if any, are uvicorn's again
            if not vanished and not eof:
                producer.finish(broken=True)
            self.node.leave(party, completed=eof)
            producer.close()

    # -- receivers --

    async def receiver(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if _header(scope, b"service-worker") == "script":
            await reject(send, 400, "Service Worker registration is rejected.")
            return
        n = self.parse_n(scope, Role.RECEIVER)
        if isinstance(n, str):
            await reject(send, 400, n)
            return
        conn: Connection = scope["extensions"][EXTENSION]
        party = self.node.open_party(path, Role.RECEIVER, n)

        def hangup() -> None:
            party.deliver(Hangup())

        conn.call_when_lost(hangup)  # a callback, not a task: waiting receivers stay cheap
        try:
            await self._receiver_life(send, conn, party, http10=scope.get("http_version") == "1.0")
        finally:
            conn.forget_when_lost(hangup)
            if not party.left:
                self.node.leave(party, completed=False)

    async def _receiver_life(self, send: Send, conn: Connection, party: LocalParty, *, http10: bool) -> None:
        start: Start | None = None
        async for item in party.inbox:
            if isinstance(item, Start):
                start = item
                break
            if isinstance(item, Reject):
                self.node.leave(party, completed=False)
                await reject(send, item.status, item.message)
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
        consumer = Consumer(self.node, ring, start.relay, start.slot)
        metrics.reader_started("raw", consumer)
        completed = False
        try:
            relayed: list[tuple[str, str]] | None = list(start.receiver_headers)
            if (HEADERS_IN_RING, "1") in start.receiver_headers:
                relayed = await _headers_from_ring(consumer, list(start.receiver_headers))
            if relayed is None:  # the sender vanished before its part headers
                return
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in relayed]
            headers.append(worker_header(self.node.index))
            if http10 and not any(k == b"content-length" for k, _ in headers):
                conn.unframed_response()  # HTTP/1.0 has no chunks: the body ends at close
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_inbox, party, tg.cancel_scope)
                completed = await _copy_out(consumer, conn)
                if completed:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            metrics.reader_ended("raw")
            consumer.leave(shm.DONE if completed else shm.DETACHED)
            self.node.leave(party, completed=completed)
            consumer.close()
            if not completed and not conn.lost.is_set():
                with anyio.CancelScope(shield=True):
                    await conn.close()


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
    (``Consumer.commit`` also feeds the reader metrics: bytes out, relay latency.)
    """
    chunked = conn.chunked_response
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
        if not chunked:
            conn.account_body(size)
            if conn.body_left == 0:
                # The client has the whole Content-Length and may hang up before the
                # producer's EOF reaches us: this receiver is complete now.
                return True


async def _cancel_on_inbox(party: LocalParty, scope: anyio.CancelScope) -> None:
    """During a transfer, anything in a receiver's inbox (Broken, Hangup) ends it."""
    async for _item in party.inbox:
        scope.cancel()
        return


def message_type(message: Message) -> str:
    return str(message["type"])
