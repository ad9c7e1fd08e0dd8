"""A receiver's response, per framing (SPEC 2.1, 2.2, 2.7): the I/O shell around ``framing.py``.

``edge.py`` runs every receiver's life the same way (join, wait, start, relay, leave) and asks
its ``Reader`` for what differs:

- ``session(on_hangup)``: the reader's connection for the whole life (hang-up callback; SSE
  also sends its head *at once*, with ``retry: 1000``, and a ``: ping`` comment after every
  ``heartbeat`` seconds without a write, while waiting and while idle);
- ``reject(status, message)``: the piping error form before the head, an in-band event after;
- ``relay(consumer, start)``: the response from the transfer's start to its ending; True only
  for a complete transfer (the producer's clean end);
- ``finish(completed)``: make an incomplete end visible (raw: close before the last chunk;
  SSE/NDJSON: the ending, if none went out yet).

Raw readers keep the zero-copy path (``_copy_out``: ``writev`` of ring views). SSE and NDJSON
copy each chunk once, encode it, and send it through uvicorn, which writes it at once: the
transport's write buffer limit is 0, so every write is flushed and awaited (backpressure).

Every streaming response carries ``STREAM_HEADERS``: ``Cache-Control: no-cache, no-transform``
and ``X-Accel-Buffering: no``, so caches and proxies (nginx) neither store, transform nor
buffer it; ringpipe never compresses a response.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from starlette.types import Scope, Send

from ringpipe.core.control_frames import Start
from ringpipe.core.errors import Gap, PeerGone, WouldBlock
from ringpipe.core.framing import RETRY, NdjsonEncoder, SseEncoder
from ringpipe.core.paths import query_param
from ringpipe.http.connection import EXTENSION, Connection
from ringpipe.mesh.relay import HEADER_BLOCK, HEADER_MAGIC, RAW_READ_LIMIT, READ_LIMIT, Consumer, parse_header_block
from ringpipe.ops import metrics

__all__ = [
    "HEADERS_IN_RING",
    "STREAM_HEADERS",
    "TEXT_HEADERS",
    "HttpReader",
    "ReadOptions",
    "ReadStart",
    "Reader",
    "content_headers",
    "http_reader",
    "part_headers",
    "read_options",
    "reject",
    "worker_header",
]

log = logging.getLogger("ringpipe.readers")

TEXT_HEADERS: Final = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*")]
#: On every streaming response (SPEC 2.7): no cache or proxy may store, transform or buffer it.
STREAM_HEADERS: Final = [(b"cache-control", b"no-cache, no-transform"), (b"x-accel-buffering", b"no")]
#: Internal marker in a Join's receiver headers (never sent): the sender's upload is
#: multipart, and the first part's headers come through the ring ahead of its data.
HEADERS_IN_RING: Final = "ringpipe-headers-in-ring"
_MIME = re.compile(r"^\s*([^;]*)(\s*;?.*)$", re.DOTALL)

HTTP_FORMATS: Final = ("raw", "sse", "ndjson")
WEBSOCKET_FORMATS: Final = ("raw", "lines", "text")


#: What an ending event says when the relay was interrupted from outside (eviction, cancel).
_REASONS: Final = {
    "aborted": "the transfer was broken",
    "cancelled": "the transfer was cancelled",
    "lagged": "this reader made no progress and was evicted",
}


async def reject(send: Send, status: int, message: str, *, close: bool = False, head: bool = False) -> None:
    """Answer with the piping error form: ``[ERROR] <message>``, text/plain, CORS open."""
    body = f"[ERROR] {message}\n".encode()
    headers = [*TEXT_HEADERS, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    metrics.REJECTIONS.labels(code=str(status)).inc()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def worker_header(index: int) -> tuple[bytes, bytes]:
    """``Ringpipe-Worker``: which worker process served this party (for operators and tests)."""
    return (b"ringpipe-worker", str(index).encode())


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


# -- options --


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How a reader wants the pipe: ``?format=``, ``?encoding=base64``, ``?done=openai``."""

    format: str = "raw"
    base64: bool = False
    done_openai: bool = False


@dataclass(frozen=True, slots=True)
class ReadStart:
    """Where a reader joins the pipe (SPEC 2.4): a watcher, a resumed receiver (offset,
    ``Last-Event-ID``), by ``Range`` (raw answers 206). A fresh receiver is the default."""

    watcher: bool = False
    resumed: bool = False
    by_range: bool = False


def read_options(scope: Scope) -> ReadOptions | str:
    """The reader's options, or the rejection message for a value we do not know.

    HTTP: ``?format=raw|sse|ndjson`` (``Accept: text/event-stream`` means sse when ``format``
    is absent, which is what EventSource sends); WebSocket: ``?format=raw|lines|text``.
    """
    query = scope["query_string"]
    websocket = scope["type"] == "websocket"
    known = WEBSOCKET_FORMATS if websocket else HTTP_FORMATS
    fmt = query_param(query, "format")
    if fmt is None:
        accept = b",".join(v for k, v in scope["headers"] if k == b"accept").lower()
        fmt = "sse" if not websocket and b"text/event-stream" in accept else "raw"
    if fmt not in known:
        return f"Unknown format '{fmt}': use {', '.join(known[:-1])} or {known[-1]}."
    encoding = query_param(query, "encoding") or "text"
    if encoding not in ("text", "base64"):
        return f"Unknown encoding '{encoding}': use text or base64."
    done = query_param(query, "done")
    if done not in (None, "openai"):
        return f"Unknown done marker '{done}': use openai."
    return ReadOptions(fmt, encoding == "base64", done == "openai")


# -- readers --


class Reader(abc.ABC):
    """What differs between framings in a receiver's life (see the module docstring)."""

    @abc.abstractmethod
    def session(self, on_hangup: Callable[[], None]) -> contextlib.AbstractAsyncContextManager[None]:
        """The reader's connection from its join to its leave; ``on_hangup`` once the client is gone."""

    @abc.abstractmethod
    async def reject(self, status: int, message: str) -> None:
        """Refuse the reader with ``status`` and the piping error text ``message``."""

    @abc.abstractmethod
    async def relay(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
        """The response from the transfer's start to its ending; True for a complete transfer.

        Raises:
            OSError: the client went away while we wrote (the caller treats it as gone).
        """

    @abc.abstractmethod
    async def finish(self, completed: bool, ending: str | None = None) -> None:
        """After the relay (or instead of it): make an incomplete end visible to the client,
        saying ``ending`` (``errors.ENDINGS``; None: unknown, told as aborted) where the
        framing can."""


class _WhenLost:
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

    def __init__(self, scope: Scope, send: Send, *, worker: int, heartbeat: float) -> None:
        self.scope = scope
        self.send = send
        self.conn: Connection = scope["extensions"][EXTENSION]
        self.worker = worker
        self.heartbeat = heartbeat
        self.http10 = scope.get("http_version") == "1.0"
        self.head_sent = False

    def session(self, on_hangup: Callable[[], None]) -> contextlib.AbstractAsyncContextManager[None]:
        return _WhenLost(self.conn, on_hangup)  # a callback, not a task: waiting receivers stay cheap

    async def reject(self, status: int, message: str) -> None:
        await reject(self.send, status, message)

    async def relay(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
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
                status = 206
                total = next((int(v) + offset for k, v in relayed if k == "content-length"), None)
                last = f"{total - 1}/{total}" if total else "*/*"
                relayed.append(("content-range", f"bytes {offset}-{last}"))
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in relayed]
        headers += [*STREAM_HEADERS, worker_header(self.worker)]
        if self.http10 and not any(k == b"content-length" for k, _ in headers):
            self.conn.unframed_response()  # HTTP/1.0 has no chunks: the body ends at close
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        self.head_sent = True
        completed = await _copy_out(consumer, self.conn)
        if completed:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return completed

    async def finish(self, completed: bool, ending: str | None = None) -> None:
        if not completed and not self.conn.lost.is_set():
            await self.conn.close()


def http_reader(scope: Scope, send: Send, options: ReadOptions, *, worker: int, heartbeat: float) -> HttpReader:
    if options.format == "sse":
        return SseReader(scope, send, options, worker=worker, heartbeat=heartbeat)
    if options.format == "ndjson":
        return NdjsonReader(scope, send, options, worker=worker, heartbeat=heartbeat)
    return HttpReader(scope, send, worker=worker, heartbeat=heartbeat)


class _EncodedReader(HttpReader):
    """SSE and NDJSON: decode the ring's chunks and write them re-encoded, then the ending."""

    content_type: bytes = b""
    encoder: SseEncoder | NdjsonEncoder

    def __init__(self, scope: Scope, send: Send, options: ReadOptions, *, worker: int, heartbeat: float) -> None:
        super().__init__(scope, send, worker=worker, heartbeat=heartbeat)
        self.options = options
        self.ended = False
        self._last_write = time.monotonic()

    def _head(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", self.content_type),
            (b"access-control-allow-origin", b"*"),
            *STREAM_HEADERS,
            (b"x-content-type-options", b"nosniff"),
            (b"x-robots-tag", b"none"),
            worker_header(self.worker),
        ]

    async def _start(self, preamble: bytes = b"") -> None:
        if self.http10:
            self.conn.unframed_response()
        await self.send({"type": "http.response.start", "status": 200, "headers": self._head()})
        self.head_sent = True
        if preamble:
            await self._write(preamble)

    async def _write(self, data: bytes) -> None:
        self._last_write = time.monotonic()
        await self._body(data, more=True)

    async def _body(self, data: bytes, *, more: bool) -> None:
        """Send body bytes. An HTTP/1.0 response has no framing (it ends at close), which
        uvicorn's cycle cannot send; its bytes go straight to the connection, as raw ones do."""
        if self.http10:
            if data:
                # Like uvicorn's ``send`` once the client is gone: nothing to tell anyone
                # (the hang-up callback ends this reader).
                with contextlib.suppress(ConnectionError):
                    await self.conn.write_parts([data], len(data))
            if more:
                return
            data = b""
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def _end(self, ending: str, reason: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        tail = self.encoder.end(ending, reason)
        await self._body(tail, more=False)

    async def relay(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
        content_type = dict(start.receiver_headers).get("content-type")
        if (HEADERS_IN_RING, "1") in start.receiver_headers and consumer.offset == 0:
            part = await part_headers(consumer)
            if part is None:
                self._begin(content_type, 0)
                if not self.head_sent:
                    return False
                await self._end("aborted", "the producer vanished")
                return False
            content_type = part.get("content-type")
            self._begin(content_type, consumer.offset - consumer.bytes_read)
        else:
            self._begin(content_type, consumer.offset)
        if not self.head_sent:
            await self._start()
        return await self._pump(consumer)

    def _begin(self, content_type: str | None, offset: int) -> None:
        raise NotImplementedError

    async def _pump(self, consumer: Consumer) -> bool:
        """Chunks → encoded writes until the ending (``Consumer.commit`` meters the bytes)."""
        conn = self.conn
        if not conn.tls and (conn.chunked_response or conn.unframed):
            consumer.express = _TextExpress(consumer, self)
        try:
            return await self._pump_rounds(consumer)
        finally:
            consumer.express = None

    async def _pump_rounds(self, consumer: Consumer) -> bool:
        encoder = self.encoder
        while True:
            try:
                views, next_seq = await consumer.views()
            except Gap as gap:
                await self._write(encoder.gap(gap.lost_from, gap.lost_to))
                continue
            except PeerGone as gone:
                await self._end(gone.ending, str(gone))
                return False
            if not views:
                await self._end("done")
                return True
            data = b"".join(views)
            for view in views:
                view.release()
            out = encoder.feed(data)
            if out:
                await self._write(out)
            consumer.commit(next_seq, len(data))

    async def finish(self, completed: bool, ending: str | None = None) -> None:
        try:
            await self._finish(completed, ending)
        finally:
            if self.encoder.replaced:
                metrics.invalid_utf8("sse" if isinstance(self, SseReader) else "ndjson", self.encoder.replaced)

    async def _finish(self, completed: bool, ending: str | None) -> None:
        if self.conn.lost.is_set():
            return
        if self.head_sent and not self.ended:
            with contextlib.suppress(OSError):
                await self._end(ending or "aborted", _REASONS.get(ending or "aborted"))
            return
        if not completed and not self.head_sent:
            await self.conn.close()


class SseReader(_EncodedReader):
    """``text/event-stream``: head and ``retry`` at once, pings while idle, events per chunk."""

    content_type = b"text/event-stream"
    encoder: SseEncoder

    def __init__(self, scope: Scope, send: Send, options: ReadOptions, *, worker: int, heartbeat: float) -> None:
        super().__init__(scope, send, options, worker=worker, heartbeat=heartbeat)
        self.encoder = SseEncoder(epoch="", base64=options.base64, done_openai=options.done_openai)
        self._epoch = ""

    def _begin(self, content_type: str | None, offset: int) -> None:
        self.encoder = SseEncoder(
            epoch=self._epoch, offset=offset, base64=self.options.base64, done_openai=self.options.done_openai
        )
        self.encoder.begin(content_type)

    async def relay(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
        self._epoch = start.relay.epoch
        return await super().relay(consumer, start, begin)

    @contextlib.asynccontextmanager
    async def session(self, on_hangup: Callable[[], None]) -> AsyncIterator[None]:
        async with super().session(on_hangup):
            await self._start(RETRY)  # at once, even while the producer is still to come
            beat = asyncio.create_task(self._heartbeat()) if self.heartbeat > 0 else None
            try:
                yield
            finally:
                if beat is not None:
                    beat.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beat

    async def _heartbeat(self) -> None:
        """``: ping`` after ``heartbeat`` seconds without a write (proxies drop silent streams)."""
        while not self.ended and not self.conn.lost.is_set():
            idle = time.monotonic() - self._last_write
            if idle < self.heartbeat:
                await asyncio.sleep(self.heartbeat - idle)
                continue
            ping = self.encoder.ping()
            if ping is None:  # passthrough, mid-line: try again a beat later
                self._last_write = time.monotonic()
                continue
            try:
                await self._write(ping)
            except OSError:
                return

    async def reject(self, status: int, message: str) -> None:
        if not self.head_sent:
            await super().reject(status, message)
            return
        metrics.REJECTIONS.labels(code=str(status)).inc()
        self.ended = True
        await self._body(self.encoder.rejected(status, message), more=False)


class NdjsonReader(_EncodedReader):
    """``application/x-ndjson``: the head when the transfer starts (as raw), a JSON line per chunk."""

    content_type = b"application/x-ndjson"
    encoder: NdjsonEncoder

    def __init__(self, scope: Scope, send: Send, options: ReadOptions, *, worker: int, heartbeat: float) -> None:
        super().__init__(scope, send, options, worker=worker, heartbeat=heartbeat)
        self.encoder = NdjsonEncoder(base64=options.base64)

    def _begin(self, content_type: str | None, offset: int) -> None:
        self.encoder = NdjsonEncoder(offset=offset, base64=self.options.base64)
        self.encoder.begin(content_type)


async def part_headers(consumer: Consumer) -> dict[str, str] | None:
    """A multipart upload's first-part headers from the head of the ring; None if the
    producer vanished first."""
    try:
        magic, size = HEADER_BLOCK.unpack(await consumer.read_exact(HEADER_BLOCK.size))
        if magic != HEADER_MAGIC:
            raise PeerGone("no header block at the head of the ring")
        return dict(parse_header_block(await consumer.read_exact(size)))
    except PeerGone:
        return None


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


async def _copy_out(consumer: Consumer, conn: Connection) -> bool:
    """Ring → socket for one receiver, zero-copy; True at the producer's clean end.

    Each round sends whatever is published (up to ``RAW_READ_LIMIT``) with one ``writev`` of
    views into the ring (plus the chunk-size line when the response is chunked) and only
    then commits the read cursor, so the ring space stays reserved while the kernel copies.
    (``Consumer.commit`` also feeds the reader's metrics: bytes out, relay latency, lag.)
    A raw reader cannot say how a transfer broke: every ending but done (and a watcher's
    gap) cuts the response.
    """
    chunked = conn.chunked_response
    if not conn.tls:
        consumer.express = _RawExpress(consumer, conn, chunked)
    try:
        return await _copy_rounds(consumer, conn, chunked)
    finally:
        consumer.express = None


async def _copy_rounds(consumer: Consumer, conn: Connection, chunked: bool) -> bool:
    while True:
        if not chunked and conn.body_left == 0:
            # The client has the whole Content-Length (perhaps sent by ``_Express``) and may
            # hang up before the producer's EOF reaches us: this receiver is complete now.
            return True
        try:
            views, next_seq = await consumer.views(RAW_READ_LIMIT)
        except (PeerGone, Gap):
            return False
        if not views:
            return True
        size = sum(map(len, views))
        parts, total = _framed(views, size, chunked)
        try:
            await conn.write_parts(parts, total)
        except ConnectionError:
            return False
        finally:
            del parts
            for view in views:
                view.release()
        consumer.commit(next_seq, size)
        if not chunked:
            conn.account_body(size)


def _framed(body: list[memoryview] | list[bytes], size: int, chunked: bool) -> tuple[list[memoryview | bytes], int]:
    """``body`` (``size`` bytes) as the parts of one write, and their total: one chunk of a
    chunked response (size line, bytes, CRLF), or the bytes alone."""
    if not chunked:
        return [*body], size
    head = b"%x\r\n" % size
    return [head, *body, b"\r\n"], len(head) + size + 2


class _Express:
    """A reader's round run from the wake-up callback itself (``Consumer.express``).

    A receiver caught up with the writer sleeps until the producer publishes; waking its
    task to send a 64-byte token costs more than sending it. So while the task sleeps in
    ``Consumer.views``, the wake-up runs the same round right here: peek, one ``writev``,
    commit, ask for the next wake-up. The task is woken instead, to do it the slow way,
    whenever anything is unusual: the socket has a backlog (backpressure stays the task's
    job), the transfer ended or broke, the Content-Length is complete, or bytes keep
    coming (after ``ROUNDS`` rounds, so one busy pipe cannot hog the callback).
    Invariant: a round commits exactly the bytes that went to the kernel or were copied
    into the transport, so the task resumes at the right cursor whatever happened here.
    """

    ROUNDS: Final = 4
    __slots__ = ("conn", "consumer")

    def __init__(self, consumer: Consumer, conn: Connection) -> None:
        self.consumer = consumer
        self.conn = conn

    def __call__(self) -> bool:
        """True: served, the task may sleep on; False: wake the task."""
        consumer = self.consumer
        if not consumer.in_lockstep:
            return False
        try:
            for _ in range(self.ROUNDS):
                if not self._round():
                    return False
                if consumer.rearm():
                    return True
        except Exception:  # never break the producer's callback: the task will see it again
            log.debug("express round failed; the reader's task takes over", exc_info=True)
        return False

    def _round(self) -> bool:
        """One round; True if it sent everything it took and the reader may go on."""
        raise NotImplementedError


class _RawExpress(_Express):
    """``_copy_out``'s round: ring views straight to the socket."""

    __slots__ = ("chunked",)

    def __init__(self, consumer: Consumer, conn: Connection, chunked: bool) -> None:
        super().__init__(consumer, conn)
        self.chunked = chunked

    def _round(self) -> bool:
        consumer, conn = self.consumer, self.conn
        try:
            views, next_seq = consumer.ring.peek(consumer.slot, RAW_READ_LIMIT)
        except (WouldBlock, PeerGone):
            return False
        if not views:
            return False
        size = sum(map(len, views))
        chunked = self.chunked
        parts, total = _framed(views, size, chunked)
        try:
            sent = conn.write_parts_now(parts, total)
        except ConnectionError:
            sent = None
        finally:
            del parts
            for view in views:
                view.release()
        if sent is None:
            return False
        consumer.commit(next_seq, size)
        if not chunked:
            conn.account_body(size)
            if conn.body_left == 0:
                consumer.satisfied = True  # the task returns from ``views`` and completes
                return False
        return sent


class _TextExpress(_Express):
    """``_EncodedReader._pump``'s round: a chunk re-encoded (SSE, NDJSON), framed by hand as
    uvicorn would (a chunk of the chunked body; nothing for an unframed HTTP/1.0 body)."""

    __slots__ = ("reader",)

    def __init__(self, consumer: Consumer, reader: _EncodedReader) -> None:
        super().__init__(consumer, reader.conn)
        self.reader = reader

    def _round(self) -> bool:
        consumer, conn = self.consumer, self.conn
        if not conn.can_write_now():  # checked first: the encoder must not see bytes we then cannot send
            return False
        try:
            views, next_seq = consumer.ring.peek(consumer.slot, READ_LIMIT)
        except (WouldBlock, PeerGone):
            return False
        if not views:
            return False
        data = b"".join(views)
        for view in views:
            view.release()
        out = self.reader.encoder.feed(data)
        sent: bool | None = True
        if out:
            self.reader._last_write = time.monotonic()
            parts, total = _framed([out], len(out), not conn.unframed)
            try:
                sent = conn.write_parts_now(parts, total)
            except ConnectionError:
                sent = None  # the bytes are spent: the task meets the dead socket on its next write
        consumer.commit(next_seq, len(data))
        return bool(sent)
