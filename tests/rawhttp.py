"""A raw HTTP/1.x client on asyncio streams: the exact bytes go out, every detail comes back.

For the side-by-side compatibility tests, which must see what a client sees: the status
line's version, interim ``100 Continue`` answers, repeated headers in order, how a body
ended (``complete``: the final chunk, the whole Content-Length, or the close of a body
delimited by it) and whether the server closed the connection. Requests are written as
given, so a test can send HTTP/1.0, no Host, odd targets, oversize heads or a body in
pieces, and read several responses from one keep-alive connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.pipeclient import HeaderLookup

__all__ = ["Conn", "Reply", "head", "request"]


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
