"""The bulk receiver: one GET, its response parsed (chunked, Content-Length or until-close),
and every body byte compared with the pattern at its stream offset.

The comparison is ``bytearray.startswith(memoryview_slice, start, end)``, a memcmp (~20 GB/s);
``memoryview == memoryview`` compares element by element and runs at ~0.2 GB/s. Also checked:
no byte beyond the expected length, the exact total, CRLF after every chunk, and a clean end
(the final 0-chunk and its empty line; for Content-Length, exactly that many bytes).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from .common import HOST, PATTERN2, PERIOD, RECV_BUF, BenchError
from .wire import connect, parse_head, recv_into, sendmsg_all


@dataclass
class RecvResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    framing: str = ""
    nbytes: int = 0
    t_req: float | None = None  # GET written
    t_head: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    recv_calls: int = 0


class Receiver:
    """One GET: read the head, then every body byte is compared against the pattern.

    ``exact=False``: the expected length is only an upper bound (the caller checks the total).
    ``hold``: an event; body reads wait for it (the bytes that came with the head are still
    parsed), which makes a reader that stops after its response head."""

    def __init__(
        self,
        port: int,
        target: str,
        expected: int,
        *,
        bufsize: int = RECV_BUF,
        exact: bool = True,
        rcvbuf: int | None = None,
    ) -> None:
        self.port, self.target, self.expected, self.exact, self.rcvbuf = port, target, expected, exact, rcvbuf
        self.buf = bytearray(bufsize)
        self.view = memoryview(self.buf)
        self.res = RecvResult()
        self.sock: socket.socket | None = None
        self.hold: asyncio.Event | None = None
        self.t_recv_ns = 0  # time.monotonic_ns() right after the last recv returned

    async def open(self) -> None:
        self.sock = await connect(self.port, self.rcvbuf)
        req = (
            f"GET {self.target} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            "User-Agent: ringpipe-bench\r\nAccept: */*\r\n\r\n"
        ).encode()
        await sendmsg_all(self.sock, [memoryview(req)])
        self.res.t_req = time.monotonic()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    async def _recv(self, view: memoryview) -> int:
        if self.hold is not None and not self.hold.is_set():
            await self.hold.wait()
        assert self.sock is not None
        n = await recv_into(self.sock, view)
        self.t_recv_ns = time.monotonic_ns()
        self.res.recv_calls += 1
        return n

    def verify(self, start: int, length: int) -> None:
        """buf[start:start+length] must equal the stream at offset res.nbytes."""
        res = self.res
        if res.nbytes + length > self.expected:
            raise BenchError(f"more data than expected: {res.nbytes + length} > {self.expected}")
        if res.t_first is None:
            res.t_first = time.monotonic()
        buf = self.buf
        while length:
            off = res.nbytes % PERIOD
            take = min(length, PERIOD)
            if not buf.startswith(PATTERN2[off : off + take], start, start + take):
                mine = bytes(self.view[start : start + take])
                want = bytes(PATTERN2[off : off + take])
                first = next(i for i in range(take) if mine[i] != want[i])
                raise BenchError(f"content mismatch at stream offset {res.nbytes + first}")
            res.nbytes += take
            start += take
            length -= take

    async def run(self) -> RecvResult:
        assert self.sock is not None
        res, buf, view, sock = self.res, self.buf, self.view, self.sock
        end = 0
        while True:  # response head
            i = buf.find(b"\r\n\r\n", 0, end)
            if i >= 0:
                break
            if end == len(buf):
                raise BenchError("response head too large")
            n = await recv_into(sock, view[end:])
            self.t_recv_ns = time.monotonic_ns()
            if n == 0:
                raise BenchError("connection closed before the response head")
            end += n
        head = parse_head(bytes(buf[:i]))
        res.status, res.t_head = head.status, time.monotonic()
        pos = i + 4
        if head.status != 200:
            raise BenchError(f"HTTP {head.status} {head.reason}: {bytes(buf[pos:end])[:200]!r}")
        te = head.headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            res.framing = "chunked"
            await self._chunked(pos, end)
        elif "content-length" in head.headers:
            length = int(head.headers["content-length"])
            res.framing = "content-length"
            if length != self.expected:
                raise BenchError(f"Content-Length {length} != expected {self.expected}")
            await self._plain(pos, end, length)
        else:
            res.framing = "until-close"
            await self._plain(pos, end, None)
        if self.exact and res.nbytes != self.expected:
            raise BenchError(f"short body: {res.nbytes} of {self.expected} bytes")
        res.t_last = time.monotonic()
        res.ok = True
        return res

    async def _plain(self, pos: int, end: int, length: int | None) -> None:
        view, res = self.view, self.res
        if end > pos:
            self.verify(pos, end - pos)
        while length is None or res.nbytes < length:
            n = await self._recv(view)
            if n == 0:
                if length is None:
                    return
                raise BenchError(f"connection closed after {res.nbytes} of {length} body bytes")
            self.verify(0, n)

    async def _chunked(self, pos: int, end: int) -> None:
        buf, view, res = self.buf, self.view, self.res
        remaining = 0  # body bytes left in the current chunk
        need_crlf = False  # after a chunk's data
        in_trailer = False  # after the 0-chunk's size line
        while True:
            while pos < end:
                if remaining:
                    take = min(remaining, end - pos)
                    self.verify(pos, take)
                    pos += take
                    remaining -= take
                    if not remaining:
                        need_crlf = True
                elif need_crlf:
                    if end - pos < 2:
                        break
                    if buf[pos : pos + 2] != b"\r\n":
                        raise BenchError(f"chunk data not followed by CRLF at stream offset {res.nbytes}")
                    pos += 2
                    need_crlf = False
                else:
                    j = buf.find(b"\r\n", pos, end)
                    if j < 0:
                        if end - pos > 4096:
                            raise BenchError("chunk-size line too long")
                        break
                    line = bytes(buf[pos:j])
                    pos = j + 2
                    if in_trailer:
                        if not line:  # the empty line after the last chunk: a clean end
                            if pos != end:
                                raise BenchError(f"{end - pos} stray byte(s) after the final chunk")
                            return
                        continue  # a trailer field: ignore
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise BenchError(f"bad chunk-size line {line[:40]!r}") from None
                    if size == 0:
                        in_trailer = True
                    else:
                        remaining = size
            # keep an incomplete line (or CRLF) at the front, refill after it
            if pos == end:
                pos = end = 0
            elif pos:
                buf[: end - pos] = buf[pos:end]
                end -= pos
                pos = 0
            n = await self._recv(view[end:])
            if n == 0:
                raise BenchError(f"connection closed before the final 0-chunk (after {res.nbytes} bytes)")
            end += n
