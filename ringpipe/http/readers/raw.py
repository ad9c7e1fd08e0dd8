"""The plain GET reader (SPEC 1.1, 4): the producer's bytes, with the sender's headers.

It keeps the zero-copy path: each round is one ``writev`` of views into the ring. It is also
the base of the encoded readers (``readers.encoded``), which share its connection handling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import Scope, Send

from ringpipe.core.control_frames import Start
from ringpipe.core.errors import Gap, PeerGone, WouldBlock
from ringpipe.http.connection import EXTENSION, Connection
from ringpipe.http.readers.base import Reader, ReadStart, part_headers
from ringpipe.http.readers.wakeup_delivery import RawWakeupDelivery, framed
from ringpipe.http.responses import HEADERS_IN_RING, STREAM_HEADERS, content_headers, reject, worker_header
from ringpipe.http.uvicorn_shims import HeldHead
from ringpipe.mesh.relay import RAW_READ_LIMIT, Consumer

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["HttpReader", "WhenLost"]


class WhenLost:
    """``HttpReader.session``: ``on_hangup`` is the connection's lost-callback inside the block.

    A slotted object rather than an ``asynccontextmanager``: every waiting receiver holds its
    session for as long as it waits, and a generator-based one keeps a suspended async
    generator, its frame and the manager's own dict (~0.5 KiB) where this keeps two slots.
    """

    __slots__ = ("_callback", "_conn")

    def __init__(self, conn: Connection, callback: Callable[[], None]) -> None:
        self._conn = conn
        self._callback = callback

    async def __aenter__(self) -> None:
        self._conn.call_when_lost(self._callback)

    async def __aexit__(self, *exc_info: object) -> None:
        self._conn.forget_when_lost(self._callback)


class HttpReader(Reader):
    """A plain GET receiver: the producer's bytes, with the sender's headers (SPEC 1.1, 4)."""

    __slots__ = ("conn", "head_sent", "heartbeat", "http10", "send", "worker")

    def __init__(self, scope: Scope, send: Send, *, worker: int, heartbeat: float) -> None:
        # (The scope is read here only: a streaming reader keeps none of it.)
        self.send = send
        self.conn: Connection = scope["extensions"][EXTENSION]
        self.worker = worker
        self.heartbeat = heartbeat
        self.http10 = scope.get("http_version") == "1.0"
        self.head_sent = False

    def session(self, on_hangup: Callable[[], None]) -> contextlib.AbstractAsyncContextManager[None]:
        return WhenLost(self.conn, on_hangup)  # a callback, not a task: waiting receivers stay cheap

    async def reject(self, status: int, message: str) -> None:
        await reject(self.send, status, message)

    async def cancelled_while_waiting(self, message: str) -> None:
        # No head went out, and a raw body has no ending to say "cancelled": the error status.
        await self.reject(410, message)

    async def relay(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
        """The head, then ring → socket, zero-copy; True at the producer's clean end.

        Each round sends whatever is published (up to ``RAW_READ_LIMIT``) with one ``writev``
        of views into the ring (plus the chunk-size line when the response is chunked) and
        only then commits the read cursor, so the ring space stays reserved while the kernel
        copies. (``Consumer.commit`` also feeds the reader's metrics: bytes out, relay
        latency, lag.) While the task sleeps caught up, ``RawWakeupDelivery`` runs the same
        rounds from the wake-up callback (not over TLS, whose bytes the transport must
        encrypt). A raw reader cannot say how a transfer broke: every ending but done (and a
        watcher's gap) cuts the response. The rounds run here, not in a coroutine of their
        own: a frame less per streaming reader.
        """
        head = await self._respond(consumer, start, begin)
        if isinstance(head, bool):  # answered already (416), or the sender vanished first
            return head
        conn = self.conn
        chunked = conn.chunked_response
        delivery = None if conn.tls else RawWakeupDelivery(consumer, conn, chunked)
        if delivery is not None:  # direct only without a Content-Length for the producer's callback to count
            delivery.engage(direct=chunked or conn.unframed)
        try:
            if head is not None and not await _head_out(consumer, conn, chunked, head):
                return False
            del head
            while True:
                if not chunked and conn.body_left == 0:
                    # The client has the whole Content-Length (perhaps sent from the wake-up callback)
                    # and may hang up before the producer's EOF reaches us: this receiver is complete now.
                    break
                try:
                    views, next_seq = await consumer.views(RAW_READ_LIMIT)
                except (PeerGone, Gap):
                    return False
                if not views:
                    break
                if not await _send_round(consumer, conn, chunked, views, next_seq):
                    return False
        finally:
            if delivery is not None:
                delivery.disengage()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _respond(self, consumer: Consumer, start: Start, begin: ReadStart) -> bytes | bool | None:
        """Send the response head: the bytes ``HeldHead`` held back for the first round (None:
        it went out as it came), or the relay's result if it is over already (True: nothing
        is left of the range, answered 416; False: the sender vanished before its multipart
        headers)."""
        offset = consumer.offset
        relayed: list[tuple[str, str]] | None = list(start.receiver_headers)
        if (HEADERS_IN_RING, "1") in start.receiver_headers:
            if offset == 0:
                relayed = await _headers_from_ring(consumer, list(start.receiver_headers))
            else:  # joined past the part's headers: relay the bytes untyped
                relayed = [h for h in start.receiver_headers if h[0] != HEADERS_IN_RING]
        if relayed is None:  # the sender vanished before its part headers
            return False
        status = 200
        if begin.watcher or begin.resumed or offset > 0:
            relayed = _with_length(relayed, consumer.offset)
            relayed += [("ringpipe-offset", str(consumer.offset)), ("ringpipe-epoch", start.relay.epoch)]
            if begin.by_range:
                total = next((int(v) + offset for k, v in relayed if k == "content-length"), None)
                if total is not None and offset >= total:
                    # Nothing is left to send (RFC 9110, 15.5.17): 416 with the length. The
                    # reader holds the whole body: its slot is done, not dropped.
                    message = f"The range starts at byte {offset}, the end of the pipe's {total} bytes."
                    await reject(self.send, 416, message, extra=[(b"content-range", f"bytes */{total}".encode())])
                    self.head_sent = True
                    return True
                status = 206
                last = f"{total - 1}/{total}" if total else "*/*"
                relayed.append(("content-range", f"bytes {offset}-{last}"))
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in relayed]
        headers += [*STREAM_HEADERS, worker_header(self.worker)]
        if self.http10 and not any(k == b"content-length" for k, _ in headers):
            self.conn.unframed_response()  # HTTP/1.0 has no chunks: the body ends at close
        held = HeldHead(self._cycle_to_hold())
        with held:
            await self.send({"type": "http.response.start", "status": status, "headers": headers})
        self.head_sent = True
        return held.take()

    def finish_needed(self, completed: bool) -> bool:
        return not completed and not self.conn.lost.is_set()

    def _cycle_to_hold(self) -> RequestResponseCycle | None:
        """The response cycle whose head ``relay`` holds back for the first body bytes: only
        one that writes straight to this connection's socket transport (not TLS, not through
        the HTTP/1.0 status-line shim) and has not started its response."""
        conn = self.conn
        cycle = None if conn.tls else conn.unstarted_cycle()
        return cycle if cycle is not None and cycle.transport is conn.transport else None

    async def finish(self, completed: bool, ending: str | None = None) -> None:
        if HttpReader.finish_needed(self, completed):
            await self.conn.close()


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


async def _headers_from_ring(consumer: Consumer, relayed: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """A multipart upload's response headers: the first part's content headers, then ours;
    None if the producer vanished first (the receiver's connection is then closed unanswered)."""
    part = await part_headers(consumer)
    if part is None:
        return None
    content = content_headers(None, part.get("content-type"), part.get("content-disposition"))
    return content + [h for h in relayed if h[0] != HEADERS_IN_RING]


async def _head_out(consumer: Consumer, conn: Connection, chunked: bool, head: bytes) -> bool:
    """Write the response ``head`` held back by ``HeldHead``: with the first round's bytes when
    they are published already (one ``writev``: a syscall and a wake-up of the client less),
    else alone at once, before the task can sleep (so it is never late, and nothing the
    wake-up delivery writes can pass it). Only into an empty transport buffer: then the
    ``writev`` goes out before ``write_parts`` can wait. False: the client is gone."""
    views: list[memoryview] = []
    next_seq = 0
    if conn.can_write_now() and consumer.in_lockstep and not consumer.satisfied and (chunked or conn.body_left):
        with contextlib.suppress(WouldBlock, PeerGone):  # ``views`` meets either again
            views, next_seq = consumer.ring.peek(consumer.slot, RAW_READ_LIMIT)
    if not views:
        conn.write_raw(head)
        return True
    return await _send_round(consumer, conn, chunked, views, next_seq, head)


async def _send_round(
    consumer: Consumer, conn: Connection, chunked: bool, views: list[memoryview], next_seq: int, head: bytes = b""
) -> bool:
    """One round: ``views`` (and ``head`` before them) in one ``writev``, then the read cursor
    committed past them; the views are released either way. False: the client is gone."""
    size = sum(map(len, views))
    parts, total = framed(views, size, chunked)
    try:
        await conn.write_parts([head, *parts] if head else parts, len(head) + total)
    except ConnectionError:
        return False
    finally:
        del parts
        for view in views:
            view.release()
    consumer.commit(next_seq, size)
    if not chunked:
        conn.account_body(size)
    return True
