"""The HTTP edge: raw ASGI endpoints for senders (POST/PUT) and receivers (GET) of a pipe.

These are raw ASGI callables, not Starlette endpoints, because chunk sizes and flow control
matter here; Starlette serves the reserved pages (``pages.py``).

A sender's life: validate → ``Join`` the owner → (waiting: log lines, hang-up watched with
``EPOLLRDHUP``, body untouched) → ``Start`` → pump the body into the ring while the owner's
notes become log lines → ``Finish`` ends the log. A receiver's: validate → ``Join`` →
(waiting: no response at all, except an SSE reader's head and pings) → ``Start`` → its
``Reader`` (``readers.py``, ``websocket.py``: raw, SSE, NDJSON, WebSocket) relays ring →
socket → clean end, or an end that says how the transfer broke (raw: the connection closed
before the last chunk).
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
from starlette.types import Message, Receive, Scope, Send

from ringpipe import metrics, shm
from ringpipe.connection import EXTENSION, Connection, HangupWatcher
from ringpipe.multipart import FirstPart, boundary_of
from ringpipe.node import Hangup, LocalParty, Node
from ringpipe.paths import parse_int_like_js, query_param
from ringpipe.protocol import Broken, Start
from ringpipe.readers import (
    HEADERS_IN_RING,
    STREAM_HEADERS,
    TEXT_HEADERS,
    Reader,
    ReadOptions,
    content_headers,
    http_reader,
    read_options,
    reject,
    worker_header,
)
from ringpipe.relay import Consumer, Ingest, Producer
from ringpipe.rendezvous import Accepted, Finish, ReceiverAborted, ReceiverConnected, Reject, Role
from ringpipe.websocket import WebSocketReader

__all__ = ["HEADERS_IN_RING", "PipeEndpoints", "content_headers", "reject", "worker_header"]

log = logging.getLogger("ringpipe.edge")

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
OWNER_LOST: Final = "The transfer was broken: a worker process of the server died."


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


class SenderLog:
    """The sender's response: a live log of ``[INFO]`` lines (one body at the end for HTTP/1.0)."""

    def __init__(self, send: Send, *, http10: bool, worker: int) -> None:
        self._send = send
        self._http10 = http10
        # nosniff: browsers would otherwise hold a text/plain response back to sniff its
        # type, and a page showing the live log would see nothing until the upload ended.
        self._headers = [*TEXT_HEADERS, *STREAM_HEADERS, (b"x-content-type-options", b"nosniff"), worker_header(worker)]
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
            metrics.BYTES_IN.inc(producer.bytes_written)
            if not vanished and not eof:
                producer.finish(broken=True)
            self.node.leave(party, completed=eof)
            producer.close()

    # -- receivers --

    async def receiver(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """A GET (any framing, ``readers.py``) or a WebSocket (``websocket.py``) on a pipe path."""
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
        party = self.node.open_party(path, Role.RECEIVER, n)

        def hangup() -> None:
            party.deliver(Hangup())

        try:
            async with reader.session(hangup):
                await self._receiver_life(reader, party)
        finally:
            if not party.left:
                self.node.leave(party, completed=False)

    def _reader(self, scope: Scope, receive: Receive, send: Send, options: ReadOptions) -> Reader:
        if scope["type"] == "websocket":
            return WebSocketReader(scope, receive, send, options)
        return http_reader(scope, send, options, worker=self.node.index, heartbeat=self.node.settings.heartbeat)

    async def _receiver_life(self, reader: Reader, party: LocalParty) -> None:
        start: Start | None = None
        async for item in party.inbox:
            if isinstance(item, Start):
                start = item
                break
            if isinstance(item, Reject):
                self.node.leave(party, completed=False)
                await reader.reject(item.status, item.message)
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
            ring = shm.RingSegment.attach(start.relay.segment)
        except FileNotFoundError:  # the sender vanished before we attached
            await reader.finish(False)
            return
        consumer = Consumer(self.node, ring, start.relay, start.slot)
        completed = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_inbox, party, tg.cancel_scope)
                completed = await reader.relay(consumer, start)
                tg.cancel_scope.cancel()
        finally:
            consumer.leave(shm.DONE if completed else shm.DETACHED)
            self.node.leave(party, completed=completed)
            consumer.close()
            with anyio.CancelScope(shield=True):
                await reader.finish(completed)


async def _cancel_on_inbox(party: LocalParty, scope: anyio.CancelScope) -> None:
    """During a transfer, anything in a receiver's inbox (Broken, Hangup) ends it."""
    async for _item in party.inbox:
        scope.cancel()
        return


def message_type(message: Message) -> str:
    return str(message["type"])
