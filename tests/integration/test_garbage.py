"""A finished stream leaves no cyclic garbage in the workers.

Reference counting frees a stream's objects (its connection, transport, ring handle, sender
and reader state) the moment the stream ends, unless something in them forms a reference
cycle: then they wait for a full collection of the cyclic GC, which the workers' raised
thresholds (``process/worker.py``) make rare. One such cycle (the upload handing its own
bound method to its producer) made every worker grow ~1 MiB a minute in the 20-minute soak,
and ``tracemalloc`` after ``gc.collect()`` could not see it. This test would have.

The workers run with ``tests/support/gcprobe`` on their ``PYTHONPATH``: one ``SIGUSR2``
collects whatever garbage exists, a second one counts what a collection under
``gc.DEBUG_SAVEALL`` finds, i.e. the objects that only cycles created in between kept
alive. Each scenario runs a few times between the two signals, on paths owned by each worker in
turn, after a warm-up that creates every lazily built worker-wide object.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ringpipe.core.paths import owner_of
from tests.support.externals import self_signed_cert
from tests.support.pipes import Response, get, pattern, put, read_body, read_head, request_head, run
from tests.support.readers import CHUNKS, TEXT, Attempt, HttpReader, WsReader, delete_pipe, paced, wait_registered
from tests.support.servers import Server, ServerFactory
from tests.support.tls_clients import transfer

PROBE = Path(__file__).resolve().parents[1] / "support" / "gcprobe"
#: Rounds of each scenario, warm-up and test each, their paths owned by each worker in turn.
ROUNDS = 4


async def receiver_first(port: int, path: str) -> None:
    reader = asyncio.create_task(get(port, path))
    await asyncio.sleep(0.2)
    log = await put(port, path, paced(CHUNKS, pause=0.01), [("Content-Type", "text/plain")])
    resp = await reader
    assert log.complete and resp.complete and resp.body == TEXT.encode()


async def sender_first(port: int, path: str) -> None:
    body = b"x" * 70_000
    sender = asyncio.create_task(put(port, path, body))
    await asyncio.sleep(0.2)
    resp = await get(port, path)
    log = await sender
    assert log.complete and resp.complete and resp.body == body


async def every_framing(port: int, path: str) -> None:
    target = path + "?n=4"
    readers = [
        HttpReader(port, target),
        HttpReader(port, target, [("Accept", "text/event-stream")]),
        HttpReader(port, target + "&format=ndjson"),
    ]
    ws = WsReader(f"ws://127.0.0.1:{port}{target}")
    tasks = [asyncio.create_task(r.run()) for r in readers] + [asyncio.create_task(ws.run())]
    await asyncio.wait_for(ws.opened.wait(), 10)
    await wait_registered()
    log = await put(port, target, paced(CHUNKS, pause=0.01), [("Content-Type", "text/plain")])
    results = await asyncio.gather(*tasks)
    assert log.complete and all(r.complete for r in results[:3])
    assert ws.code == 1000


async def producer_vanishes(port: int, path: str) -> None:
    async def vanish() -> None:
        raise ConnectionAbortedError("the producer vanishes")

    target = path + "?n=2"
    readers = [HttpReader(port, target), HttpReader(port, target + "&format=sse")]
    tasks = [asyncio.create_task(r.run()) for r in readers]
    await asyncio.wait_for(readers[1].head_seen.wait(), 10)
    await wait_registered()
    log = await put(port, target, paced([b"partial ", b"output"], pause=0.01, then=vanish))
    raw, sse = await asyncio.gather(*tasks)
    assert not log.complete and not raw.complete and b"aborted" in sse.body


async def reader_leaves(port: int, path: str) -> None:
    target = path + "?n=2"
    stays, leaves = HttpReader(port, target), HttpReader(port, target)
    stay_task = asyncio.create_task(stays.run())
    leave_task = asyncio.create_task(leaves.run())
    await asyncio.sleep(0.3)
    hold = asyncio.Event()

    async def until_told() -> None:
        await hold.wait()

    sender = asyncio.create_task(put(port, target, paced([b"a" * 100] * 3, pause=0.01, then=until_told)))
    while not leaves.chunks:
        await asyncio.sleep(0.01)
    leave_task.cancel()  # closes its socket mid-body
    await asyncio.gather(leave_task, return_exceptions=True)
    await asyncio.sleep(0.2)
    hold.set()
    log = await sender
    resp = await stay_task
    assert log.complete and resp.complete and resp.body == b"a" * 300


async def cancelled(port: int, path: str) -> None:
    target = path + "?n=2"
    readers = [HttpReader(port, target), HttpReader(port, target + "&format=sse")]
    tasks = [asyncio.create_task(r.run()) for r in readers]
    await asyncio.wait_for(readers[1].head_seen.wait(), 10)
    await wait_registered()
    hold = asyncio.Event()

    async def until_told() -> None:
        await hold.wait()

    sender = asyncio.create_task(put(port, target, paced([b"some"], pause=0.01, then=until_told)))
    await asyncio.sleep(0.3)
    try:
        assert await delete_pipe(port, path) == 204
        raw, sse = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        hold.set()
        await asyncio.gather(sender, return_exceptions=True)
    assert not raw.complete and b"cancelled" in sse.body


async def resumed(port: int, path: str) -> None:
    data = pattern(60_000, seed=3)

    async def slowly() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 3000):
            yield data[i : i + 3000]
            await asyncio.sleep(0.01)

    sender = asyncio.create_task(put(port, path, slowly()))
    first = Attempt(port, path + "?resume=1", [])
    await first.run(5000)  # drops abruptly
    second = Attempt(port, f"{path}?offset={len(first.body)}", [])
    await second.run(None)
    log = await sender
    assert log.complete and second.complete and bytes(first.body + second.body) == data


async def watched(port: int, path: str) -> None:
    """A watcher joins a running pipe (SSE) and reads it to the end beside its reader."""
    reader = asyncio.create_task(get(port, path))
    await asyncio.sleep(0.2)
    sender = asyncio.create_task(put(port, path, paced(CHUNKS, pause=0.05), [("Content-Type", "text/plain")]))
    await asyncio.sleep(0.1)
    watcher = await get(port, path + "?watch=1&format=sse")
    log, resp = await sender, await reader
    assert log.complete and resp.body == TEXT.encode() and watcher.complete


async def waiting_reader_leaves(port: int, path: str) -> None:
    """A reader (raw, then SSE with its early head) hangs up before any producer comes."""
    for query in ("", "?format=sse"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_head("GET", path + query, port, [], "1.1"))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.transport.abort()
    await asyncio.sleep(0.3)
    resp = await get(port, path + "?format=xml")  # the path is free again for a normal answer
    assert resp.status == 400


async def keep_alive(port: int, path: str) -> None:
    """Two transfers, then a status request, over one reader connection (keep-alive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for k in range(2):
            target = f"{path}-{k}"
            writer.write(request_head("GET", target, port, [], "1.1"))
            await writer.drain()
            await asyncio.sleep(0.2)
            log = await put(port, target, b"kept alive %d" % k)
            status, head = await read_head(reader)
            resp = await read_body(reader, Response(status, head))
            assert log.complete and resp.complete and resp.body == b"kept alive %d" % k
    finally:
        writer.close()


async def multipart(port: int, path: str) -> None:
    boundary = "gcBoundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="input_text"\r\n'
        f"Content-Type: text/plain\r\n\r\nform tokens\r\n--{boundary}--\r\n"
    ).encode()
    reader = asyncio.create_task(get(port, path + "?format=ndjson"))
    await wait_registered()
    await put(port, path, body, [("Content-Type", f"multipart/form-data; boundary={boundary}")], method="POST")
    assert b"form tokens" in (await reader).body


async def lagged(port: int, path: str) -> None:
    """A reader that stops reading is evicted (``?stall_timeout=1``): the lagged ending, while
    the other reader gets every byte."""
    target = path + "?n=2&stall_timeout=1"
    data = b"x" * (12 << 20)  # more than the ring and both socket buffers of the stalled reader hold
    healthy = asyncio.create_task(get(port, target))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)  # before connect: no autotuning
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    try:
        writer.write(request_head("GET", target + "&format=ndjson", port, [], "1.1"))
        await writer.drain()
        await asyncio.sleep(0.3)
        log = await put(port, target, data)  # returns once the stalled reader was evicted
        status, head = await read_head(reader)
        stalled = await read_body(reader, Response(status, head))
    finally:
        writer.close()
    resp = await healthy
    assert log.complete and resp.complete and resp.body == data
    assert json.loads(stalled.body.splitlines()[-1])["end"] == "lagged"


async def refused(port: int, path: str) -> None:
    resp = await get(port, path + "?format=xml")
    assert resp.status == 400


SCENARIOS: dict[str, Callable[[int, str], Awaitable[None]]] = {
    "receiver_first": receiver_first,
    "sender_first": sender_first,
    "every_framing": every_framing,
    "producer_vanishes": producer_vanishes,
    "reader_leaves": reader_leaves,
    "cancelled": cancelled,
    "resumed": resumed,
    "watched": watched,
    "waiting_reader_leaves": waiting_reader_leaves,
    "keep_alive": keep_alive,
    "multipart": multipart,
    "lagged": lagged,
    "refused": refused,
}


def _signal_and_wait(server: Server, out: Path, name: str) -> dict[int, Path]:
    pids = server.workers()
    assert len(pids) == 2, pids
    files = {pid: out / name.format(pid=pid) for pid in pids}
    for path in files.values():
        path.unlink(missing_ok=True)
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not all(p.exists() for p in files.values()):
        assert time.monotonic() < deadline, f"the gc probe did not answer: {files}"
        time.sleep(0.05)
    return files


def _owned_by(worker: int, stem: str) -> str:
    """A path from ``stem`` whose rendezvous runs in ``worker`` (of two)."""
    return next(path for k in range(64) if owner_of(path := f"{stem}-{k}", 2) == worker)


def _garbage_after(
    server_factory: ServerFactory, out: Path, play: Callable[[int, str], Awaitable[None]], name: str, *flags: str
) -> Counter[str]:
    """What only a cyclic collection frees in the workers after ``play`` ran ``ROUNDS`` times
    (after as many rounds of warm-up), by type, all workers together."""
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
        "TEST_GC_PROBE_DIR": str(out),
    }
    server = server_factory("--workers", "2", *flags, env=env)
    count = ROUNDS if name != "lagged" else 2  # an eviction waits a second for its stall

    async def rounds(tag: str) -> None:
        for i in range(count):
            await play(server.port, _owned_by(i % 2, f"/gc-{tag}-{name}-{i}"))

    run(rounds("warm"))  # worker-wide objects built on first use are not garbage of a stream
    time.sleep(0.5)
    _signal_and_wait(server, out, "base.{pid}")
    run(rounds("test"))
    time.sleep(0.5)  # endings (transfer logs, ring frees) settle
    garbage: Counter[str] = Counter()
    for path in _signal_and_wait(server, out, "garbage.{pid}.json").values():
        garbage.update(json.loads(path.read_text()))
    return garbage


@pytest.mark.slow(6)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_finished_streams_leave_no_cyclic_garbage(server_factory: ServerFactory, tmp_path: Path, scenario: str) -> None:
    garbage = _garbage_after(server_factory, tmp_path, SCENARIOS[scenario], scenario)
    assert not garbage, f"{scenario} left objects only a cyclic collection frees: {garbage.most_common(25)}"


def test_tls_streams_leave_no_cyclic_garbage(server_factory: ServerFactory, tmp_path: Path) -> None:
    """HTTPS on the pipe port (the server sniffs each connection): a TLS receiver and a TLS
    sender, and a plain receiver with a TLS sender."""
    cert, _key = paths = self_signed_cert(tmp_path)
    tls = ssl.create_default_context(cafile=str(cert))
    data = pattern(200_000, seed=7)

    async def play(port: int, path: str) -> None:
        await transfer(port, path, data, tls, tls)
        await transfer(port, path + "-mixed", data, tls, None, chunked=True)

    garbage = _garbage_after(
        server_factory, tmp_path, play, "tls", "--ssl-certfile", str(paths[0]), "--ssl-keyfile", str(paths[1])
    )
    assert not garbage, f"TLS streams left objects only a cyclic collection frees: {garbage.most_common(25)}"
