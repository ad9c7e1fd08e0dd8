"""Streaming test clients on real sockets: readers in each framing, a resuming receiver, and
the paced producer and token text the framing tests share.

``HttpReader`` reads a streaming GET (its head as soon as it comes, then the body, told
complete or cut); ``WsReader`` a WebSocket reader; ``Attempt`` one receiver connection of a
resume test, which can drop abruptly after some bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.support.pipes import Response, read_body, read_head, request_head

__all__ = ["CHUNKS", "TEXT", "Attempt", "HttpReader", "WsReader", "delete_pipe", "paced", "wait_registered"]

# Tokens as an LLM sends them: no newline for a while, a character split across chunks,
# CRLF and CR line ends, a CRLF split across two chunks.
CHUNKS = [b"Hel", b"lo, w", "örld ✓".encode()[:4], "örld ✓".encode()[4:], b"\r\nline two\r", b"\nthree\rend"]


TEXT = b"".join(CHUNKS).decode()


async def paced(
    chunks: list[bytes], pause: float = 0.05, *, then: Callable[[], Any] | None = None
) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(pause)
    if then is not None:
        await then()


@dataclass
class HttpReader:
    """A streaming GET: the head as soon as it comes, then the body, told complete or cut."""

    port: int
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    response: Response | None = None
    head_seen: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: list[bytes] = field(default_factory=list)

    async def run(self) -> Response:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request_head("GET", self.target, self.port, self.headers, "1.1"))
            await writer.drain()
            status, head = await read_head(reader)
            self.response = Response(status, head)
            self.head_seen.set()

            async def on_chunk(data: bytes) -> None:
                self.chunks.append(data)

            return await read_body(reader, self.response, on_chunk)
        finally:
            writer.close()


@dataclass
class WsReader:
    url: str
    messages: list[str | bytes] = field(default_factory=list)
    code: int | None = None
    reason: str = ""
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> WsReader:
        async with ws_connect(self.url, compression=None) as ws:
            self.opened.set()
            try:
                while True:
                    self.messages.append(await ws.recv())
            except ConnectionClosed:
                pass
            self.code, self.reason = ws.close_code, ws.close_reason or ""
        return self


async def wait_registered() -> None:
    """Give the owner time to register readers that get no answer yet (raw, NDJSON)."""
    await asyncio.sleep(0.5)


async def delete_pipe(port: int, path: str) -> int:
    """``DELETE path`` (cancel, SPEC 2.3); the status it answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head("DELETE", path, port, [("Content-Length", "0")], "1.1"))
    await writer.drain()
    status, _ = await read_head(reader)
    writer.close()
    return status


class Attempt:
    """One receiver connection that reads the (chunked) body piece by piece, counting bytes."""

    def __init__(self, port: int, path: str, headers: list[tuple[str, str]]) -> None:
        self.port, self.path, self.headers = port, path, headers
        self.body = bytearray()
        self.complete = False
        self.status = 0
        self.head: dict[str, str] = {}

    async def run(self, stop_after: int | None) -> None:
        """Read until the end, or drop the connection abruptly after ``stop_after`` bytes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            lines = [f"GET {self.path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in self.headers)]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            self.status, head = await read_head(reader)
            self.head = dict(head)
            if self.status not in (200, 206):
                return
            assert self.head.get("transfer-encoding") == "chunked"
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    self.complete = True
                    return
                left = size
                while left:
                    piece = await reader.read(min(left, 1500))
                    if not piece:
                        return
                    self.body += piece
                    left -= len(piece)
                    if stop_after is not None and len(self.body) >= stop_after:
                        return
                await reader.readexactly(2)
        finally:
            writer.transport.abort()  # an abrupt drop, like a reload or a lost network
