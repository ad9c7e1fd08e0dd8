"""The express path: a parked reader served from its wake-up callback (``readers.wakeup_delivery``).

Real shared-memory ring, real ``relay.Consumer``, a real socket pair for the client
connection; only uvicorn's transport is replaced by a list that records what it was
asked to queue. What a user would check: the client gets exactly the producer's bytes,
framed, in order; a socket backlog, an ending or a full Content-Length leaves the work
to the reader's task (it is woken, nothing is committed behind its back); the writer is
asked to wake the reader again after an express round.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import Iterator

import pytest

from ringpipe.core.control_frames import RelayInfo
from ringpipe.core.framing import Granularity, SseEncoder
from ringpipe.http.connection import Connection
from ringpipe.http.readers.wakeup_delivery import EncodedWakeupDelivery, RawWakeupDelivery
from ringpipe.mesh.relay import Consumer, DirectSink, Producer
from ringpipe.shm import segment
from tests.support.fakes import NullRouter


class _Transport:
    """What ``write_parts_now`` needs of uvicorn's transport; ``write`` queues a copy."""

    def __init__(self) -> None:
        self.queued = bytearray()

    def write(self, data: bytes) -> None:
        self.queued += data

    def get_write_buffer_size(self) -> int:
        return len(self.queued)

    def is_closing(self) -> bool:
        return False


class _Conn:
    """The parts of ``Connection`` the express path uses, over a real socket."""

    write_parts_now = Connection.write_parts_now
    can_write_now = Connection.can_write_now
    account_body = Connection.account_body

    def __init__(self, sock: socket.socket, *, unframed: bool = False) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self.tls = False
        self._via_transport = False
        self.lost = asyncio.Event()
        self.transport = _Transport()
        self.unframed = unframed
        self.chunked_response = not unframed

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.fixture
def ring() -> Iterator[tuple[segment.RingSegment, RelayInfo]]:
    name = f"ringpipe-test-{uuid.uuid4().hex[:12]}"
    created = segment.RingSegment.create(name, 64 * 1024, 1)
    try:
        yield created, RelayInfo(name, 64 * 1024, 0, 0, (0,), "e")
    finally:
        created.close()
        created.unlink()


@pytest.fixture
def client() -> Iterator[tuple[socket.socket, socket.socket]]:
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    client_end.setblocking(False)
    try:
        yield server_end, client_end
    finally:
        server_end.close()
        client_end.close()


class _SseReader:
    """What ``EncodedWakeupDelivery`` uses of an SSE reader (``EncodingReader``)."""

    def __init__(self, conn: _Conn, *, granularity: Granularity = "chunks", content_type: str | None = None) -> None:
        self.conn = conn
        self.encoder = SseEncoder(epoch="e", granularity=granularity)
        self.encoder.begin(content_type)
        self._last_write = 0.0


def _parked(consumer: Consumer, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
    """Put the consumer's task "inside" ``views``' sleep, as the event loop would see it."""
    future: asyncio.Future[bool] = loop.create_future()
    consumer.sleeper.future = future
    return future


def _drain(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def _flush(conn: _Conn, server_end: socket.socket, client_end: socket.socket) -> bytes:
    """What the reader's task does with a backlog: send it all (the client reads meanwhile)."""
    received = bytearray(_drain(client_end))
    while conn.transport.queued:
        sent = server_end.send(conn.transport.queued)
        del conn.transport.queued[:sent]
        received += _drain(client_end)
    return bytes(received)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        line, _, body = body.partition(b"\r\n")
        size = int(line, 16)
        out += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
    return bytes(out)


def test_a_token_goes_out_from_the_callback(ring: tuple[segment.RingSegment, RelayInfo], client) -> None:
    created, info = ring
    server_end, client_end = client
    loop = asyncio.new_event_loop()
    try:
        consumer = Consumer(NullRouter(), segment.RingSegment.attach(info.segment), info, 0)
        conn = _Conn(server_end)
        consumer.express = RawWakeupDelivery(consumer, conn, chunked=True)  # type: ignore[arg-type]
        for token in [b"Hello", b", ", b"world" * 20]:
            future = _parked(consumer, loop)
            consumer.ring.set_reader_waiting(0)
            created.write_nowait(token)
            assert created.take_sleeping_readers() == [0]
            consumer._on_wake()
            assert not future.done(), "the task was woken for a plain token"
            assert _drain(client_end) == b"%x\r\n%s\r\n" % (len(token), token)
            assert created.take_sleeping_readers() == [0], "the reader must be woken again next time"
        assert consumer.offset == created.write_seq
        consumer.close()
    finally:
        loop.close()


def test_backlog_ending_and_full_length_leave_it_to_the_task(ring, client) -> None:
    created, info = ring
    server_end, client_end = client
    loop = asyncio.new_event_loop()
    try:
        consumer = Consumer(NullRouter(), segment.RingSegment.attach(info.segment), info, 0)
        conn = _Conn(server_end)
        consumer.express = RawWakeupDelivery(consumer, conn, chunked=True)  # type: ignore[arg-type]
        conn.transport.queued += b"earlier"  # the socket has a backlog: backpressure is the task's
        created.write_nowait(b"x" * 100)
        future = _parked(consumer, loop)
        consumer._on_wake()
        assert future.done() and consumer.offset == 0 and _drain(client_end) == b""
        conn.transport.queued.clear()
        consumer.ring.commit_read(0, 100)
        created.finish_writing()  # the clean end: the task writes the last chunk
        future = _parked(consumer, loop)
        consumer._on_wake()
        assert future.done() and _drain(client_end) == b""
        consumer.close()
    finally:
        loop.close()


def test_partial_writes_lose_nothing(ring, client) -> None:
    """A client that reads slowly: what the kernel refuses is queued (copied) and the task
    woken; it drains before anything else is written. The client gets every byte once."""
    created, info = ring
    server_end, client_end = client
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rng = random.Random(7)
    produced = bytearray()
    received = bytearray()
    loop = asyncio.new_event_loop()
    try:
        consumer = Consumer(NullRouter(), segment.RingSegment.attach(info.segment), info, 0)
        conn = _Conn(server_end)
        consumer.express = RawWakeupDelivery(consumer, conn, chunked=True)  # type: ignore[arg-type]
        woken = 0
        for _ in range(300):
            data = rng.randbytes(rng.choice([1, 64, 3000, 20000]))
            written = created.write_nowait(data) if created.free_span(1) is not None else 0
            produced += data[:written]
            future = _parked(consumer, loop)
            consumer._on_wake()
            if future.done():  # the task's turn: flush the backlog, then send the rest itself
                woken += 1
                received += _flush(conn, server_end, client_end)
                consumer.sleeper.future = None
            if rng.random() < 0.5:
                received += _drain(client_end)
        for _ in range(100):  # the rest, by express rounds once the client reads again
            received += _flush(conn, server_end, client_end)
            if consumer.offset == created.write_seq:
                break
            _parked(consumer, loop)
            consumer._on_wake()
            consumer.sleeper.future = None
        received += _drain(client_end)
        assert woken > 0, "the slow client never pushed back"
        assert _dechunk(bytes(received)) == bytes(produced)
        consumer.close()
    finally:
        loop.close()


def test_sse_tokens_are_encoded_once(ring, client) -> None:
    created, info = ring
    server_end, client_end = client
    loop = asyncio.new_event_loop()

    try:
        consumer = Consumer(NullRouter(), segment.RingSegment.attach(info.segment), info, 0)
        conn = _Conn(server_end)
        reader = _SseReader(conn)
        consumer.express = EncodedWakeupDelivery(consumer, reader)  # type: ignore[arg-type]
        model = SseEncoder(epoch="e")
        model.begin(None)
        expected = bytearray()
        for token in [b"The", b" quick", b" fox\n", "\u00e9".encode()[:1], "\u00e9".encode()[1:] + b"!"]:
            _parked(consumer, loop)
            created.write_nowait(token)
            consumer._on_wake()
            out = model.feed(token)
            if out:
                expected += b"%x\r\n%s\r\n" % (len(out), out)
        assert _drain(client_end) == bytes(expected)
        assert reader._last_write > 0
        consumer.close()
    finally:
        loop.close()


def test_sse_lines_are_encoded_once_and_a_partial_line_is_held(ring, client) -> None:
    """*lines* granularity on the express path: a token that ends no line is committed (the
    encoder holds it) without a write and without waking the task; each complete line goes
    out once, as one event with the id at its line end."""
    created, info = ring
    server_end, client_end = client
    loop = asyncio.new_event_loop()

    try:
        consumer = Consumer(NullRouter(), segment.RingSegment.attach(info.segment), info, 0)
        conn = _Conn(server_end)
        reader = _SseReader(conn, granularity="lines", content_type="text/plain")
        consumer.express = EncodedWakeupDelivery(consumer, reader)  # type: ignore[arg-type]
        sent: list[bytes] = []
        for token in [b'{"a":1}\n{"b"', b":2}\r", b'\n{"c":', b"3}\n"]:
            future = _parked(consumer, loop)
            created.write_nowait(token)
            consumer._on_wake()
            assert not future.done(), "the task was woken for a token"
            assert consumer.offset == created.write_seq, "the express round committed the token"
            sent.append(_drain(client_end))
        events = [
            b'id: e-8\ndata: {"a":1}\n\n',
            b'id: e-16\ndata: {"b":2}\n\n',
            b"",
            b'id: e-25\ndata: {"c":3}\n\n',
        ]
        assert sent == [b"%x\r\n%s\r\n" % (len(e), e) if e else b"" for e in events]
        assert reader.encoder.offset == created.write_seq
        consumer.close()
    finally:
        loop.close()


class _LocalRouter(NullRouter):
    """A router of worker 0 that records wake-ups and keeps real direct-sink lists."""

    index = 0

    def __init__(self) -> None:
        self.woken: list[int] = []
        self.sinks: dict[str, list[DirectSink]] = {}

    def wake_many(self, info: RelayInfo, slots: list[int]) -> None:
        self.woken += slots

    def direct_sinks(self, segment: str) -> list[DirectSink]:
        return self.sinks.setdefault(segment, [])

    def drop_direct_sinks(self, segment: str, sinks: list[DirectSink]) -> None:
        if self.sinks.get(segment) is sinks:
            del self.sinks[segment]


def _local_ends(router: _LocalRouter, info: RelayInfo) -> tuple[Producer, Consumer]:
    """A producer and the reader of slot 0, both in ``router``'s worker, on their own handles."""
    producer = Producer(router, segment.RingSegment.attach(info.segment), info)
    return producer, Consumer(router, segment.RingSegment.attach(info.segment), info, 0)


def _two_reader_ring() -> tuple[segment.RingSegment, RelayInfo]:
    name = f"ringpipe-test-{uuid.uuid4().hex[:12]}"
    return segment.RingSegment.create(name, 64 * 1024, 2), RelayInfo(name, 64 * 1024, 0, 0, (0, 0), "e")


def test_the_producer_hands_a_token_to_a_sleeping_local_reader(ring, client) -> None:
    """``Producer.offer`` → ``DirectSink.deliver``: the client gets each token framed, the
    cursor moves with it, the task is not woken and stays armed for the next wake-up; a
    reader that is not caught up, or has a backlog, is woken the usual way instead."""
    created, info = ring
    server_end, client_end = client
    loop = asyncio.new_event_loop()
    router = _LocalRouter()
    try:
        producer, consumer = _local_ends(router, info)
        conn = _Conn(server_end)
        express = consumer.express = RawWakeupDelivery(consumer, conn, chunked=True)  # type: ignore[arg-type]
        sinks = consumer.take_directly(express)
        assert sinks is producer.sinks == [express]
        for token in [b"Hello", b", ", b"world" * 20]:
            future = _parked(consumer, loop)
            consumer.ring.set_reader_waiting(0)
            assert producer.offer(memoryview(bytearray(token))) == len(token)
            assert not future.done() and router.woken == []
            assert _drain(client_end) == b"%x\r\n%s\r\n" % (len(token), token)
            assert consumer.offset == created.write_seq
        assert created.take_sleeping_readers() == [0], "the reader must still be armed"

        conn.transport.queued += b"earlier"  # a backlog: the task's job (backpressure)
        _parked(consumer, loop)
        consumer.ring.set_reader_waiting(0)
        producer.offer(b"late")
        assert router.woken == [0] and consumer.offset == created.write_seq - 4
        assert _drain(client_end) == b""
        consumer.stop_taking_directly(sinks, express)
        assert producer.sinks == []
        consumer.close()
        producer.close()
        assert router.sinks == {}
    finally:
        loop.close()


def test_a_reader_served_directly_is_not_woken_with_one_that_was_not(client) -> None:
    """Two readers, only one a direct sink: the other is woken, the served one is not and
    keeps its waiting word."""
    created, info = _two_reader_ring()
    server_end, client_end = client
    loop = asyncio.new_event_loop()
    router = _LocalRouter()
    try:
        producer = Producer(router, segment.RingSegment.attach(info.segment), info)
        direct = Consumer(router, segment.RingSegment.attach(info.segment), info, 0)
        other = Consumer(router, segment.RingSegment.attach(info.segment), info, 1)
        express = direct.express = RawWakeupDelivery(direct, _Conn(server_end), chunked=True)  # type: ignore[arg-type]
        assert direct.take_directly(express) is not None
        _parked(direct, loop)
        direct.ring.set_reader_waiting(0)
        other.ring.set_reader_waiting(1)
        producer.offer(b"token")
        assert router.woken == [1]
        assert _drain(client_end) == b"5\r\ntoken\r\n"
        assert direct.offset == 5 and other.offset == 0
        assert created.take_sleeping_readers() == [0]
        for party in (direct, other, producer):
            party.close()
    finally:
        loop.close()
        created.close()
        created.unlink()


def test_the_producer_hands_tokens_to_a_sleeping_sse_reader(ring, client) -> None:
    """The SSE framing on the direct hand-over: each token is encoded once, as the event
    the task would have written, and the task sleeps on."""
    created, info = ring
    server_end, client_end = client
    loop = asyncio.new_event_loop()
    router = _LocalRouter()

    try:
        producer, consumer = _local_ends(router, info)
        reader = _SseReader(_Conn(server_end))
        express = consumer.express = EncodedWakeupDelivery(consumer, reader)  # type: ignore[arg-type]
        assert consumer.take_directly(express) is not None
        model = SseEncoder(epoch="e")
        model.begin(None)
        expected = bytearray()
        for token in [b"The", b" quick", b" fox\n"]:
            future = _parked(consumer, loop)
            consumer.ring.set_reader_waiting(0)
            producer.offer(token)
            assert not future.done() and router.woken == []
            out = model.feed(token)
            expected += b"%x\r\n%s\r\n" % (len(out), out)
        assert _drain(client_end) == bytes(expected)
        assert consumer.offset == created.write_seq and reader._last_write > 0
        consumer.close()
        producer.close()
    finally:
        loop.close()
