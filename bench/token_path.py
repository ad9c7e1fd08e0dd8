"""The Python cost of one token on its way from a producer to a caught-up reader, in one process.

Real parts, no server: a shared-memory ring, ``RawBody`` (the producer's read callback),
``BodyFraming``, ``Ingest``, ``Producer``, a ``Consumer`` whose raw reader sleeps caught up
(``RawWakeupDelivery``, a ``DirectSink``), and a real ``Connection`` on a uvloop transport over a
socket pair. Per token: ``get_buffer``, the chunk copied in (what the kernel's ``recv`` would
do), ``buffer_updated``; the reader's end of the pair is drained every 64 tokens. Prints the
best of 9 runs in ns per token, and what ``writev`` + ``recv`` alone cost on the same pair.

    python bench/token_path.py [TOKENS]
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ringpipe.core.chunked import BodyFraming
from ringpipe.core.control_frames import RelayInfo
from ringpipe.http.connection import Connection
from ringpipe.http.rawbody import RawBody
from ringpipe.http.readers.wakeup_delivery import RawWakeupDelivery
from ringpipe.mesh.ingest import Ingest
from ringpipe.mesh.relay import Consumer, DirectSink, Producer
from ringpipe.shm import segment

TOKEN = b"18\r\n#" + b"x" * 23 + b"\r\n"


class _Router:
    """A ``relay.WakeRouter`` for one worker that holds both ends."""

    index = 0

    def __init__(self) -> None:
        self.sinks: dict[str, list[DirectSink]] = {}
        self.wakers: dict[tuple[str, int], Callable[[], None]] = {}

    def register(self, name: str, slot: int, callback: Callable[[], None]) -> None:
        self.wakers[(name, slot)] = callback

    def unregister(self, name: str, slot: int, callback: Callable[[], None] | None = None) -> None:
        self.wakers.pop((name, slot), None)

    def wake(self, info: RelayInfo, slot: int) -> None:
        callback = self.wakers.get((info.segment, slot))
        if callback is not None:
            callback()

    def wake_many(self, info: RelayInfo, slots: list[int]) -> None:
        for slot in slots:
            self.wake(info, slot)

    def wake_watchers(self, info: RelayInfo, workers: list[int]) -> None: ...

    def direct_sinks(self, name: str) -> list[DirectSink]:
        return self.sinks.setdefault(name, [])

    def drop_direct_sinks(self, name: str, sinks: list[DirectSink]) -> None:
        if self.sinks.get(name) is sinks:
            del self.sinks[name]


class _Lender:
    def end_raw_body(self, raw: RawBody, leftover: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class _Reading:
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _Protocol(asyncio.Protocol):
    cycle = None


def _drain(sock: socket.socket) -> None:
    try:
        sock.recv(1 << 20)
    except BlockingIOError:
        pass


async def main(tokens: int) -> None:
    loop = asyncio.get_running_loop()
    ours, client = socket.socketpair()
    client.setblocking(False)
    transport, protocol = await loop.connect_accepted_socket(_Protocol, ours)
    conn = Connection(transport, protocol)  # type: ignore[arg-type]
    name = f"ringpipe-bench-{uuid.uuid4().hex[:8]}"
    created = segment.RingSegment.create(name, 1 << 20, 1)
    try:
        info = RelayInfo(name, 1 << 20, 0, 0, (0,), "e")
        router = _Router()
        producer = Producer(router, segment.RingSegment.attach(name), info)
        consumer = Consumer(router, segment.RingSegment.attach(name), info, 0)
        express = consumer.express = RawWakeupDelivery(consumer, conn, chunked=True)
        consumer.take_directly(express)
        raw = RawBody(_Lender(), Ingest(producer, _Reading()), BodyFraming(content_length=None))
        size = len(TOKEN)
        runs = []
        for _ in range(9):
            parked: asyncio.Future[bool] = loop.create_future()
            consumer.sleeper.future = parked  # the reader's task asleep in ``views``
            consumer.ring.set_reader_waiting(0)
            start = time.perf_counter_ns()
            for i in range(tokens):
                raw.get_buffer(-1)[:size] = TOKEN
                raw.buffer_updated(size)
                if i & 63 == 63:
                    _drain(client)
            runs.append((time.perf_counter_ns() - start) / tokens)
            assert not parked.done(), "the reader's task was woken for a token"
        consumer.sleeper.future = None
        parts = [TOKEN[:4], TOKEN[4:-2], b"\r\n"]
        start = time.perf_counter_ns()
        for i in range(tokens):
            os.writev(ours.fileno(), parts)
            if i & 63 == 63:
                _drain(client)
        alone = (time.perf_counter_ns() - start) / tokens
        best = min(runs)
        print(f"per token {best:.0f} ns (best of 9); writev+recv alone {alone:.0f} ns; the rest {best - alone:.0f} ns")
        consumer.close()
        producer.close()
    finally:
        created.close()
        created.unlink()
        transport.close()
        client.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30_000))
