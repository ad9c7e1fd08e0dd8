"""Limits at the HTTP edge (SPEC Part 3 errors, Part 4 limits), against a real server.

Each limit answers precisely (400 malformed, 414 target, 431 head, 503 connections, in the
one-line ``[ERROR]`` form, read by the client rather than lost to a reset), a connection that
never finishes its request head is closed at ``--header-timeout``, and misbehaving clients
in their hundreds do not slow or break the transfers of everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest

from ringpipe.core.config import worker_share
from ringpipe.core.paths import owner_of
from tests.support.pipes import Conn, Response, get, head, pattern, put, request, run
from tests.support.servers import Server

MIB = 1 << 20
ERROR_LINE = re.compile(rb"\[ERROR\] [^\n]+\n")


def ask(port: int, raw: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``raw`` on a blocking socket, then read until the server closes: all it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(raw)
        out = b""
        with contextlib.suppress(ConnectionError):
            while data := sock.recv(65536):
                out += data
        return out


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def assert_rejection(answer: bytes, status: int, message: str | None = None) -> None:
    """The SPEC's rejection form, and the connection closed after it."""
    code, headers, body = parse(answer)
    assert code == status, answer[:300]
    assert ERROR_LINE.fullmatch(body), body
    if message is not None:
        assert body == f"[ERROR] {message}\n".encode()
    assert headers["content-type"] == "text/plain"
    assert headers["access-control-allow-origin"] == "*"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"


async def transfers(port: int, count: int, size: int, tag: str) -> None:
    """``count`` concurrent 1 -> 1 transfers of ``size`` bytes, every byte checked."""

    async def one(i: int) -> None:
        data = pattern(size, seed=i)
        path = f"/{tag}-{i}"
        receiver = asyncio.create_task(get(port, path))
        sender = await put(port, path, data)
        got = await receiver
        assert sender.status == 200 and got.status == 200
        assert got.complete and got.body == data, f"{path}: {len(got.body)} of {size} bytes"

    await asyncio.gather(*(one(i) for i in range(count)))


def assert_same_workers(server: Server, before: dict[int, int]) -> None:
    assert server.workers_by_slot() == before
    assert sorted(server.workers()) == sorted(before.values())
    assert not [line for line in server.raw_lines if "worker_died" in line or "Exception in ASGI" in line]


# ---- (c) each limit reached ----


def test_each_limit_answers_precisely(server_factory: Callable[..., Server]) -> None:
    server = server_factory("--workers", "2", "--max-path-bytes", "1024", "--max-header-bytes", "4096")
    port = server.port
    assert_rejection(ask(port, head("GET", "/" + "a" * 1100)), 414, "The request target is longer than 1024 bytes.")
    assert_rejection(
        ask(port, head("GET", "/x", [("X-Big", "b" * 5000)])), 431, "The request head is larger than 4096 bytes."
    )
    many = [(f"X-H{i}", "v" * 40) for i in range(200)]
    assert_rejection(ask(port, head("GET", "/x", many)), 431)
    assert_rejection(ask(port, b"FOO BAR\r\n\r\n"), 400)
    assert_rejection(ask(port, b"GET /x HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"), 400)
    assert_rejection(ask(port, b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"), 400)
    assert_rejection(ask(port, b"GET /\xe3\x81\x82 HTTP/1.1\r\nHost: x\r\n\r\n"), 400)
    assert_rejection(ask(port, b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"), 400)
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\n"
    answers = ask(port, chunked)  # the reserved path answers first; the broken body is then a 400 or a close
    assert parse(answers)[0] == 400
    # within the limits everything still works: an 1000-byte target, a 3 KB head
    asyncio.run(transfers(port, 1, 64 << 10, "p" * 1000))
    ok = ask(port, head("GET", "/version", [("X-Fill", "f" * 3000), ("Connection", "close")]))
    assert parse(ok)[0] == 200
    logged = [line for line in server.raw_lines if '"event": "refused"' in line]
    assert len(logged) >= 9, logged
    assert all("aaaa" not in line for line in logged)  # no target or header in the log


def test_the_answer_is_read_even_while_the_client_is_still_sending(server_factory: Callable[..., Server]) -> None:
    """Lingering close: a 1 MB target or a 2 MB head sent in one go still gets its answer, not a reset."""
    server = server_factory("--workers", "1")
    assert_rejection(ask(server.port, head("GET", "/" + "a" * 1_000_000)), 414)
    assert_rejection(ask(server.port, head("GET", "/x", [(f"X-{i}", "v" * 100) for i in range(20_000)])), 431)


def test_connection_limit_is_503_then_recovers(server_factory: Callable[..., Server]) -> None:
    server = server_factory("--workers", "1", "--max-connections", "5")
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    try:
        time.sleep(0.3)
        answer = ask(server.port, head("GET", "/version"))
        assert_rejection(answer, 503, "The server is at its connection limit.")
        # the held connections are served normally
        held[0].sendall(head("GET", "/version"))
        held[0].settimeout(5)
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert parse(ask(server.port, head("GET", "/version", [("Connection", "close")])))[0] == 200


def test_header_timeout_closes_idle_and_partial_heads_only(server_factory: Callable[..., Server]) -> None:
    """Closed at --header-timeout: a silent connection, a partial head, a partial second head
    on a keep-alive connection. Not closed: parties waiting longer than that for their peers."""
    server = server_factory("--workers", "2", "--header-timeout", "2")
    port = server.port

    async def main() -> None:
        silent = await Conn.open(port)
        partial = await Conn.open(port)
        await partial.send(b"GET /partial HTTP/1.1\r\nHost: x\r\n")
        second = await Conn.open(port)
        await second.send(head("GET", "/version"))
        assert (await second.reply(timeout=5)).status == 200
        await second.send(b"GET /version HTTP/1.1\r\n")
        receiver = asyncio.create_task(get(port, "/slow-peer"))
        started = time.monotonic()
        closed = await asyncio.gather(*(c.closed_within(6) for c in (silent, partial, second)))
        assert closed == [True, True, True]
        assert 1.5 < time.monotonic() - started < 6
        await asyncio.sleep(1.0)  # the receiver has now waited longer than the header timeout
        assert not receiver.done()
        data = pattern(MIB, seed=3)
        sent = await put(port, "/slow-peer", data)
        got = await receiver
        assert sent.status == 200 and got.complete and got.body == data

    asyncio.run(main())
    assert any('"event": "header_timeout"' in line for line in server.raw_lines)


@pytest.mark.parametrize("later", [False, True], ids=["with-the-head", "mid-transfer"])
def test_broken_chunk_framing_while_relaying_is_reported(server_factory: Callable[..., Server], later: bool) -> None:
    """A chunked upload read straight into the ring breaks its framing (in the bytes that
    came with the head, or later): the sender's log ends with the reason (not a reset), the
    receiver's body is visibly cut."""
    server = server_factory("--workers", "2")

    async def main() -> None:
        receiver = await Conn.open(server.port)
        await receiver.send(head("GET", "/broken-chunks"))
        await asyncio.sleep(0.3)
        sender = await Conn.open(server.port)
        good, bad = b"5\r\nhello\r\n", b"zz\r\n" + b"x" * 200_000
        await sender.send(head("PUT", "/broken-chunks", [("Transfer-Encoding", "chunked")]) + good)
        if later:
            await asyncio.sleep(0.5)
        log_task = asyncio.create_task(sender.reply(method="PUT", timeout=10))
        await sender.send(bad)
        log = await log_task
        assert log.status == 200
        assert log.body.decode().splitlines()[-1] == (
            "[ERROR] The request body is malformed: bad byte 0x7a in a chunk size."
        ), log.body
        got = await receiver.reply(timeout=10)
        assert got.status == 200 and not got.complete
        assert await sender.closed_within(5)

    asyncio.run(main())


# ---- (a) slowloris ----


def test_slowloris_does_not_starve_transfers(server_factory: Callable[..., Server]) -> None:
    """500 connections each sending a header byte a second never finish their heads: 20
    transfers of 1 MiB still complete within 10 s, and every slow connection is closed at
    --header-timeout (3 s)."""
    server = server_factory("--workers", "2", "--header-timeout", "3")
    before = server.workers_by_slot()
    port = server.port

    async def slowloris(ends: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened = time.monotonic()
        writer.write(b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        try:
            for _ in range(30):
                with contextlib.suppress(TimeoutError):
                    if not await asyncio.wait_for(reader.read(1024), 1.0):
                        break
                writer.write(b"a")
                await writer.drain()
        except ConnectionError:
            pass
        ends.append(time.monotonic() - opened)
        writer.close()

    async def main() -> None:
        ends: list[float] = []
        attackers = [asyncio.create_task(slowloris(ends)) for _ in range(500)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.wait_for(transfers(port, 20, MIB, "beside-slowloris"), 10)
        assert time.monotonic() - started < 10
        await asyncio.wait_for(asyncio.gather(*attackers), 30)
        assert len(ends) == 500
        assert min(ends) > 2.5, min(ends)
        assert max(ends) < 3 + 6, max(ends)

    asyncio.run(main())
    assert_same_workers(server, before)


# ---- (b) a flood of 400-worthy requests ----

FLOOD: list[tuple[bytes, int]] = [
    (b"FOO BAR\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\n\r\n", 400),
    (b"\x00\x01\x02\x03\r\n\r\n", 400),
    (b"GET /x HTTP/9.9\r\n\r\n", 400),
    (head("GET", "/" + "t" * 20_000), 414),
    (head("GET", "/x", [("X-Big", "h" * 20_000)]), 431),
    (request("PUT", "/x", b"", [("Content-Length", "-1")], length=False), 400),
]


def test_flood_of_bad_requests_leaves_transfers_intact(server_factory: Callable[..., Server]) -> None:
    server = server_factory("--workers", "2")
    before = server.workers_by_slot()
    port = server.port
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def flood(offset: int) -> None:
        i = offset
        while not stop.is_set():
            raw, status = FLOOD[i % len(FLOOD)]
            i += 1
            try:
                answer = ask(port, raw, timeout=10)
                assert_rejection(answer, status)
            except (AssertionError, OSError, ValueError, IndexError) as exc:
                failures.append(f"{raw[:40]!r}: {type(exc).__name__} {exc}"[:300])
            sent[0] += 1

    threads = [threading.Thread(target=flood, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        asyncio.run(asyncio.wait_for(transfers(port, 10, MIB, "beside-flood"), 30))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures[:5]
    assert sent[0] >= 40, sent[0]
    assert_same_workers(server, before)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_rejections_of_parsed_requests_keep_their_form(server_factory: Callable[..., Server], version: str) -> None:
    """An HTTP/1.0 request's answers say HTTP/1.0 (as piping-server's do), errors included."""
    server = server_factory("--workers", "1")
    answer = ask(server.port, head("GET", "/limits-n?n=0", [("Connection", "close")], version=version))
    assert answer.startswith(f"HTTP/{version} 400 ".encode()), answer[:100]


# ---- malformed openings: an upgrade with bytes after it, HTTP/0.9 ----

UPGRADE = (
    b"GET /ws-junk HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
#: 64 bytes a client must not send before the 101: an unmasked text frame, then noise.
JUNK = b"\x81\x05hello" + random.Random(13).randbytes(57)


@pytest.mark.parametrize("later", [False, True], ids=["same-read", "next-read"])
def test_bytes_after_a_websocket_upgrade_leave_the_drain_intact(
    server_factory: Callable[..., Server], later: bool
) -> None:
    """Bytes a client sends after its upgrade request, before any 101 (RFC 6455 forbids
    them), are the WebSocket's: the client is dropped, no HTTP answer is written on the
    upgraded connection, and a later SIGTERM drains the worker cleanly: a transfer running
    on it completes and the server exits 0."""
    server = server_factory("--workers", "1")
    data = pattern(MIB, seed=7)
    got = bytearray()

    def slow_receiver() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head("GET", "/drained", [("Connection", "close")]))
            while chunk := sock.recv(16 << 10):
                got.extend(chunk)
                time.sleep(0.05)

    def sender() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(request("PUT", "/drained", data, [("Connection", "close")]))
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass

    threads = [threading.Thread(target=slow_receiver), threading.Thread(target=sender)]
    threads[0].start()
    time.sleep(0.3)
    threads[1].start()
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as junk:
        junk.sendall(UPGRADE if later else UPGRADE + JUNK)
        if later:
            time.sleep(0.2)
            junk.sendall(JUNK)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := junk.recv(4096):
                answer += chunk
    assert b"HTTP/1.1 400" not in answer, answer
    assert len(got) < len(data)  # the transfer is still running: the drain must finish it
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert server.proc.wait(30) == 0
    _, _, body = bytes(got).partition(b"\r\n\r\n")
    assert body == data
    problems = [line for line in server.raw_lines if '"level": "error"' in line or "Traceback" in line]
    assert not problems, problems[:3]


HTTP09 = (b"GET /x\r\n", b"GET /x\n", b"GET /version\r\n\r\n", b"GET /x\r\nHost: a\r\n\r\n", b"POST /x\r\n")


def test_http09_request_lines_are_a_400_at_once(server_factory: Callable[..., Server]) -> None:
    """A request line without a version (HTTP/0.9) is answered 400 at once, not left to the
    header timeout; even a valid path (``/version``) is no 200."""
    server = server_factory("--workers", "1", "--header-timeout", "30")
    for opening in HTTP09:
        started = time.monotonic()
        answer = ask(server.port, opening, timeout=5)
        assert_rejection(answer, 400, "The request line has no HTTP version (HTTP/0.9 is not served).")
        assert time.monotonic() - started < 3, opening
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /x")  # in two reads: decided when the line ends
        time.sleep(0.2)
        sock.sendall(b"\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert parse(ask(server.port, head("GET", "/version", [("Connection", "close")])))[0] == 200


def _paths_owned_by(owner: int, workers: int, count: int, tag: str) -> list[str]:
    """``count`` pipe paths whose rendezvous runs on worker ``owner``."""
    paths: list[str] = []
    i = 0
    while len(paths) < count:
        path = f"/{tag}-{i}"
        if owner_of(path, workers) == owner:
            paths.append(path)
        i += 1
    return paths


async def _still_waiting(tasks: list[asyncio.Task[Response]], settle: float = 1.0) -> bool:
    """True if none of these waiting receivers was answered (refused) within ``settle`` s."""
    await asyncio.sleep(settle)
    return not any(task.done() for task in tasks)


async def _cancel(tasks: list[asyncio.Task[Response]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _refusal_logged(server: Server, text: str) -> None:
    """The owner logged the 503 as an operator's concern: one warning with the status."""
    refused = server.wait_log(lambda r: r.get("event") == "refused" and text in str(r.get("msg")))
    assert refused["level"] == "warning" and refused["status"] == 503


async def _opens_again(port: int, path: str, body: bytes) -> None:
    """Once the limit's holders left, a receiver on ``path`` waits (within 10 s, retried:
    the owner frees their pipes and connections as their ends arrive) and gets ``body``."""
    deadline = time.monotonic() + 10
    while True:
        receiver = asyncio.create_task(get(port, path))
        if await _still_waiting([receiver], 0.5):
            break
        assert time.monotonic() < deadline, receiver.result().text
    sent = await put(port, path, body)
    assert sent.status == 200 and (await receiver).body == body


def test_max_pipes_share_tolerates_uneven_hashing(server_factory: Callable[..., Server]) -> None:
    """--max-pipes 20 over 2 workers: each owner admits ceil(1.25 × 20 / 2) = 13, so 20 pipes
    split 13/7 by their paths' hashes are all admitted (an even split, 10 each, refused 3);
    the 14th on one owner is a 503 with its log line, and the server total is at most 26.
    Pipes that leave free their places."""
    server = server_factory("--workers", "2", "--max-pipes", "20")
    share = worker_share(20, 2)
    assert share == 13
    on0 = _paths_owned_by(0, 2, share + 1, "pipes-a")
    on1 = _paths_owned_by(1, 2, share + 1, "pipes-b")

    async def scenario() -> None:
        port = server.port
        first = [asyncio.create_task(get(port, p)) for p in [*on0[:share], *on1[:7]]]
        try:
            assert await _still_waiting(first), [t.result().text for t in first if t.done()]
            over = await get(port, on0[share])
            assert over.status == 503
            assert over.text == "[ERROR] The server is at its limit of pipes; try again later.\n"
            more = [asyncio.create_task(get(port, p)) for p in on1[7:share]]
            try:
                assert await _still_waiting(first + more)  # 26 pipes: 13 on each owner
                assert (await get(port, on1[share])).status == 503
            finally:
                await _cancel(more)
        finally:
            await _cancel(first)
        # the receivers left: their pipes are freed, and the refused path now opens
        await _opens_again(port, on0[share], b"freed")

    run(scenario())
    _refusal_logged(server, "limit of pipes")


def test_connection_share_counts_connections_handed_to_an_owner(server_factory: Callable[..., Server]) -> None:
    """--max-connections 8 over 2 workers: each worker holds ceil(1.25 × 8 / 2) = 5, hand-offs
    included. Receivers of paths that one worker owns are all gathered on it (accepted there
    or handed to it): 5 are served though that is more than an even split (4), the 6th is a
    503 with its log line whichever worker accepted it, and once they leave there is room again."""
    server = server_factory("--workers", "2", "--max-connections", "8")
    share = worker_share(8, 2)
    assert share == 5
    on0 = _paths_owned_by(0, 2, share + 1, "conns")

    async def scenario() -> None:
        port = server.port
        held = []
        try:
            for path in on0[:share]:  # one by one: each is settled on its owner before the next
                held.append(asyncio.create_task(get(port, path)))
                await asyncio.sleep(0.2)
            assert await _still_waiting(held), [t.result().text for t in held if t.done()]
            over = await asyncio.wait_for(get(port, on0[share]), 10)
            assert over.status == 503
            assert over.text == "[ERROR] The server is at its connection limit.\n"
        finally:
            await _cancel(held)
        await _opens_again(port, on0[share], b"room")

    run(scenario())
    _refusal_logged(server, "connection limit")
