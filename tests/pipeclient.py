"""A tiny asyncio HTTP/1.1 client over raw sockets, for tests that must see what a client sees.

Unlike a full client library it reports exactly how a response ended (``complete``: the
final chunk or the whole Content-Length arrived) instead of hiding a truncated body, and it
lets a test stall, abort or pace its reads and writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field


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


def _request_head(method: str, path: str, port: int, headers: Iterable[tuple[str, str]], version: str) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def get(port: int, path: str, headers: Iterable[tuple[str, str]] = (), version: str = "1.1") -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request_head("GET", path, port, headers, version))
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
        writer.write(_request_head(method, path, port, head, version))
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


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-at-small-scale test bytes."""
    block = bytes((i * 31 + seed * 7 + (i >> 8) * 13) & 0xFF for i in range(65521))
    reps = size // len(block) + 1
    return (block * reps)[:size]
