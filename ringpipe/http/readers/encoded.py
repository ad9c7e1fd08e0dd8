"""The SSE and NDJSON readers (SPEC 2.1, 2.2): each chunk decoded from the ring, re-encoded by
``core.framing``, then the ending as an event or a line.

They copy each chunk once, encode it, and send it through uvicorn, which writes it at once:
the transport's write buffer limit is 0, so every write is flushed and awaited
(backpressure). While the reader's task sleeps caught up, ``EncodedWakeupDelivery`` runs
the same rounds from the wake-up callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

from starlette.types import Scope, Send

from ringpipe.core.control_frames import Start
from ringpipe.core.errors import Gap, PeerGone
from ringpipe.core.framing import RETRY, NdjsonEncoder, SseEncoder, is_event_stream
from ringpipe.http.readers.base import ReadOptions, ReadStart, part_headers
from ringpipe.http.readers.raw import HttpReader, WhenLost
from ringpipe.http.readers.wakeup_delivery import EncodedWakeupDelivery
from ringpipe.http.responses import HEADERS_IN_RING, STREAM_HEADERS, worker_header
from ringpipe.mesh.relay import Consumer
from ringpipe.ops import metrics

__all__ = ["NdjsonReader", "SseReader"]

#: What an ending event says when the relay was interrupted from outside (eviction, cancel).
_REASONS: Final = {
    "aborted": "the transfer was broken",
    "cancelled": "the transfer was cancelled",
    "lagged": "this reader made no progress and was evicted",
}


class _EncodedReader(HttpReader):
    """SSE and NDJSON: decode the ring's chunks and write them re-encoded, then the ending."""

    __slots__ = ("_last_write", "encoder", "ended", "options")

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
        """The head (if not out yet), then chunks → encoded writes until the ending
        (``Consumer.commit`` meters the bytes). The rounds run here, not in a coroutine of
        their own: a frame less per streaming reader."""
        if not await self._open(consumer, start, begin):
            return False
        conn = self.conn
        framed_here = not conn.tls and (conn.chunked_response or conn.unframed)
        delivery = EncodedWakeupDelivery(consumer, self) if framed_here else None
        encoder = self.encoder
        if delivery is not None:
            delivery.engage(direct=True)
        try:
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
        finally:
            if delivery is not None:
                delivery.disengage()

    async def _open(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
        """The encoder for the transfer, the head if it is not out yet, and the gap to report
        first; False if the producer vanished before its multipart headers (ended so)."""
        self._transfer_started(start)
        content_type = dict(start.receiver_headers).get("content-type")
        if (HEADERS_IN_RING, "1") in start.receiver_headers and consumer.offset == 0:
            part = await part_headers(consumer)
            if part is None:
                self._begin(content_type, 0, begin)
                if not self.head_sent:
                    return False
                await self._end("aborted", "the producer vanished")
                return False
            content_type = part.get("content-type")
            lost = self._begin(content_type, consumer.offset - consumer.bytes_read, begin)
        else:
            lost = self._begin(content_type, consumer.offset, begin)
        if not self.head_sent:
            await self._start()
        if lost:
            await self._write(lost)
        return True

    def _transfer_started(self, start: Start) -> None:
        """The framing's hook at the transfer's start (a hook rather than an override of
        ``relay``: that would be a coroutine more under every streaming reader)."""

    def _begin(self, content_type: str | None, offset: int, begin: ReadStart) -> bytes:
        """A new encoder for the producer's ``content_type`` from pipe ``offset``; returns the
        gap to report first (``begin.lost``, SPEC 2.4) or ``b""``.

        The gap is encoded before ``encoder.begin``: the encoder then starts at the gap's end
        as a fresh one would (a passed-through event stream skips to the next event boundary
        only where the start is not aligned, never at offset 0)."""
        raise NotImplementedError

    async def cancelled_while_waiting(self, message: str) -> None:
        if self.conn.lost.is_set():
            return
        with contextlib.suppress(OSError):
            if not self.head_sent:
                await self._start()
            await self._end("cancelled", _REASONS["cancelled"])

    async def reject(self, status: int, message: str) -> None:
        if not self.head_sent:
            await super().reject(status, message)
            return
        metrics.REJECTIONS.labels(code=str(status)).inc()
        await self._end("aborted", message)

    def finish_needed(self, completed: bool) -> bool:
        """Replaced characters to count, or (while the client is here) an ending still to
        write or an unanswered request to close: what ``finish`` would do."""
        if self.encoder.replaced:
            return True
        if self.conn.lost.is_set():
            return False
        return not self.ended if self.head_sent else not completed

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
    """``text/event-stream``: head and ``retry`` once admitted, pings while idle, events per chunk
    or per line (``ReadOptions.granularity``), a passed-through event stream's events with ids."""

    __slots__ = ("_beat", "_beating", "_epoch")

    content_type = b"text/event-stream"
    encoder: SseEncoder

    def __init__(self, scope: Scope, send: Send, options: ReadOptions, *, worker: int, heartbeat: float) -> None:
        super().__init__(scope, send, options, worker=worker, heartbeat=heartbeat)
        self.encoder = SseEncoder(epoch="", base64=options.base64, done_openai=options.done_openai)
        self._epoch = ""
        #: The heartbeat's timer, or the task writing a ping (only while one is written).
        self._beat: asyncio.TimerHandle | asyncio.Task[None] | None = None
        #: The heartbeat runs: from the head until the session's end.
        self._beating = False

    def _begin(self, content_type: str | None, offset: int, begin: ReadStart) -> bytes:
        options = self.options
        self.encoder = SseEncoder(
            epoch=self._epoch,
            offset=offset,
            base64=options.base64,
            done_openai=options.done_openai,
            granularity=options.granularity,
            aligned=_starts_on_a_boundary(content_type, begin),
        )
        self.encoder.begin(content_type)
        return self.encoder.gap(*begin.lost) if begin.lost else b""

    def _transfer_started(self, start: Start) -> None:
        self._epoch = start.relay.epoch

    async def admitted(self) -> None:
        if not self.head_sent:
            await self._start()  # at once, even while the producer is still to come

    async def _start(self, preamble: bytes = RETRY) -> None:
        await super()._start(preamble)
        if self.heartbeat > 0 and not self._beating:
            self._beating = True
            self._arm(self.heartbeat)

    def session(self, on_hangup: Callable[[], None]) -> contextlib.AbstractAsyncContextManager[None]:
        return _BeatingSession(self, on_hangup)

    # The heartbeat: ``: ping`` after ``heartbeat`` seconds without a write (proxies drop
    # silent streams). A timer, and a task only while a ping is written: a task sleeping
    # beside every SSE reader (with its coroutine and its sleep's future) is ~1 KiB it holds.

    def _arm(self, delay: float) -> None:
        self._beat = asyncio.get_running_loop().call_later(delay, self._beat_due)

    def _beat_due(self) -> None:
        self._beat = None
        if not self._beating or self.ended or self.conn.lost.is_set():
            return
        idle = time.monotonic() - self._last_write
        if idle < self.heartbeat:
            self._arm(self.heartbeat - idle)
            return
        ping = self.encoder.ping()
        if ping is None:  # passthrough, mid-line: try again a beat later
            self._last_write = time.monotonic()
            self._arm(self.heartbeat)
            return
        self._beat = asyncio.get_running_loop().create_task(self._ping(ping))

    async def _ping(self, ping: bytes) -> None:
        try:
            await self._write(ping)
        except OSError:
            self._beat = None
            return
        self._beat = None
        if self._beating and not self.ended:
            self._arm(self.heartbeat)

    async def stop_heartbeat(self) -> None:
        """The session ends: no more pings (a ping being written is cancelled and awaited)."""
        self._beating = False
        beat, self._beat = self._beat, None
        if isinstance(beat, asyncio.Task):
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        elif beat is not None:
            beat.cancel()


class _BeatingSession(WhenLost):
    """``SseReader.session``: ``WhenLost``, and the heartbeat stops at its end."""

    __slots__ = ("_reader",)

    def __init__(self, reader: SseReader, on_hangup: Callable[[], None]) -> None:
        super().__init__(reader.conn, on_hangup)
        self._reader = reader

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._reader.stop_heartbeat()
        finally:
            await super().__aexit__(*exc_info)


class NdjsonReader(_EncodedReader):
    """``application/x-ndjson``: the head when the transfer starts (as raw), a JSON line per
    chunk or per producer line (``ReadOptions.granularity``)."""

    __slots__ = ()

    content_type = b"application/x-ndjson"
    encoder: NdjsonEncoder

    def __init__(self, scope: Scope, send: Send, options: ReadOptions, *, worker: int, heartbeat: float) -> None:
        super().__init__(scope, send, options, worker=worker, heartbeat=heartbeat)
        self.encoder = NdjsonEncoder(base64=options.base64)

    def _begin(self, content_type: str | None, offset: int, begin: ReadStart) -> bytes:
        self.encoder = NdjsonEncoder(
            offset=offset,
            base64=self.options.base64,
            granularity=self.options.granularity,
            aligned=_starts_on_a_boundary(content_type, begin),
        )
        self.encoder.begin(content_type)
        return self.encoder.gap(*begin.lost) if begin.lost else b""


def _starts_on_a_boundary(content_type: str | None, begin: ReadStart) -> bool:
    """Whether the reader's first byte starts a record (a line, or a passed-through event).

    A passed-through event stream's events are known only by our ids (an offset from
    ``?offset=`` may fall inside one); a line record's end is what every other resume point
    names. A watcher or a reader that lost bytes starts wherever the window begins.
    """
    if is_event_stream(content_type):
        return begin.aligned
    return begin.lost is None and not begin.watcher
