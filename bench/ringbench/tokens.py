"""Token streams, as an LLM relay carries them: one producer PUTs small records at a steady
rate, each its own HTTP chunk written at once; n readers GET the same path and check every one.

Built to cost the client as little as possible, so the server, not the client, is what a swarm
of thousands of streams measures: asyncio protocols (callbacks, no task per read) over plain
TCP sockets, on uvloop when it is installed; HTTP/1.1 written and parsed by hand; a record is
one ``struct`` pack and one ``transport.write`` (one ``send``); a reader takes the common case,
one whole record chunk per ``recv``, without running the general chunked parser.

A record is 24 bytes, ``RECORD``: stream id (u32), sequence number (u32), send time (u64, ns,
CLOCK_MONOTONIC, stamped just before the write) and a check word derived from the first two.
On the wire it is ``18\\r\\n<24 bytes>\\r\\n``. Readers parse records out of the body whatever
the server's chunking, and require every record of their stream, in order, with the right
check word, then a clean end (the 0-chunk and its empty line). CLOCK_MONOTONIC is system-wide,
so a record's latency is (reader's time as ``data_received`` runs) - (its send time), whichever
processes the two ends live in.

A stream's readers all take one framing (``Stream.framing``): ``raw`` (the default, the bytes
above), or ``sse`` / ``ndjson`` (``?format=``), the framings an LLM front end reads. A text
framing needs text tokens, so its producer sends ``text/plain`` records: the base64 of an
18-byte ``TEXT_RECORD`` (stream id, sequence number, send time, 16 bits of the check word),
24 ASCII characters, so the chunk on the wire is as long as a raw one. Its readers check each
event (SSE ``id: <epoch>-<offset>`` + ``data:``, or NDJSON ``{"offset", "data"}``): its data
continues the stream's text (records are cut from that text as it comes: in the *chunks*
granularity, SPEC 2.1, an event is whatever one read of the pipe held, usually one record,
more after a stall, part of one if a read cut it), every record whole and next, the offset the
text's length up to the event's end, one epoch, and the ``done`` ending before the body's end.

A stream's life, all times absolute (``time.monotonic_ns()``): its readers connect at
``t_open`` and write their GET; its producer connects at ``t_put`` (later, and never before
every reader's GET is written: readers come first) and writes its PUT head; record k is due at
``t_first + k * interval``. The producer does not wait for ``Start sending``: record 0 goes out
when due, so the first token's latency includes whatever the server needs to set the pipe up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .common import HOST, BenchError
from .wire import _dechunk, parse_head

RECORD = struct.Struct("<IIQQ")  # stream id, sequence number, send time (ns), check word
WIRE = struct.Struct("<4sIIQQ2s")  # the record as one HTTP chunk
REC_LEN = RECORD.size
CHUNK_HEAD = b"%x\r\n" % REC_LEN
WIRE_LEN = WIRE.size
END = b"0\r\n\r\n"
MASK64 = (1 << 64) - 1
TEXT_RECORD = struct.Struct("<IIQH")  # a text framing's record: base64 of these 18 bytes, 24 characters
TEXT_LEN = 24
FRAMINGS = ("raw", "sse", "ndjson")


def check_word(sid: int, seq: int) -> int:
    return (sid * 0x9E3779B97F4A7C15 + seq * 0xC2B2AE3D27D4EB4F + 0x165667B19E3779F9) & MASK64


@dataclass
class Tally:
    """What one client process saw, pooled over its streams (ns)."""

    lat: array[int] = field(default_factory=lambda: array("q"))  # every token but a stream's first, per reader
    first: array[int] = field(default_factory=lambda: array("q"))  # each reader's first token
    late: array[int] = field(default_factory=lambda: array("q"))  # producer: send time - due time
    delivered: int = 0  # records checked at readers
    sent: int = 0  # records written by producers


@dataclass(eq=False)
class Stream:
    """One path, its producer and its n readers. ``ok`` once every party ended cleanly;
    ``error`` says which party failed first and how (the others are then cut)."""

    sid: int
    target: str
    n: int
    records: int
    interval_ns: int
    t_open: int
    t_put: int
    t_first: int
    readers: list[TokenReader] = field(default_factory=list)
    producer: TokenProducer | None = None
    readers_up: int = 0  # readers whose GET is written
    parties_done: int = 0
    put_due: bool = False
    producer_dialed: bool = False
    ok: bool = False
    error: str | None = None
    t_end: int = 0
    slots: set[str] = field(default_factory=set)  # Ringpipe-Worker of every response seen
    heads: int = 0  # parties whose response head arrived
    t_heads: int = 0  # when the last of the n + 1 heads arrived: from then on, every party's worker is known
    on_end: Callable[[Stream], None] | None = None
    framing: str = "raw"  # every reader's: raw, sse or ndjson (FRAMINGS)

    @property
    def reader_target(self) -> str:
        """The readers' GET target: the path, and ``format=`` for a text framing."""
        if self.framing == "raw":
            return self.target
        return f"{self.target}{'&' if '?' in self.target else '?'}format={self.framing}"

    @property
    def ended(self) -> bool:
        return self.ok or self.error is not None

    def fail(self, who: str, why: str) -> None:
        if self.ended:
            return
        self.error = f"{who}: {why}"
        self.t_end = time.monotonic_ns()
        for party in (*self.readers, self.producer):
            if party is not None:
                party.close()
        if self.on_end is not None:
            self.on_end(self)

    def party_done(self) -> None:
        self.parties_done += 1
        if self.parties_done == self.n + 1 and not self.ended:
            self.ok = True
            self.t_end = time.monotonic_ns()
            if self.on_end is not None:
                self.on_end(self)


class _Party(asyncio.Protocol):
    """What a reader and a producer share: the transport, the response head, the ending."""

    who = "party"

    def __init__(self, stream: Stream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.headers: dict[str, str] = {}
        self.head: bytes | None = None  # None until the response head was parsed
        self.pending = b""
        self.finished = False
        self.status = 0
        self.t_done = 0  # when this party ended cleanly (monotonic ns); 0 until then

    def close(self) -> None:
        self.finished = True
        if self.transport is not None:
            self.transport.close()

    def finish(self) -> None:
        if not self.finished:
            self.t_done = time.monotonic_ns()
            self.close()
            self.stream.party_done()

    def fail(self, why: str) -> None:
        if not self.finished:
            self.finished = True
            self.stream.fail(self.who, why)

    def read_head(self, data: bytes) -> bytes | None:
        """The body bytes after the response head, once it is complete (None before)."""
        buf = self.pending + data if self.pending else data
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            if len(buf) > 16384:
                self.fail("response head too large")
            self.pending = buf
            return None
        self.pending = b""
        try:
            head = parse_head(buf[:i])
        except (BenchError, ValueError) as exc:
            self.fail(str(exc))
            return None
        self.head = buf[:i]
        self.status = head.status
        stream = self.stream
        if "ringpipe-worker" in head.headers:
            stream.slots.add(head.headers["ringpipe-worker"])
        stream.heads += 1
        if stream.heads == stream.n + 1:
            stream.t_heads = time.monotonic_ns()
        if head.status != 200:
            self.fail(f"HTTP {head.status} {head.reason}: {buf[i + 4 : i + 200]!r}")
            return None
        self.headers = head.headers
        return buf[i + 4 :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.fail(f"connection closed ({exc or 'EOF'}) {self.progress()}")

    def progress(self) -> str:
        return ""


class TokenReader(_Party):
    who = "reader"

    def __init__(self, stream: Stream, index: int, tally: Tally, port: int) -> None:
        super().__init__(stream, port)
        self.who = f"reader {index}"
        self.tally = tally
        self.seq = 0  # the next record expected
        self.left = 0  # data bytes left in the current chunk
        self.need_crlf = False  # a chunk's data ended; its CRLF is next
        self.trailer = False  # after the 0-chunk's size line
        self.rec = bytearray()  # a record split over chunks or reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if self.finished:  # the stream failed while this party was connecting
            transport.close()
            return
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: ringpipe-bench\r\n\r\n"
            % (self.stream.reader_target.encode(), HOST.encode(), self.port)
        )
        stream = self.stream
        stream.readers_up += 1
        if stream.readers_up == stream.n and stream.put_due:
            start_producer(stream)

    def progress(self) -> str:
        return f"after {self.seq} of {self.stream.records} records"

    def body_of(self, data: bytes) -> bytes | None:
        """``data`` once the response head is read (the bytes after it, with the read that
        completes it), else None; a head that is not a chunked 200 fails the reader."""
        if self.head is not None:
            return data
        body = self.read_head(data)
        if body is not None and "chunked" not in self.headers.get("transfer-encoding", "").lower():
            self.fail(f"expected a chunked body, got headers {self.headers}")
            return None
        return body

    def line_end(self, buf: bytes, pos: int, end: int) -> int:
        """Where the CRLF that ends the chunk-size line at ``pos`` is; -1 while it has not
        all arrived, or (the reader failed) when what arrived is already too long for one."""
        j = buf.find(b"\r\n", pos)
        if j < 0 and end - pos > 64:
            self.fail("chunk-size line too long")
        return j

    def size_line(self, line: bytes) -> bool:
        """A chunk-size line (extensions ignored): the next chunk's data follows, or after the
        last chunk its trailer; False, the reader failed, if it is no size."""
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            self.fail(f"bad chunk-size line {line[:40]!r}")
            return False
        if size:
            self.left = size
        else:
            self.trailer = True
        return True

    def accept(self, sid: int, seq: int, t_sent: int, check_ok: bool, now: int) -> bool:
        """Count record ``seq`` of stream ``sid`` if it is this stream's next (else fail)."""
        stream = self.stream
        if sid != stream.sid or seq != self.seq or not check_ok:
            self.fail(f"record {self.seq}: got stream {sid} seq {seq} (lost, repeated, reordered or corrupt)")
            return False
        if seq >= stream.records:
            self.fail(f"more than {stream.records} records")
            return False
        (self.tally.first if seq == 0 else self.tally.lat).append(now - t_sent)
        self.tally.delivered += 1
        self.seq = seq + 1
        return True

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.finished:
            return
        body = self.body_of(data)
        if not body:
            return
        data = body
        if (  # the common case: exactly one whole record chunk
            len(data) == WIRE_LEN
            and not self.left
            and not self.need_crlf
            and not self.pending
            and not self.rec
            and data.startswith(CHUNK_HEAD)
            and data.endswith(b"\r\n")
        ):
            self.record(data, len(CHUNK_HEAD), now)
            return
        self.chunked(data, now)

    def record(self, buf: bytes | bytearray, off: int, now: int) -> None:
        sid, seq, t_sent, check = RECORD.unpack_from(buf, off)
        self.accept(sid, seq, t_sent, check == check_word(sid, seq), now)

    def chunked(self, data: bytes, now: int) -> None:
        buf = self.pending + data if self.pending else data
        pos, end = 0, len(buf)
        while pos < end and not self.finished:
            if self.left:
                take = min(self.left, end - pos)
                rec = self.rec
                rec += buf[pos : pos + take]
                pos += take
                self.left -= take
                if not self.left:
                    self.need_crlf = True
                whole = len(rec) - len(rec) % REC_LEN
                for off in range(0, whole, REC_LEN):
                    self.record(rec, off, now)
                    if self.finished:
                        return
                del rec[:whole]
            elif self.need_crlf:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    self.fail(f"chunk data not followed by CRLF {self.progress()}")
                    return
                pos += 2
                self.need_crlf = False
            else:
                j = self.line_end(buf, pos, end)
                if j < 0:  # not all here yet, or too long (failed)
                    break
                line = buf[pos:j]
                pos = j + 2
                if self.trailer:
                    if line:
                        continue  # a trailer field
                    if pos != end:
                        self.fail(f"{end - pos} stray byte(s) after the final chunk")
                    elif self.seq != self.stream.records or self.rec:
                        self.fail(f"clean end {self.progress()}")
                    else:
                        self.finish()
                    return
                if not self.size_line(line):
                    return
        self.pending = buf[pos:] if pos < end else b""


class EventReader(TokenReader):
    """A reader of a text framing (SSE or NDJSON): the HTTP chunks are undone into text, the
    text into events, the events' data into the stream's records, each the next one, every
    event at the right offset."""

    def __init__(self, stream: Stream, index: int, tally: Tally, port: int) -> None:
        super().__init__(stream, index, tally, port)
        self.sse = stream.framing == "sse"
        self.text = bytearray()  # framed text not yet parsed into whole events
        self.epoch = b""  # SSE: the ``<epoch>`` of every event's id
        self.done_seen = False  # the framing's ``done`` ending arrived
        self.body_end = False  # the HTTP body's last chunk arrived

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.finished:
            return
        body = self.body_of(data)
        if body is None:
            return
        self.unchunk(body)
        if self.finished:
            return
        self.events(now)
        if self.body_end and not self.finished:
            if self.text or self.rec or not self.done_seen or self.seq != self.stream.records:
                self.fail(f"clean end {self.progress()} (done event {'seen' if self.done_seen else 'missing'})")
            else:
                self.finish()

    def unchunk(self, data: bytes) -> None:
        """Append the chunks' data to ``text``; ``body_end`` at the last chunk and its empty line."""
        buf = self.pending + data if self.pending else data
        pos, end = 0, len(buf)
        while pos < end:
            if self.left:
                take = min(self.left, end - pos)
                self.text += buf[pos : pos + take]
                pos += take
                self.left -= take
                if not self.left:
                    self.need_crlf = True
                continue
            j = self.line_end(buf, pos, end)
            if j < 0:  # not all here yet, or too long (failed)
                break
            line, pos = buf[pos:j], j + 2
            if self.need_crlf:
                if line:
                    self.fail(f"chunk data not followed by CRLF {self.progress()}")
                    return
                self.need_crlf = False
            elif self.trailer:
                if not line:
                    if pos != end:
                        self.fail(f"{end - pos} stray byte(s) after the final chunk")
                        return
                    self.body_end = True
                    break
            else:
                if not self.size_line(line):
                    return
        self.pending = buf[pos:] if pos < end else b""

    def events(self, now: int) -> None:
        text = self.text
        sep = b"\n\n" if self.sse else b"\n"
        start = 0
        while not self.finished:
            j = text.find(sep, start)
            if j < 0:
                break
            if self.sse:
                self.sse_event(bytes(text[start:j]), now)
            else:
                self.ndjson_record(bytes(text[start:j]), now)
            start = j + len(sep)
        del text[:start]

    def sse_event(self, event: bytes, now: int) -> None:
        name, ident, data = b"", b"", b""
        for line in event.split(b"\n"):
            field_, _, value = line.partition(b": ")
            if field_ == b"data":
                data = value if not data else data + b"\n" + value
            elif field_ == b"id":
                ident = value
            elif field_ == b"event":
                name = value
            elif field_ != b"retry":
                self.fail(f"unexpected SSE line {line[:60]!r}")
                return
        if not data and not name:
            return  # the opening ``retry:``
        epoch, _, offset = ident.rpartition(b"-")
        if not self.epoch:
            self.epoch = epoch
        if epoch != self.epoch or not offset.isdigit():
            self.fail(f"event id {ident!r}: not <epoch>-<offset> with this stream's epoch {self.epoch!r}")
            return
        if name == b"done":
            self.ending(b"done", int(offset))
        elif name:
            self.fail(f"event {name.decode(errors='replace')}: {data[:120]!r} {self.progress()}")
        else:
            self.text_record(data, int(offset), now)

    def ndjson_record(self, line: bytes, now: int) -> None:
        try:
            obj = json.loads(line)
            if "end" in obj:
                self.ending(obj["end"].encode(), int(obj["offset"]))
            else:
                self.text_record(obj["data"].encode(), int(obj["offset"]), now)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.fail(f"bad NDJSON record {line[:120]!r}: {exc}")

    def ending(self, name: bytes, offset: int) -> None:
        if name != b"done" or offset != self.stream.records * TEXT_LEN or self.seq != self.stream.records or self.rec:
            self.fail(f"ending {name!r} at offset {offset} {self.progress()}")
            return
        self.done_seen = True

    def text_record(self, data: bytes, offset: int, now: int) -> None:
        """One event's data: the next ``len(data)`` bytes of the stream's text, ending at
        ``offset``. Each record it completes must be the next one, whole; a record's latency
        is measured when its last byte arrives."""
        if self.done_seen:
            self.fail("a record after the done ending")
            return
        text = self.rec  # the text after the last whole record, as events cut it
        text += data
        whole = len(text) - len(text) % TEXT_LEN
        for start in range(0, whole, TEXT_LEN):
            record = bytes(text[start : start + TEXT_LEN])
            try:
                sid, seq, t_sent, check = TEXT_RECORD.unpack(base64.b64decode(record, validate=True))
            except (binascii.Error, struct.error):
                self.fail(f"record {self.seq}: {record!r} is not a base64 record (corrupt)")
                return
            if not self.accept(sid, seq, t_sent, check == check_word(sid, seq) & 0xFFFF, now):
                return
        del text[:whole]
        if offset != self.seq * TEXT_LEN + len(text):
            self.fail(f"event at offset {offset} after {self.seq} records and {len(text)} more byte(s) of text")


class TokenProducer(_Party):
    who = "producer"

    def __init__(self, stream: Stream, tally: Tally, port: int, loop: asyncio.AbstractEventLoop, skew: float) -> None:
        super().__init__(stream, port)
        self.tally = tally
        self.loop = loop
        self.skew = skew  # loop.time() - time.monotonic()
        self.seq = 0
        self.body_done = False
        self.log = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if self.finished:
            transport.close()
            return
        transport.write(
            b"PUT %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: ringpipe-bench\r\n"
            b"Content-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            % (
                self.stream.target.encode(),
                HOST.encode(),
                self.port,
                b"application/octet-stream" if self.stream.framing == "raw" else b"text/plain; charset=utf-8",
            )
        )
        self.schedule()

    def progress(self) -> str:
        return f"after {self.seq} of {self.stream.records} records sent"

    def schedule(self) -> None:
        stream = self.stream
        due = stream.t_first + self.seq * stream.interval_ns
        self.timer = self.loop.call_at(due / 1e9 + self.skew, self.tick)

    def tick(self) -> None:
        if self.finished or self.transport is None:
            return
        stream, seq = self.stream, self.seq
        now = time.monotonic_ns()
        if stream.framing == "raw":
            self.transport.write(WIRE.pack(CHUNK_HEAD, stream.sid, seq, now, check_word(stream.sid, seq), b"\r\n"))
        else:
            text = base64.b64encode(TEXT_RECORD.pack(stream.sid, seq, now, check_word(stream.sid, seq) & 0xFFFF))
            self.transport.write(CHUNK_HEAD + text + b"\r\n")
        self.tally.late.append(now - (stream.t_first + seq * stream.interval_ns))
        self.tally.sent += 1
        self.seq = seq + 1
        if self.seq < stream.records:
            self.schedule()
            return
        self.transport.write(END)
        self.body_done = True

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().close()

    def data_received(self, data: bytes) -> None:
        if self.finished:
            return
        if self.head is None:
            body = self.read_head(data)
            if body is None:
                return
            data = body
        self.log += data
        if len(self.log) > 1 << 16:
            self.fail("response larger than 64 KiB")
            return
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            text, complete = _dechunk(self.log)
            if complete:
                self.ended(text)
        elif "content-length" in self.headers and len(self.log) >= int(self.headers["content-length"]):
            self.ended(self.log)

    def eof_received(self) -> bool | None:
        if not self.finished and self.head is not None and "transfer-encoding" not in self.headers:
            self.ended(self.log)  # a response that ends with the connection
        return None

    def ended(self, text: bytes) -> None:
        log = text.decode("utf-8", "replace")
        if not self.body_done:
            self.fail(f"response ended before the body was sent ({self.progress()}): {log[-200:]!r}")
        elif "[ERROR]" in log:
            self.fail(f"the log reports an error: {log[-300:]!r}")
        else:
            self.finish()


def start_producer(stream: Stream) -> None:
    """Connect the producer, once, and only after every reader's GET was written."""
    if stream.producer is not None and not stream.producer_dialed and not stream.ended:
        stream.producer_dialed = True
        connect(stream.producer)


def connect(party: _Party) -> None:
    loop = asyncio.get_running_loop()

    async def dial() -> None:
        try:
            await loop.create_connection(lambda: party, HOST, party.port)
        except OSError as exc:
            party.fail(f"connect: {exc}")

    task = loop.create_task(dial())
    _DIALS.add(task)
    task.add_done_callback(_DIALS.discard)


_DIALS: set[asyncio.Task[Any]] = set()  # keeps the connect tasks referenced until they finish


class Runner:
    """Opens streams when they are due and keeps the tally; ``on_end`` hears of each ending."""

    def __init__(self, port: int, tally: Tally, on_end: Callable[[Stream], None]) -> None:
        self.port = port
        self.tally = tally
        self.on_end = on_end
        self.loop = asyncio.get_running_loop()
        self.skew = self.loop.time() - time.monotonic()
        self.live: set[Stream] = set()

    def at(self, t_ns: int, fn: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_at(t_ns / 1e9 + self.skew, fn)

    def add(self, stream: Stream) -> None:
        """Schedule ``stream``: its readers at ``t_open``, its producer at ``t_put``."""
        stream.on_end = self._ended
        reader = TokenReader if stream.framing == "raw" else EventReader
        stream.readers = [reader(stream, i, self.tally, self.port) for i in range(stream.n)]
        stream.producer = TokenProducer(stream, self.tally, self.port, self.loop, self.skew)
        self.live.add(stream)
        self.at(stream.t_open, lambda: self._open(stream))
        self.at(stream.t_put, lambda: self._put(stream))

    def _open(self, stream: Stream) -> None:
        for reader in stream.readers:
            if not stream.ended:
                connect(reader)

    def _put(self, stream: Stream) -> None:
        stream.put_due = True
        if stream.readers_up == stream.n:
            start_producer(stream)

    def _ended(self, stream: Stream) -> None:
        self.live.discard(stream)
        self.on_end(stream)

    def abort(self, why: str) -> None:
        """Fail every stream still running (the run's deadline)."""
        for stream in list(self.live):
            parties = [p for p in (*stream.readers, stream.producer) if p is not None]
            stream.fail(why, "; ".join(f"{p.who} {p.progress()}" for p in parties if not p.finished)[:300])
