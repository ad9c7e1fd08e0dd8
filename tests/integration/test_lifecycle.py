"""SPEC 2.3-2.6, 2.8 and Part 4's read keys and limits against a real server: what a user checks.

Cancel (DELETE), status (HEAD), bounded waits, watchers and the replay window, stall
eviction, read keys, max_pipes and max_memory. Real server processes on loopback, real
sockets, real shared memory; time bounds are generous (noisy 2-core machines).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

from tests.support.pipes import Response, fresh, get, pattern, put, read_body, read_head, run
from tests.support.servers import Server, ServerFactory, metric


async def request(port: int, method: str, path: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """One request without a body; the whole response (HEAD: the head only)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers or []]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        status, head = await read_head(reader)
        resp = Response(status, head)
        if method == "HEAD" or status == 204:
            resp.complete = True
            return resp
        return await read_body(reader, resp)
    finally:
        writer.close()


async def ticking(count: int, every: float, seed: int = 0) -> AsyncIterator[bytes]:
    """A slow producer: ``count`` numbered lines, one per ``every`` seconds (an LLM's tokens)."""
    for i in range(count):
        yield f"token {seed}-{i}\n".encode()
        await asyncio.sleep(every)


def tokens(count: int, seed: int = 0) -> bytes:
    return b"".join(f"token {seed}-{i}\n".encode() for i in range(count))


class Stream:
    """A GET whose body the test reads at its own pace (or not at all)."""

    def __init__(self, port: int, path: str, headers: list[tuple[str, str]] | None = None, rcvbuf: int = 0) -> None:
        self.port, self.path, self.headers, self.rcvbuf = port, path, headers or [], rcvbuf
        self.status = 0
        self.head: list[tuple[str, str]] = []

    async def open(self) -> Stream:
        sock = socket.socket()
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        lines = [f"GET {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        return self

    async def response(self) -> Response:
        self.status, self.head = await read_head(self.reader)
        return await read_body(self.reader, Response(self.status, self.head))

    def close(self) -> None:
        self.writer.close()


def test_delete_cancels_running_transfers_on_any_worker(server_factory: ServerFactory) -> None:
    """DELETE ends the sender's upload (log `[INFO] Cancelled.`, no final chunk), cuts the
    receiver and a watcher, answers 204 then 404; across 3 workers every role lands on
    several different workers, and the path is free again at once."""
    server = server_factory("--workers", "3")
    pipes = 6

    async def one(i: int) -> tuple[Response, Response, Response, Response, Response, Response]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, ticking(400, 0.02, i)))
        receiver = asyncio.create_task(get(server.port, path))
        await asyncio.sleep(0.8)
        watcher = asyncio.create_task(get(server.port, path + "?watch=1"))
        await asyncio.sleep(0.5)
        cancelled = await request(server.port, "DELETE", path)
        log, got, watched = await sender, await receiver, await watcher
        again = await request(server.port, "DELETE", path)
        after_sender = asyncio.create_task(put(server.port, path, b"fresh"))
        after = await get(server.port, path)
        await after_sender
        return cancelled, log, got, watched, again, after

    async def scenario() -> list[tuple[Response, Response, Response, Response, Response, Response]]:
        return list(await asyncio.gather(*(one(i) for i in range(pipes))))

    workers: set[str | None] = set()
    for cancelled, log, got, watched, again, after in run(scenario()):
        assert cancelled.status == 204, cancelled
        assert log.text.endswith("[INFO] Cancelled.\n") and not log.complete, log.text
        assert got.status == 200 and not got.complete and got.body.startswith(b"token ")
        assert watched.status == 200 and not watched.complete and watched.body.startswith(b"token ")
        assert again.status == 404 and again.text.startswith("[ERROR] ")
        assert after.body == b"fresh" and after.complete
        workers |= {cancelled.header("ringpipe-worker"), got.header("ringpipe-worker"), log.header("ringpipe-worker")}
    assert len(workers) >= 2
    assert any(t.get("ending") == "cancelled" for t in server.transfers())


def test_curl_sender_exits_nonzero_when_cancelled(server: Server) -> None:
    """`curl -T -` fed by a generator: DELETE makes curl fail and the generator get SIGPIPE."""
    path = fresh()
    url = server.url + path
    producer = subprocess.Popen(
        ["sh", "-c", f"while true; do echo tick; sleep 0.05; done | curl -sS -T - {url}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    receiver = subprocess.Popen(["curl", "-sS", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    status = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", url], capture_output=True
    )
    assert status.stdout == b"204"
    out, _err = producer.communicate(timeout=30)
    assert producer.returncode != 0
    assert out.decode().endswith("[INFO] Cancelled.\n")
    got, _err = receiver.communicate(timeout=30)
    assert receiver.returncode == 18 and got.startswith(b"tick\n")  # 18: transfer closed early


def test_delete_on_waiting_pipe_answers_every_party(server: Server) -> None:
    async def scenario() -> tuple[Response, Response, Response, Response]:
        path = fresh() + "?n=2"
        receiver = asyncio.create_task(get(server.port, path))
        sender = asyncio.create_task(put(server.port, path, b"never sent"))
        await asyncio.sleep(0.5)
        cancelled = await request(server.port, "DELETE", path)
        return cancelled, await sender, await receiver, await request(server.port, "HEAD", path)

    cancelled, log, got, head = run(scenario())
    assert cancelled.status == 204
    assert log.text.splitlines()[-1] == "[INFO] Cancelled." and not log.complete
    assert got.status == 410 and got.text.startswith("[ERROR] ") and "cancelled" in got.text
    assert head.status == 404


def test_head_reports_state_without_registering(server: Server) -> None:
    async def scenario() -> list[Response]:
        path = fresh()
        heads = [await request(server.port, "HEAD", path + "?n=2")]
        receiver = asyncio.create_task(get(server.port, path + "?n=2"))
        await asyncio.sleep(0.4)
        heads.append(await request(server.port, "HEAD", path))
        second = asyncio.create_task(get(server.port, path + "?n=2"))
        sender = asyncio.create_task(put(server.port, path + "?n=2", ticking(30, 0.05)))
        await asyncio.sleep(1.0)
        heads.append(await request(server.port, "HEAD", path))
        await sender, await receiver, await second
        heads.append(await request(server.port, "HEAD", path))
        return heads

    free, waiting, running, done = run(scenario())
    assert free.status == 404 and free.header("content-type") == "text/plain"
    assert waiting.status == 200 and waiting.header("ringpipe-state") == "waiting"
    assert waiting.header("ringpipe-receivers") == "1/2" and waiting.header("ringpipe-offset") == "0"
    assert running.header("ringpipe-state") == "established"
    assert running.header("ringpipe-receivers") == "2/2"
    assert int(running.header("ringpipe-offset") or 0) > 0 and running.header("ringpipe-epoch")
    assert done.status == 404


def test_waiting_is_bounded(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--wait-timeout", "1")

    async def scenario() -> tuple[Response, Response, float]:
        began = time.monotonic()
        receiver, log = await asyncio.gather(get(server.port, fresh()), put(server.port, fresh(), b"x"))
        return receiver, log, time.monotonic() - began

    receiver, log, took = run(scenario())
    assert receiver.status == 408 and receiver.text.startswith("[ERROR] ")
    assert log.status == 200 and log.text.splitlines()[-1].startswith("[ERROR] ") and "1 s" in log.text
    assert took < 10


def test_read_keys(server: Server) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex

    async def scenario() -> dict[str, Response]:
        path = fresh()
        out: dict[str, Response] = {}
        sender = asyncio.create_task(put(server.port, path, b"private bytes", [("Ringpipe-Read-Key", secret)]))
        await asyncio.sleep(0.4)
        out["none"] = await get(server.port, path)
        out["wrong"] = await get(server.port, path + "?key=nope")
        out["head"] = await request(server.port, "HEAD", path)
        out["head_key"] = await request(server.port, "HEAD", path, [("Ringpipe-Read-Key", secret)])
        out["delete"] = await request(server.port, "DELETE", path)
        out["right"] = await get(server.port, path + "?key=" + secret)
        out["log"] = await sender
        # A reader that comes first with a key binds the pipe: a keyless sender is refused.
        bound = fresh()
        reader = asyncio.create_task(get(server.port, bound, [("Ringpipe-Read-Key", secret)]))
        await asyncio.sleep(0.4)
        out["keyless_sender"] = await put(server.port, bound, b"x")
        keyed = await put(server.port, bound, b"bound", [("Ringpipe-Read-Key", secret)])
        out["bound"] = await reader
        assert keyed.complete
        return out

    out = run(scenario())
    for name in ("none", "wrong", "delete", "keyless_sender"):
        assert out[name].status == 403 and out[name].text.startswith("[ERROR] "), name
    assert out["head"].status == 403 and out["head_key"].status == 200
    assert out["right"].body == b"private bytes" and out["right"].complete
    assert out["bound"].body == b"bound"
    assert not any(secret in line for line in server.raw_lines)


def test_max_pipes_and_max_memory(server_factory: ServerFactory) -> None:
    """3 pipes at most, and rings counted as reserved: two pipes that have moved 700 kB grow
    their rings to 1 MiB (a 512 KiB replay window needs twice that) and, with their headers
    (a page each, shared with the data's first bytes), fill the budget but for less than the
    one page a third ring needs, so a third transfer is refused with 503 while they run."""
    two_rings = 2 * (4096 + (1 << 20))
    server = server_factory(
        "--workers", "1", "--max-pipes", "3", "--max-memory", str(two_rings + 2048),
        "--ring-bytes", "1M", "--replay-bytes", "512K",
    )  # fmt: skip
    head = pattern(700_000)

    async def grown(seed: int) -> AsyncIterator[bytes]:
        yield head
        async for tick in ticking(30, 0.05, seed):
            yield tick

    async def scenario() -> tuple[Response, Response, Response, list[Response]]:
        a, b, c = fresh(), fresh(), fresh()
        waiting = [asyncio.create_task(get(server.port, p)) for p in (a, b, c)]
        await asyncio.sleep(0.4)
        fourth = await get(server.port, fresh())
        running = [asyncio.create_task(put(server.port, p, grown(i))) for i, p in enumerate((a, b))]
        await asyncio.sleep(0.5)
        reserved = await asyncio.get_running_loop().run_in_executor(None, metric, server, "ringpipe_ring_bytes")
        assert reserved == two_rings
        third_log = await put(server.port, c, b"y")
        third = await waiting[2]
        done = [await t for t in (*running, *waiting[:2])]
        return fourth, third_log, third, done

    fourth, third_log, third, done = run(scenario())
    assert fourth.status == 503 and fourth.text.startswith("[ERROR] ")
    assert third.status == 503 and "memory" in third.text
    assert "memory" in third_log.text
    assert all(r.complete for r in done)
    assert [r.body for r in done[2:]] == [head + tokens(30, i) for i in range(2)]


def test_watchers_join_late_and_never_slow_the_producer(server_factory: ServerFactory) -> None:
    """A watcher joining late gets the oldest held bytes (here: all of them), ``from=live``
    starts at the head, a watcher that never reads does not hold the producer back, and
    max_watchers is enforced."""
    server = server_factory("--workers", "2", "--max-watchers", "3")
    data = pattern(3_000_000)

    async def scenario() -> dict[str, object]:
        path = fresh()
        out: dict[str, object] = {}
        early = asyncio.create_task(get(server.port, path + "?watch=1"))  # free path: 404
        out["free"] = await early
        receiver = asyncio.create_task(get(server.port, path))
        await asyncio.sleep(0.3)
        waiting_watcher = asyncio.create_task(get(server.port, path + "?watch=1"))
        stuck = await Stream(server.port, path + "?watch=1", rcvbuf=4096).open()  # never reads
        live = asyncio.create_task(get(server.port, path + "?watch=1&from=live"))
        await asyncio.sleep(0.3)
        out["over"] = await get(server.port, path + "?watch=1")

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 100_000):
                yield data[i : i + 100_000]
                await asyncio.sleep(0.02)

        out["log"] = await put(server.port, path, body())
        out["receiver"] = await receiver
        out["watcher"] = await waiting_watcher
        out["live"] = await live
        stuck.close()
        return out

    out = run(scenario())
    assert out["free"].status == 404  # type: ignore[attr-defined]
    assert out["over"].status == 503  # type: ignore[attr-defined]
    log = out["log"]
    assert isinstance(log, Response) and log.text.endswith("received successfully.\n")
    receiver, watcher, live = out["receiver"], out["watcher"], out["live"]
    assert isinstance(receiver, Response) and receiver.body == data and receiver.complete
    assert isinstance(watcher, Response) and watcher.complete and watcher.body == data
    assert watcher.header("ringpipe-offset") == "0"
    assert isinstance(live, Response) and live.complete and data.endswith(live.body)


def test_raw_watcher_out_of_the_window_is_cut(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--ring-bytes", "65536", "--replay-bytes", "16384")
    data = pattern(8_000_000, seed=5)

    async def scenario() -> tuple[Response, Response, bytes, bool]:
        path = fresh()
        receiver = asyncio.create_task(get(server.port, path))
        await asyncio.sleep(0.3)
        slow = await Stream(server.port, path + "?watch=1", rcvbuf=4096).open()
        await asyncio.sleep(0.3)
        sender = asyncio.create_task(put(server.port, path, data, chunked=True))
        status, _head = await read_head(slow.reader)
        got = await receiver
        log = await sender
        body = b""
        ended = False
        while chunk := await slow.reader.read(1 << 16):
            body += chunk
            ended = body.endswith(b"\r\n0\r\n\r\n")
        slow.close()
        assert status == 200
        return log, got, body, ended

    log, got, body, ended = run(scenario())
    assert got.body == data and log.complete
    assert len(body) < len(data) and not ended  # cut: no final chunk


def test_stalled_receiver_is_evicted_and_the_others_finish(server: Server) -> None:
    """n=3, ?stall_timeout=1 on the sender: one reader stops reading; the other two get
    every byte, the stalled one is cut, and the sender's log says a receiver was evicted."""
    data = pattern(12_000_000, seed=9)

    async def scenario() -> tuple[Response, list[Response], bool]:
        path = fresh() + "?n=3"
        readers = [asyncio.create_task(get(server.port, path)) for _ in range(2)]
        stalled = await Stream(server.port, path, rcvbuf=4096).open()
        await asyncio.sleep(0.3)
        log = await put(server.port, path + "&stall_timeout=1", data, chunked=True)
        got = [await r for r in readers]
        await read_head(stalled.reader)
        rest = b""
        while chunk := await stalled.reader.read(1 << 16):
            rest += chunk
        stalled.close()
        return log, got, rest.endswith(b"\r\n0\r\n\r\n")

    log, got, stalled_complete = run(scenario())
    assert all(r.body == data and r.complete for r in got)
    assert not stalled_complete
    assert "[INFO] A receiver was evicted: it read nothing for 1 s." in log.text
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")
