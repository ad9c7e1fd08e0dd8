"""Pipe clients on raw asyncio sockets, for tests that must see what a client sees.

Two clients, both reporting exactly how a response ended instead of hiding a truncated body:

- the streaming client (``get``, ``put``, ``Response``): one request per connection; a
  sender uploads while it reads its log, and a test can stall, abort or pace reads and
  writes. ``complete`` says whether the final chunk or the whole Content-Length arrived.
- the raw client (``Conn``, ``Reply``, ``head``, ``request``): the exact bytes go out, every
  detail comes back, for the side-by-side compatibility tests: the status line's version,
  interim ``100 Continue`` answers, repeated headers in order, how a body ended (also the
  close of a body delimited by it) and whether the server closed the connection. Requests
  are written as given (HTTP/1.0, no Host, odd targets, oversize heads, a body in pieces),
  and several responses can be read from one keep-alive connection.

``run`` runs a client scenario with a bound, ``fresh`` names a pipe no other test uses and
``pattern`` makes the bytes to send.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """Run one client scenario on a new event loop; a scenario that hangs fails with
    TimeoutError after ``timeout`` seconds instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def fresh() -> str:
    """A pipe path no other test (or earlier run) uses."""
    return "/" + uuid.uuid4().hex


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-at-small-scale test bytes."""
    block = bytes((i * 31 + seed * 7 + (i >> 8) * 13) & 0xFF for i in range(65521))
    reps = size // len(block) + 1
    return (block * reps)[:size]


class HeaderLookup:
    """Case-insensitive lookups in ``self.headers`` (lower-case names, in arrival order)."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


# -- the streaming client ---------------------------------------------------------------------


@dataclass
class Response(HeaderLookup):
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    complete: bool = False
    chunks: list[bytes] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed before a status line")
        status = int(line.split()[1])
        headers = []
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        if status != 100:
            return status, headers


async def read_body(reader: asyncio.StreamReader, resp: Response, on_chunk: object = None) -> Response:
    """Read the body; ``resp.complete`` tells a clean end from a cut one."""
    parts: list[bytes] = []
    try:
        if (resp.header("transfer-encoding") or "").lower() == "chunked":
            while True:
                size_line = await reader.readline()
                if not size_line:
                    break
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readline()
                    resp.complete = True
                    break
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                parts.append(data)
                if callable(on_chunk):
                    await on_chunk(data)
        elif resp.header("content-length") is not None:
            want = int(resp.header("content-length") or 0)
            got = 0
            while got < want:
                data = await reader.read(min(want - got, 1 << 20))
                if not data:
                    break
                got += len(data)
                parts.append(data)
                if callable(on_chunk):
                    await on_chunk(data)
            resp.complete = got == want
        else:
            while data := await reader.read(1 << 20):
                parts.append(data)
            resp.complete = True
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
            parts.append(exc.partial)
    resp.chunks = parts
    resp.body = b"".join(parts)
    return resp


def request_head(method: str, path: str, port: int, headers: Iterable[tuple[str, str]], version: str) -> bytes:
    """A request head with ``Host: 127.0.0.1:<port>`` and ``headers``."""
    return head(method, path, headers, version=version, host=f"127.0.0.1:{port}")


async def get(port: int, path: str, headers: Iterable[tuple[str, str]] = (), version: str = "1.1") -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head("GET", path, port, headers, version))
        await writer.drain()
        status, head = await read_head(reader)
        return await read_body(reader, Response(status, head))
    finally:
        writer.close()


async def _body_source(body: bytes | AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]
    else:
        async for chunk in body:
            yield chunk


async def put(
    port: int,
    path: str,
    body: bytes | AsyncIterator[bytes] = b"",
    headers: Iterable[tuple[str, str]] = (),
    *,
    method: str = "PUT",
    chunked: bool | None = None,
    version: str = "1.1",
) -> Response:
    """Upload ``body`` while reading the sender's log; returns the log response."""
    if chunked is None:
        chunked = not isinstance(body, bytes)
    head = list(headers)
    if chunked:
        head.append(("Transfer-Encoding", "chunked"))
    else:
        assert isinstance(body, bytes)
        head.append(("Content-Length", str(len(body))))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def upload() -> None:
        writer.write(request_head(method, path, port, head, version))
        try:
            async for chunk in _body_source(body):
                if not chunk:
                    continue
                writer.write((b"%x\r\n" % len(chunk) + chunk + b"\r\n") if chunked else chunk)
                await writer.drain()
        except BaseException:
            writer.transport.abort()  # a body source that fails is a sender that vanished
            raise
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    upload_task = asyncio.create_task(upload())
    try:
        status, head_in = await read_head(reader)
        resp = await read_body(reader, Response(status, head_in))
        try:
            await asyncio.wait_for(upload_task, 5)
        except (TimeoutError, ConnectionError):
            pass
        return resp
    finally:
        upload_task.cancel()
        writer.close()


# -- the raw client ---------------------------------------------------------------------------


@dataclass
class Reply(HeaderLookup):
    """One response as it arrives; ``body`` grows while it is read."""

    version: str = ""
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    #: The head arrived (status line and headers of the final response).
    started: bool = False
    #: The server closed the connection (seen while reading this reply).
    closed: bool = False

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def head(
    method: str,
    target: str | bytes,
    headers: Iterable[tuple[str, str]] = (),
    *,
    version: str = "1.1",
    host: str | None = "127.0.0.1",
) -> bytes:
    """A request head, byte for byte: ``target`` goes out as given (bytes for non-ASCII)."""
    raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [f"{method} ".encode() + raw_target + f" HTTP/{version}".encode()]
    if host is not None:
        lines.append(f"Host: {host}".encode())
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def request(
    method: str,
    target: str | bytes,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    *,
    version: str = "1.1",
    chunked: bool = False,
    length: bool = True,
    host: str | None = "127.0.0.1",
) -> bytes:
    """A whole request: head plus ``body`` framed by Content-Length (or chunked, or not at all)."""
    extra = list(headers)
    if chunked:
        extra.append(("Transfer-Encoding", "chunked"))
        framed = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        if length and (body or method in ("POST", "PUT")):
            extra.append(("Content-Length", str(len(body))))
        framed = body
    return head(method, target, extra, version=version, host=host) + framed


class Conn:
    """One client connection: write bytes, read replies (several on a keep-alive connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.eof = False

    @classmethod
    async def open(cls, port: int, *, tls: ssl.SSLContext | None = None) -> Conn:
        """Connect to 127.0.0.1:``port``; over TLS (HTTPS) when ``tls`` is given."""
        server_hostname = "localhost" if tls is not None else None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, limit=1 << 24, ssl=tls, server_hostname=server_hostname
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def abort(self) -> None:
        """Vanish: reset the connection without a clean close."""
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()

    async def _line(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        line = await asyncio.wait_for(self.reader.readline(), left)
        if not line:
            self.eof = True
            raise ConnectionError("closed")
        return line

    async def _exactly(self, n: int, reply: Reply, deadline: float) -> None:
        """Read ``n`` body bytes into ``reply.body``; stops early at EOF or the deadline."""
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(self.reader.read(min(n - got, 1 << 20)), left)
            if not data:
                self.eof = True
                raise ConnectionError("closed")
            reply.body += data
            got += len(data)

    async def reply(self, *, method: str = "GET", timeout: float = 5.0, reply: Reply | None = None) -> Reply:
        """Read the next response. A body cut by a close or by ``timeout`` leaves
        ``complete`` False; a connection closed before any head raises ConnectionError."""
        reply = reply if reply is not None else Reply()
        deadline = time.monotonic() + timeout
        while True:
            status_line = (await self._line(deadline)).decode("latin-1").rstrip("\r\n")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            headers: list[tuple[str, str]] = []
            while True:
                line = (await self._line(deadline)).decode("latin-1")
                if line in ("\r\n", "\n"):
                    break
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
            if 100 <= int(code) < 200:
                reply.interim.append(int(code))
                continue
            reply.version, reply.status, reply.reason, reply.headers = version, int(code), reason, headers
            reply.started = True
            break
        try:
            await self._body(reply, method, deadline)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        reply.closed = self.eof or await self._closed_now()
        return reply

    async def _body(self, reply: Reply, method: str, deadline: float) -> None:
        if method == "HEAD" or reply.status in (204, 304):
            reply.complete = True
            return
        if (reply.header("transfer-encoding") or "").lower() == "chunked":
            while True:
                size = int((await self._line(deadline)).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self._line(deadline)) not in (b"\r\n", b"\n"):
                        pass  # trailers
                    reply.complete = True
                    return
                await self._exactly(size, reply, deadline)
                await self._line(deadline)
        elif (length := reply.header("content-length")) is not None:
            await self._exactly(int(length), reply, deadline)
            reply.complete = True
        else:  # delimited by the close
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(self.reader.read(1 << 20), left)
                if not data:
                    self.eof = True
                    reply.complete = True
                    return
                reply.body += data

    async def _closed_now(self) -> bool:
        """True when the server has already closed (EOF waiting in the buffer)."""
        if self.eof:
            return True
        await asyncio.sleep(0)
        if self.reader.at_eof():
            self.eof = True
        return self.eof

    async def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within ``seconds`` (bytes read meanwhile are lost)."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(1 << 16), seconds)
                if not data:
                    self.eof = True
                    return True
        except TimeoutError:
            return False
        except ConnectionError:
            self.eof = True
            return True
