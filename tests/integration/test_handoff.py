"""Connection hand-off: a small pipe is served whole by its path's owner worker.

A real supervisor with several workers on a loopback port; the kernel spreads connections
over the workers, and the ``Ringpipe-Worker`` header says which one answered. What an
operator checks: every party of a pipe with ``?n`` up to ``--colocate-max-n`` is answered
by the owner (``owner_of``) and no transfer crosses workers; bytes are intact in every
framing; a keep-alive connection can be handed on for its next request; bigger fan-outs are
not handed off; kill -9 of an owner cuts only its own pipes and leaves no ring behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

from websockets.asyncio.client import connect as ws_connect

from ringpipe.core.paths import owner_of
from tests.support.pipes import Conn, Response, fresh, get, pattern, put, run
from tests.support.servers import ServerFactory, metric


def test_small_pipes_are_served_whole_by_their_owner(server_factory: ServerFactory) -> None:
    """40 pipes, n=2 (a raw and an SSE reader), on 3 workers: every party answered by the owner."""
    workers = 3
    server = server_factory("--workers", str(workers))
    paths = [fresh() for _ in range(40)]
    payloads = [pattern(50_000 + i * 17, seed=i) for i in range(len(paths))]

    async def one_pipe(i: int) -> tuple[Response, Response, Response]:
        url = paths[i] + "?n=2"
        raw = asyncio.create_task(get(server.port, url))
        sse = asyncio.create_task(get(server.port, url + "&format=ndjson"))
        await asyncio.sleep(0.05)
        log = await put(server.port, url, payloads[i])
        return log, await raw, await sse

    async def scenario() -> list[tuple[Response, Response, Response]]:
        out = []
        for batch in range(0, len(paths), 10):  # spread over time: connections land on every worker
            out += await asyncio.gather(*(one_pipe(i) for i in range(batch, batch + 10)))
        return out

    for i, (log, raw, ndjson) in enumerate(run(scenario())):
        owner = str(owner_of(paths[i], workers))
        assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n"), log.text
        assert raw.complete and raw.body == payloads[i]
        assert ndjson.complete and b'"end":"done"' in ndjson.body
        assert {log.header("ringpipe-worker"), raw.header("ringpipe-worker"), ndjson.header("ringpipe-worker")} == {
            owner
        }
    assert metric(server, "ringpipe_handoffs_total") > 0
    assert metric(server, "ringpipe_transfers_across_workers_total") == 0


def test_websocket_readers_and_keep_alive_connections_are_handed_on(server_factory: ServerFactory) -> None:
    workers = 2
    server = server_factory("--workers", str(workers))
    data = pattern(300_000, seed=3)
    by_owner: dict[int, str] = {}
    while len(by_owner) < workers:
        path = fresh()
        by_owner.setdefault(owner_of(path, workers), path)

    async def websocket_pipe() -> bytes:
        path = fresh()
        got = bytearray()
        async with ws_connect(f"ws://127.0.0.1:{server.port}{path}", max_size=None) as ws:
            sender = asyncio.create_task(put(server.port, path, data))
            async for message in ws:
                got += message if isinstance(message, bytes) else message.encode()
            assert (await sender).status == 200
        return bytes(got)

    async def keep_alive() -> list[tuple[str, bytes]]:
        """One connection, a request for a pipe of each worker in turn: each one is served."""
        conn = await Conn.open(server.port)
        out = []
        try:
            for owner, path in sorted(by_owner.items()) * 2:
                body = f"for worker {owner} via {path}".encode()
                sender = asyncio.create_task(put(server.port, path, body))
                await conn.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                reply = await conn.reply(timeout=20)
                assert reply.status == 200 and reply.complete, reply
                assert reply.header("ringpipe-worker") == str(owner)
                out.append((path, reply.body))
                assert (await sender).status == 200
        finally:
            conn.close()
        return out

    assert run(websocket_pipe()) == data
    for path, body in run(keep_alive()):
        assert body.endswith(path.encode())


def test_big_fan_outs_are_not_handed_off(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--colocate-max-n", "2")
    paths = [fresh() for _ in range(8)]
    data = pattern(64_000)

    async def one_pipe(path: str) -> list[Response]:
        receivers = [asyncio.create_task(get(server.port, path + "?n=3")) for _ in range(3)]
        await asyncio.sleep(0.05)
        await put(server.port, path + "?n=3", data)
        return [await r for r in receivers]

    async def scenario() -> list[list[Response]]:
        return list(await asyncio.gather(*(one_pipe(p) for p in paths)))

    for receivers in run(scenario()):
        assert all(r.complete and r.body == data for r in receivers)
    assert metric(server, "ringpipe_handoffs_total") == 0


def test_kill_9_of_an_owner_cuts_only_its_pipes(server_factory: ServerFactory) -> None:
    workers = 3
    server = server_factory("--workers", str(workers))
    victim_slot = 1
    paths = [fresh() for _ in range(18)]
    chunk = pattern(8_192)
    chunks = 50
    expected = chunk * chunks

    async def paced() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield chunk
            await asyncio.sleep(0.05)

    async def sender(path: str) -> Response | None:
        try:
            return await put(server.port, path, paced())
        except (ConnectionError, asyncio.IncompleteReadError):
            return None

    async def receiver(path: str) -> Response | None:
        try:
            return await get(server.port, path)
        except (ConnectionError, asyncio.IncompleteReadError):
            return None

    async def scenario() -> list[tuple[Response | None, Response | None]]:
        receivers = []
        for p in paths:
            receivers.append(asyncio.create_task(receiver(p)))
            await asyncio.sleep(0.01)
        senders = [asyncio.create_task(sender(p)) for p in paths]
        await asyncio.sleep(1.0)  # mid-transfer: 2.5 s of paced body per pipe
        os.kill(server.workers_by_slot()[victim_slot], signal.SIGKILL)
        return [(await s, await r) for s, r in zip(senders, receivers, strict=True)]

    cut = intact = 0
    for path, (log, got) in zip(paths, run(scenario()), strict=True):
        if owner_of(path, workers) == victim_slot:
            cut += 1
            assert got is None or not got.complete, f"{path}: a cut pipe looked complete"
        else:
            intact += 1
            assert log is not None and log.text.endswith("received successfully.\n"), log and log.text
            assert got is not None and got.complete and got.body == expected
    assert cut and intact, (cut, intact)
    server.wait_log(lambda r: r.get("event") == "worker_ready")
    deadline = time.monotonic() + 10
    while server.stray_shm() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.stray_shm()
