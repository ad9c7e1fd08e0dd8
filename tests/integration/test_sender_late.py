"""``--sender-response late`` (SPEC Part 3) against a real server: the sender's status line
and log come only after its whole body is read, while the body itself still streams live to
the receivers; ``100 Continue`` and errors are answered at once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest

from tests.support.pipes import Response, fresh, read_body, read_head, run
from tests.support.servers import Server

LOG_SENDER_FIRST = [
    "[INFO] Waiting for 1 receiver(s)...",
    "[INFO] A receiver was connected.",
    "[INFO] Start sending to 1 receiver(s)!",
    "[INFO] Sent successfully!",
    "[INFO] All receiver(s) was/were received successfully.",
]
LOG_RECEIVER_FIRST = [
    "[INFO] Waiting for 1 receiver(s)...",
    "[INFO] 1 receiver(s) has/have been connected.",
    "[INFO] Start sending to 1 receiver(s)!",
    "[INFO] Sent successfully!",
    "[INFO] All receiver(s) was/were received successfully.",
]
#: How long "nothing arrived" is watched for; generous for a loaded 2-core box.
QUIET = 0.7
#: How fast a live chunk must reach the receiver.
LIVE = 0.5


@pytest.fixture
def late(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--workers", "2", "--sender-response", "late")


class RawSender:
    """A sender that writes its request piece by piece and can tell whether any answer came."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str, headers: list[tuple[str, str]]) -> RawSender:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [f"PUT {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return cls(reader, writer)

    async def write(self, data: bytes, *, chunked: bool) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        await self.writer.drain()

    async def answered_within(self, seconds: float) -> bytes:
        """Whatever the server sent within ``seconds`` (b"" if nothing)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), seconds)
        except TimeoutError:
            return b""

    async def response(self) -> Response:
        status, head = await read_head(self.reader)
        return await read_body(self.reader, Response(status, head))

    def close(self) -> None:
        self.writer.close()


class RawReceiver:
    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        await self.writer.drain()

    async def head(self) -> tuple[int, list[tuple[str, str]]]:
        assert self.reader is not None
        return await read_head(self.reader)

    async def chunk(self) -> bytes:
        """One chunk of a chunked response body."""
        assert self.reader is not None
        size = int((await self.reader.readline()).split(b";")[0], 16)
        data = await self.reader.readexactly(size)
        await self.reader.readexactly(2)
        return data

    async def exactly(self, size: int) -> bytes:
        assert self.reader is not None
        return await self.reader.readexactly(size)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def test_sender_first_chunked_body_streams_live_and_log_comes_after_it(late: Server) -> None:
    path = fresh()

    async def scenario() -> None:
        sender = await RawSender.open(late.port, path, [("Transfer-Encoding", "chunked")])
        receiver = RawReceiver(late.port, path)
        try:
            assert await sender.answered_within(QUIET) == b"", "late mode answered a waiting sender"
            await receiver.connect()
            for piece in (b"first piece\n", b"second piece\n", b"third piece\n"):
                await sender.write(piece, chunked=True)
                started = time.monotonic()
                if piece.startswith(b"first"):
                    status, headers = await receiver.head()
                    assert status == 200
                got = await asyncio.wait_for(receiver.chunk(), 5)
                assert got == piece
                assert time.monotonic() - started < LIVE, "the body is not streamed live in late mode"
                assert await sender.answered_within(0.2) == b"", "answered before the body was read"
            sender.writer.write(b"0\r\n\r\n")
            await sender.writer.drain()
            log = await asyncio.wait_for(sender.response(), 10)
            assert log.status == 200 and log.complete
            assert log.header("content-type") == "text/plain"
            assert log.header("access-control-allow-origin") == "*"
            assert log.text.splitlines() == LOG_SENDER_FIRST
            assert await asyncio.wait_for(receiver.chunk(), 5) == b""  # the final chunk: a clean end
        finally:
            sender.close()
            receiver.close()

    run(scenario())


def test_receiver_first_content_length_body(late: Server) -> None:
    path = fresh()
    half = b"x" * 200_000

    async def scenario() -> None:
        receiver = RawReceiver(late.port, path)
        await receiver.connect()
        await asyncio.sleep(0.3)
        sender = await RawSender.open(late.port, path, [("Content-Length", str(2 * len(half)))])
        try:
            await sender.write(half, chunked=False)
            status, headers = await asyncio.wait_for(receiver.head(), 10)
            assert status == 200 and dict(headers)["content-length"] == str(2 * len(half))
            assert await asyncio.wait_for(receiver.exactly(len(half)), 10) == half
            assert await sender.answered_within(QUIET) == b"", "answered before the body was read"
            await sender.write(half, chunked=False)
            assert await asyncio.wait_for(receiver.exactly(len(half)), 10) == half
            log = await asyncio.wait_for(sender.response(), 10)
            assert log.status == 200 and log.complete
            assert log.text.splitlines() == LOG_RECEIVER_FIRST
        finally:
            sender.close()
            receiver.close()

    run(scenario())


def test_expect_continue_is_answered_when_the_sender_is_accepted(late: Server) -> None:
    path = fresh()
    body = b"hello late\n"

    async def scenario() -> None:
        headers = [("Content-Length", str(len(body))), ("Expect", "100-continue")]
        sender = await RawSender.open(late.port, path, headers)
        receiver = RawReceiver(late.port, path)
        try:
            line = await asyncio.wait_for(sender.reader.readline(), 5)  # no receiver yet
            assert line == b"HTTP/1.1 100 Continue\r\n"
            assert await sender.reader.readline() == b"\r\n"
            assert await sender.answered_within(QUIET) == b"", "only 100 Continue may come before the body"
            await receiver.connect()
            await sender.write(body, chunked=False)
            status, _ = await asyncio.wait_for(receiver.head(), 10)
            assert status == 200
            assert await asyncio.wait_for(receiver.exactly(len(body)), 10) == body
            log = await asyncio.wait_for(sender.response(), 10)
            assert log.status == 200 and log.text.splitlines() == LOG_SENDER_FIRST
        finally:
            sender.close()
            receiver.close()

    run(scenario())


def test_an_error_before_the_body_is_read_is_answered_at_once_with_its_status(late: Server) -> None:
    """A waiting sender turned away (here: the server drains) gets a rejection, not a 200 log."""
    path = fresh()

    async def scenario() -> None:
        sender = await RawSender.open(late.port, path, [("Transfer-Encoding", "chunked")])
        try:
            assert await sender.answered_within(QUIET) == b""
            late.proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(sender.response(), 20)
            assert resp.status == 503
            assert resp.text == "[ERROR] The server is shutting down.\n"
            assert resp.header("content-type") == "text/plain"
            assert resp.header("access-control-allow-origin") == "*"
        finally:
            sender.close()

    run(scenario())
    assert late.proc.wait(40) == 0


async def sender_registered(port: int, path: str, timeout: float = 10.0) -> None:
    """Wait until ``HEAD path`` shows a pipe there (status 200: a party is registered)."""
    deadline = time.monotonic() + timeout
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            status, _ = await read_head(reader)
        finally:
            writer.close()
        if status == 200:
            return
        assert time.monotonic() < deadline, f"no pipe at {path} after {timeout} s (HEAD: {status})"
        await asyncio.sleep(0.02)


def test_conflict_is_answered_at_once(late: Server) -> None:
    path = fresh()

    async def scenario() -> None:
        first = await RawSender.open(late.port, path, [("Transfer-Encoding", "chunked")])
        # The first sender's Join must reach the path's owner before the second's: two
        # connections accepted by two workers can otherwise arrive in either order.
        await sender_registered(late.port, path)
        second = await RawSender.open(late.port, path, [("Transfer-Encoding", "chunked")])
        try:
            resp = await asyncio.wait_for(second.response(), 10)
            assert resp.status == 400
            assert resp.text == f"[ERROR] Another sender has been connected on '{path}'.\n"
            assert await first.answered_within(0.2) == b""
        finally:
            first.close()
            second.close()

    run(scenario())


def test_receivers_gone_mid_upload_ends_the_late_log_at_once(late: Server) -> None:
    path = fresh()

    async def scenario() -> None:
        sender = await RawSender.open(late.port, path, [("Transfer-Encoding", "chunked")])
        receiver = RawReceiver(late.port, path)
        try:
            await receiver.connect()
            await sender.write(b"some bytes\n", chunked=True)
            await asyncio.wait_for(receiver.head(), 10)
            assert await asyncio.wait_for(receiver.chunk(), 10) == b"some bytes\n"
            receiver.close()
            log = await asyncio.wait_for(sender.response(), 10)  # the body never ended
            assert log.status == 200
            lines = log.text.splitlines()
            assert lines[0] == "[INFO] Waiting for 1 receiver(s)..."
            assert lines[-1] == "[INFO] All receiver(s) was/were aborted halfway."
            assert "[INFO] Sent successfully!" not in lines
        finally:
            sender.close()

    run(scenario())
