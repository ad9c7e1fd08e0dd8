"""HTTP/1.1 over raw non-blocking sockets, as the bulk scenarios' clients speak it: connect,
``sendmsg`` lists of memoryviews (no copies), parse a response head, and the bulk sender.

The sender PUTs a chunked body of the pattern (``common.PATTERN2`` slices, one ``sendmsg`` per
chunk) and reads its response, the server's ``[INFO]`` log, at the same time: it requires HTTP
200, no ``[ERROR]``, a complete response, and its body written before the response ended.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .common import HOST, PATTERN2, PERIOD, BenchError


def wait_fd(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def ready() -> None:
        remove(fd)
        if not fut.done():
            fut.set_result(None)

    add(fd, ready)
    fut.add_done_callback(lambda _f: remove(fd))
    return fut


async def sendmsg_all(sock: socket.socket, parts: list[memoryview]) -> None:
    loop = asyncio.get_running_loop()
    while parts:
        try:
            sent = sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            await wait_fd(loop, sock.fileno(), write=True)
            continue
        while sent:
            head = parts[0]
            if sent >= len(head):
                sent -= len(head)
                parts.pop(0)
            else:
                parts[0] = head[sent:]
                sent = 0


async def recv_into(sock: socket.socket, view: memoryview) -> int:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            await wait_fd(loop, sock.fileno(), write=False)


async def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 10)
    except BaseException:
        sock.close()
        raise
    return sock


def queued_bytes(sock: socket.socket) -> int:
    """Bytes waiting in the socket's kernel receive queue (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


@dataclass
class Head:
    status: int
    headers: dict[str, str]
    reason: str


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise BenchError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
    return Head(int(parts[1]), headers, parts[2] if len(parts) > 2 else "")


# ---------------------------------------------------------------- the sender


@dataclass
class SendResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    log: str = ""
    nbytes: int = 0
    t_start: float | None = None
    t_req: float | None = None  # request head written
    t_body_done: float | None = None
    t_response_done: float | None = None


def chunk_header(n: int) -> memoryview:
    return memoryview(f"{n:x}\r\n".encode())


CRLF = memoryview(b"\r\n")


def put_head(port: int, target: str) -> memoryview:
    return memoryview(
        (
            f"PUT {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: ringpipe-bench\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )


async def read_small_response(sock: socket.socket, res: SendResult) -> None:
    """The sender's response: a short text log; done when its framing says so."""
    data = bytearray()
    scratch = bytearray(65536)
    view = memoryview(scratch)
    head: Head | None = None
    body_at = 0
    while True:
        if head is None:
            i = data.find(b"\r\n\r\n")
            if i >= 0:
                head = parse_head(bytes(data[:i]))
                res.status = head.status
                body_at = i + 4
        if head is not None:
            body = bytes(data[body_at:])
            if "chunked" in head.headers.get("transfer-encoding", "").lower():
                text, complete = _dechunk(body)
            elif "content-length" in head.headers:
                length = int(head.headers["content-length"])
                text, complete = body[:length], len(body) >= length
            else:
                text, complete = body, False
            res.log = text.decode("utf-8", "replace")
            if complete:
                return
        n = await recv_into(sock, view)
        if n == 0:
            if head is not None and "chunked" not in head.headers.get("transfer-encoding", "").lower():
                return
            raise BenchError("sender: connection closed before the response ended")
        data += view[:n]
        if len(data) > 1 << 20:
            raise BenchError("sender: response larger than 1 MiB")


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    out, pos = bytearray(), 0
    while True:
        j = body.find(b"\r\n", pos)
        if j < 0:
            return bytes(out), False
        size = int(body[pos:j].split(b";", 1)[0].strip() or b"0", 16)
        pos = j + 2
        if size == 0:
            return bytes(out), body.find(b"\r\n\r\n", pos - 2) >= 0
        if len(body) < pos + size + 2:
            out += body[pos:]
            return bytes(out), False
        out += body[pos : pos + size]
        pos += size + 2


async def send_body(
    sock: socket.socket,
    port: int,
    target: str,
    size: int,
    chunk: int,
    res: SendResult,
    stop: Callable[[], bool] | None = None,
) -> None:
    """The pattern, ``size`` bytes (or until ``stop()`` says so, checked between chunks)."""
    res.t_start = time.monotonic()
    await sendmsg_all(sock, [put_head(port, target)])
    res.t_req = time.monotonic()
    full_header = chunk_header(chunk)
    sent = 0
    while sent < size and not (stop is not None and stop()):
        n = min(chunk, size - sent)
        off = sent % PERIOD
        await sendmsg_all(sock, [full_header if n == chunk else chunk_header(n), PATTERN2[off : off + n], CRLF])
        sent += n
        res.nbytes = sent
    await sendmsg_all(sock, [memoryview(b"0\r\n\r\n")])
    res.t_body_done = time.monotonic()


async def wait_log(res: SendResult, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in res.log:
        if time.monotonic() > deadline:
            raise BenchError(f"sender: no {text!r} in the log after {timeout:.0f} s: {res.log[:300]!r}")
        await asyncio.sleep(0.002)


async def send_and_check(sock: socket.socket, res: SendResult, body: Coroutine[Any, Any, None]) -> None:
    """Write the request (``body``) while reading the response log; require 200, no [ERROR], a
    complete response, and the body written before the response ended."""
    reader = asyncio.create_task(read_small_response(sock, res))
    writer = asyncio.create_task(body)
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if writer not in done:
            exc = reader.exception()
            raise BenchError(
                f"response ended before the body was sent ({exc!r}; HTTP {res.status}; log {res.log[-200:]!r})"
            )
        writer.result()
        await reader
    finally:
        for t in (reader, writer):
            t.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    res.t_response_done = time.monotonic()
    if res.status != 200:
        raise BenchError(f"sender got HTTP {res.status}: {res.log[:200]!r}")
    if "[ERROR]" in res.log:
        raise BenchError(f"sender log reports an error: {res.log!r}")
    res.ok = True
