"""A caught-up reader served from the ring's wake-up callback itself (``Consumer.express``).

A receiver caught up with the writer sleeps until the producer publishes; waking its task
to send a 64-byte token costs more than sending it. So while the task sleeps in
``Consumer.views``, the wake-up runs the same round right here: peek, one ``writev``,
commit, ask for the next wake-up. The task is woken instead, to do it the slow way,
whenever anything is unusual: the socket has a backlog (backpressure stays the task's
job), the transfer ended or broke, the Content-Length is complete, or bytes keep coming
(after ``ROUNDS`` rounds, so one busy pipe cannot hog the callback).

Closer still, when the producer runs in this worker: the same objects are the ring's
``relay.DirectSink``s, and ``deliver`` takes the bytes the producer just wrote straight from
its read buffer (``Producer.offer``), with no wake-up and no ``peek``; it declines, leaving
the usual wake-up to follow, whenever a round would have woken the task.

Invariant: a round (or a delivery) commits exactly the bytes that went to the kernel or were
copied into the transport, so the task resumes at the right cursor whatever happened here.
"""

from __future__ import annotations

import logging
import time
from typing import Final, Protocol

from ringpipe.core.errors import PeerGone, WouldBlock
from ringpipe.core.framing import NdjsonEncoder, SseEncoder
from ringpipe.http.connection import Buffer, Connection
from ringpipe.mesh.relay import RAW_READ_LIMIT, READ_LIMIT, Consumer, DirectSink

__all__ = [
    "EncodedWakeupDelivery",
    "EncodingReader",
    "RawWakeupDelivery",
    "WakeupDelivery",
    "chunk_head",
    "framed",
]

log = logging.getLogger("ringpipe.readers")


def chunk_head(size: int) -> tuple[bytes, int]:
    """The size line of a chunk of ``size`` bytes, and all the framing bytes the chunk adds
    (that line and the CRLF after the data)."""
    head = b"%x\r\n" % size
    return head, len(head) + 2


#: ``chunk_head`` of token-sized chunks, made once rather than formatted per write (the
#: per-token paths index it themselves for sizes under 1024).
_SMALL_FRAMES: Final = tuple(chunk_head(size) for size in range(1024))


def framed(body: list[memoryview] | list[bytes], size: int, chunked: bool) -> tuple[list[memoryview | bytes], int]:
    """``body`` (``size`` bytes) as the parts of one write, and their total: one chunk of a
    chunked response (size line, bytes, CRLF), or the bytes alone."""
    if not chunked:
        return [*body], size
    head, framing = _SMALL_FRAMES[size] if size < 1024 else chunk_head(size)
    return [head, *body, b"\r\n"], size + framing


class WakeupDelivery:
    """A reader's rounds run from its wake-up callback (see the module docstring).

    Set as ``Consumer.express`` while the reader's task relays; the subclass says what one
    round sends (``_round``), or runs the rounds itself (``__call__``).
    """

    ROUNDS: Final = 4
    __slots__ = ("_sinks", "conn", "consumer")

    def __init__(self, consumer: Consumer, conn: Connection) -> None:
        self.consumer = consumer
        self.conn = conn
        #: The producer's direct sinks this joined (``engage``), until ``disengage``.
        self._sinks: list[DirectSink] | None = None

    def engage(self, *, direct: bool) -> None:
        """From now on (until ``disengage``), serve the consumer's wake-ups (``Consumer.express``)
        and, with ``direct``, take the producer's bytes too where it is in this worker
        (``Consumer.take_directly``). Done here, not by a context manager: every relaying
        reader would hold one, and its bound exit, for as long as it relays."""
        self.consumer.express = self
        if direct:
            self._sinks = self.consumer.take_directly(self)

    def disengage(self) -> None:
        self.consumer.express = None
        sinks, self._sinks = self._sinks, None
        if sinks is not None:
            self.consumer.stop_taking_directly(sinks, self)

    def __call__(self) -> bool:
        """True: served, the task may sleep on; False: wake the task."""
        consumer = self.consumer
        if not consumer.in_lockstep:
            return False
        try:
            ring, slot = consumer.ring, consumer.slot
            for _ in range(self.ROUNDS):
                if not self._round():
                    return False
                if ring.arm_reader(slot):  # ``consumer.rearm()``, inlined: this runs per token
                    return True
        except Exception:  # never break the producer's callback: the task will see it again
            log.debug("express round failed; the reader's task takes over", exc_info=True)
        return False

    def _round(self) -> bool:
        """One round; True if it sent everything it took and the reader may go on."""
        raise NotImplementedError

    def deliver(self, data: bytes | bytearray | memoryview, size: int, end_seq: int) -> bool:
        """``relay.DirectSink``: take the producer's just-published bytes now, or decline."""
        raise NotImplementedError

    def _may_take(self, size: int, end_seq: int) -> bool:
        """Whether the reader's task sleeps in lockstep with its cursor just where the
        producer's ``size`` new bytes (ending at ``end_seq``) begin (``relay.DirectSink``)."""
        consumer = self.consumer
        future = consumer.sleeper.future
        return (
            future is not None
            and not future.done()
            and consumer.in_lockstep
            and consumer.ring.caught_up_at(consumer.slot, end_seq - size)
        )


class RawWakeupDelivery(WakeupDelivery):
    """The raw reader's rounds: ring views straight to the socket.

    ``__call__`` is ``WakeupDelivery.__call__`` with the round written into the loop: one
    Python frame per token on the reader's side, not two.
    """

    __slots__ = ("chunked",)

    def __init__(self, consumer: Consumer, conn: Connection, chunked: bool) -> None:
        super().__init__(consumer, conn)
        self.chunked = chunked

    def deliver(self, data: bytes | bytearray | memoryview, size: int, end_seq: int) -> bool:
        """``relay.DirectSink``: the producer's just-published ``data`` (``size`` bytes, ending
        at ``end_seq``), from its own buffer to this reader's socket, while the reader's task
        sleeps caught up. Registered only for a response with no Content-Length to count
        (chunked, or unframed HTTP/1.0). Same invariant as a round: the cursor moves by
        exactly what the kernel or the transport took."""
        if not self._may_take(size, end_seq):
            return False
        if self.chunked:
            head, framing = _SMALL_FRAMES[size] if size < 1024 else chunk_head(size)
            parts: list[Buffer] = [head, data, b"\r\n"]
            total = size + framing
        else:
            parts, total = [data], size
        try:
            if self.conn.write_parts_now(parts, total) is None:
                return False
        except ConnectionError:
            return False  # the task meets the dead socket when it is woken
        self.consumer.commit(end_seq, size)
        return True

    def __call__(self) -> bool:
        consumer = self.consumer
        if not consumer.in_lockstep:
            return False
        conn, ring, slot, chunked = self.conn, consumer.ring, consumer.slot, self.chunked
        try:
            for _ in range(self.ROUNDS):
                try:
                    views, next_seq = ring.peek(slot, RAW_READ_LIMIT)
                except (WouldBlock, PeerGone):
                    return False
                if not views:
                    return False
                size = len(views[0]) if len(views) == 1 else sum(map(len, views))
                if chunked:  # ``framed``, inlined
                    head, framing = _SMALL_FRAMES[size] if size < 1024 else chunk_head(size)
                    parts: list[memoryview | bytes] = [head, *views, b"\r\n"]
                    total = size + framing
                else:
                    parts, total = [*views], size
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
                if not sent:
                    return False
                if ring.arm_reader(slot):  # all went out: ask for the next wake-up
                    return True
        except Exception:  # never break the producer's callback: the task will see it again
            log.debug("express round failed; the reader's task takes over", exc_info=True)
        return False


class EncodingReader(Protocol):
    """What ``EncodedWakeupDelivery`` uses of an SSE or NDJSON reader."""

    conn: Connection
    #: ``time.monotonic()`` of the reader's last write (its heartbeat counts from there).
    _last_write: float

    @property
    def encoder(self) -> SseEncoder | NdjsonEncoder: ...


class EncodedWakeupDelivery(WakeupDelivery):
    """An SSE or NDJSON reader's round: a chunk re-encoded, framed by hand as uvicorn would
    (a chunk of the chunked body; nothing for an unframed HTTP/1.0 body)."""

    __slots__ = ("reader",)

    def __init__(self, consumer: Consumer, reader: EncodingReader) -> None:
        super().__init__(consumer, reader.conn)
        self.reader = reader

    def deliver(self, data: bytes | bytearray | memoryview, size: int, end_seq: int) -> bool:
        """``relay.DirectSink``: the producer's just-published ``data`` encoded and written
        from its own data callback, as ``_round`` would from the ring. Registered only for a
        chunked or unframed response (as this class is)."""
        conn = self.conn
        if not self._may_take(size, end_seq) or not conn.can_write_now():
            return False
        self._send(self.reader.encoder.feed(bytes(data)))
        self.consumer.commit(end_seq, size)
        return True

    def _send(self, out: bytes) -> bool | None:
        """Write encoded bytes as a chunk now (see ``Connection.write_parts_now``); None if
        they were spent on a dead socket (the task meets it on its next write)."""
        if not out:
            return True
        self.reader._last_write = time.monotonic()
        conn = self.conn
        size = len(out)
        if conn.unframed:
            parts: list[Buffer] = [out]
            total = size
        else:  # ``framed``, inlined: this runs per token
            head, framing = _SMALL_FRAMES[size] if size < 1024 else chunk_head(size)
            parts, total = [head, out, b"\r\n"], size + framing
        try:
            return conn.write_parts_now(parts, total)
        except ConnectionError:
            return None

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
        sent = self._send(self.reader.encoder.feed(data))
        consumer.commit(next_seq, len(data))
        return bool(sent)
