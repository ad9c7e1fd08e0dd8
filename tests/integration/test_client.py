"""``ringpipe.client`` against a real server: resume across cut connections, every ending as
its exception, live tokens, refusals, credentials, and the sync wrapper.

Cuts are made by ``CuttingProxy``, a loopback TCP proxy the test arms: the next GET's
response is cut (both sockets aborted) after a chosen number of bytes, as a relay, load
balancer or network would cut it. Senders connect to the server directly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx
import pytest

from ringpipe import client
from ringpipe.client import sync
from ringpipe.core.signing import signed_query
from tests.support.servers import Server

ServerFactory = Callable[..., Server]
T = TypeVar("T")

TOKEN = "client-test-secret-41f7"
SIGNING_KEY = "client-signing-key-93ad"
READ_KEY = "read-key-secret-c0ffee"


def run(coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def fresh() -> str:
    return "/" + uuid.uuid4().hex


def pattern(size: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(size)


async def paced(data: bytes, chunk: int = 4000, every: float = 0.003) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]
        await asyncio.sleep(every)


async def collect(receiver: client.Receiver, into: list[client.Chunk] | None = None) -> list[client.Chunk]:
    chunks = [] if into is None else into
    async with receiver:
        async for chunk in receiver:
            chunks.append(chunk)
    return chunks


async def registered(server: Server, path: str, receivers: int = 1, timeout: float = 20) -> None:
    """Wait until ``receivers`` receivers wait on ``path`` (HEAD), so a sender meets them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipe = await client.status(server.url + path)
        if pipe.connected >= receivers:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{receivers} receiver(s) never registered on {path}")


class CuttingProxy:
    """A loopback proxy to ``upstream``; ``plan`` holds byte budgets: each GET that arrives
    takes the next one, and its response is cut after that many bytes (head included)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.plan: list[int] = []
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        budget: list[int | None] = [None]

        async def upstream() -> None:
            while data := await c_reader.read(65536):
                if data.startswith(b"GET ") and self.plan:
                    budget[0] = self.plan.pop(0)
                s_writer.write(data)
                await s_writer.drain()

        async def downstream() -> None:
            while data := await s_reader.read(65536):
                left = budget[0]
                if left is not None and len(data) >= left:
                    c_writer.write(data[:left])
                    await c_writer.drain()
                    self.cuts += 1
                    return
                if left is not None:
                    budget[0] = left - len(data)
                c_writer.write(data)
                await c_writer.drain()

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            c_writer.transport.abort()  # an abrupt cut, both ways
            s_writer.transport.abort()
            self._tasks.discard(task)  # type: ignore[arg-type]


# -- resume --


@pytest.mark.parametrize("framing", ["ndjson", "raw"])
def test_a_reader_cut_at_random_offsets_yields_every_byte_exactly_once(server: Server, framing: str) -> None:
    """Five cuts at random byte counts: the chunks put together are the upload, each chunk
    starts where the last one ended, and the sender never hears of an abort."""
    data = pattern(700_000, seed=3)
    rng = random.Random(f"cuts-{framing}")

    async def scenario() -> tuple[list[client.Chunk], int, int, client.SendResult]:
        path = fresh()
        async with CuttingProxy(server.port) as proxy:
            proxy.plan = [rng.randint(100, 90_000) for _ in range(5)]
            receiver = client.receive(proxy.url + path, framing=framing)  # type: ignore[arg-type]
            reading = asyncio.create_task(collect(receiver))
            await registered(server, path)
            result = await client.send(server.url + path, paced(data))
            chunks = await reading
            return chunks, receiver.reconnects, proxy.cuts, result

    chunks, reconnects, cuts, result = run(scenario())
    assert cuts == 5 and reconnects == 5
    assert b"".join(c.data for c in chunks) == data
    assert [c.start for c in chunks] == [0, *(c.offset for c in chunks[:-1])]
    assert all(c.data for c in chunks)
    assert (result.completed, result.aborted, result.bytes_sent) == (1, 0, len(data))
    assert "aborted" not in " ".join(result.log)


def test_a_watcher_reconnects_without_duplicates(server: Server) -> None:
    """A watcher cannot resume at an offset; after a cut it starts again at the oldest byte
    held and the client skips what it already yielded."""
    data = pattern(120_000, seed=5)

    async def scenario() -> list[client.Chunk]:
        path = fresh()
        async with CuttingProxy(server.port) as proxy:
            proxy.plan = [30_000, 60_000]
            receiving = asyncio.create_task(collect(client.receive(server.url + path)))
            await registered(server, path)
            sending = asyncio.create_task(client.send(server.url + path, paced(data, 2000, 0.01)))
            while (await client.status(server.url + path)).state != "established":
                await asyncio.sleep(0.01)
            watched = await collect(client.watch(proxy.url + path, gaps="raise"))
            await sending
            await receiving
            return watched

    watched = run(scenario())
    assert b"".join(c.data for c in watched) == data  # the replay window (256 KiB) holds it all
    assert [c.start for c in watched] == [0, *(c.offset for c in watched[:-1])]


# -- endings --


async def _vanishing(data: bytes) -> AsyncIterator[bytes]:
    yield data
    await asyncio.sleep(0.3)
    raise RuntimeError("the producer crashed")


@pytest.mark.parametrize("framing", ["ndjson", "raw"])
def test_a_vanished_producer_is_pipe_aborted(server: Server, framing: str) -> None:
    async def scenario() -> tuple[list[client.Chunk], BaseException, BaseException]:
        path = fresh()
        got: list[client.Chunk] = []
        reading = asyncio.create_task(collect(client.receive(server.url + path, framing=framing), got))  # type: ignore[arg-type]
        await registered(server, path)
        with pytest.raises(RuntimeError) as sent:
            await client.send(server.url + path, _vanishing(b"x" * 5000))
        with pytest.raises(client.PipeAborted) as ended:
            await reading
        return got, sent.value, ended.value

    got, sent, ended = run(scenario())
    assert b"".join(c.data for c in got) == b"x" * 5000
    assert isinstance(ended, client.PipeAborted) and ended.offset == 5000
    assert ended.certain is (framing == "ndjson")  # raw cannot say why its stream was cut


def test_cancel_ends_the_sender_and_the_readers_with_pipe_cancelled(server: Server) -> None:
    async def scenario() -> tuple[BaseException, BaseException, BaseException, bool, bool]:
        path = fresh()
        url = server.url + path
        reading = asyncio.create_task(collect(client.receive(url + "?n=2")))
        waiting = asyncio.create_task(collect(client.receive(url + "?n=2", framing="raw")))
        await registered(server, path, 2)
        never = asyncio.Event()

        async def forever() -> AsyncIterator[bytes]:
            yield b"first"
            await never.wait()
            yield b"never"

        sending = asyncio.create_task(client.send(url, forever(), n=2))
        while (await client.status(url)).state != "established":
            await asyncio.sleep(0.01)
        cancelled = await client.cancel(url)
        again = await client.cancel(url)
        errors = []
        for task in (sending, reading, waiting):
            with pytest.raises(client.ClientError) as caught:
                await task
            errors.append(caught.value)
        return errors[0], errors[1], errors[2], cancelled, again

    sender, framed, raw, cancelled, again = run(scenario())
    assert (cancelled, again) == (True, False)
    assert isinstance(sender, client.PipeCancelled)
    assert isinstance(framed, client.PipeCancelled) and framed.offset == 5
    assert isinstance(raw, client.PipeAborted) and not raw.certain  # raw: a cut, then the pipe is gone


def test_a_waiting_reader_hit_by_cancel_is_pipe_cancelled_in_raw_too(server: Server) -> None:
    async def scenario() -> BaseException:
        path = fresh()
        reading = asyncio.create_task(collect(client.receive(server.url + path, framing="raw")))
        await registered(server, path)
        assert await client.cancel(server.url + path)
        with pytest.raises(client.PipeCancelled) as caught:
            await reading
        return caught.value

    assert run(scenario()).offset == 0


def test_a_stalled_reader_is_pipe_lagged_and_its_sender_hears_it(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--ring-bytes", "65536", "--stall-timeout", "1")
    data = pattern(24_000_000, seed=9)  # more than the kernel's socket buffers hold

    async def scenario() -> tuple[int, BaseException, client.SendResult]:
        path = fresh()
        receiver = client.receive(server.url + path)
        got = 0
        paused: list[int] = []

        async def slow() -> None:
            nonlocal got
            async with receiver:
                async for chunk in receiver:
                    got += len(chunk.data)
                    if got >= 100_000 and not paused:
                        paused.append(got)
                        await asyncio.sleep(4)  # read nothing: the writer waits on us, then evicts us

        reading = asyncio.create_task(slow())
        await registered(server, path)
        result = await client.send(server.url + path, data)
        with pytest.raises(client.PipeLagged) as caught:
            await reading
        return got, caught.value, result

    got, lagged, result = run(scenario())
    assert not isinstance(lagged, client.PipeGap)
    assert 100_000 <= lagged.offset < len(data)
    assert (result.completed, result.evicted, result.ending) == (0, 1, "lagged")


@pytest.mark.parametrize("framing", ["ndjson", "raw"])
def test_a_watcher_out_of_the_window_gets_pipe_gap(server_factory: ServerFactory, framing: str) -> None:
    server = server_factory("--workers", "2", "--ring-bytes", "65536", "--replay-bytes", "16384")
    data = pattern(16_000_000, seed=2)  # more than the kernel's socket buffers hold

    async def scenario() -> BaseException:
        path = fresh()
        url = server.url + path
        receiving = asyncio.create_task(collect(client.receive(url, framing="raw")))
        await registered(server, path)
        release = asyncio.Event()

        async def producer() -> AsyncIterator[bytes]:
            async for piece in paced(data, 64_000, 0.001):
                yield piece
            await release.wait()  # the pipe stays there while the watcher comes back

        sending = asyncio.create_task(client.send(url, producer()))
        while (await client.status(url)).state != "established":
            await asyncio.sleep(0.01)
        small_buffers = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)]),
            timeout=httpx.Timeout(10, read=None),
        )
        async with small_buffers, client.watch(url, framing=framing, client=small_buffers) as watcher:  # type: ignore[arg-type]
            await watcher.__anext__()
            await asyncio.sleep(2)  # the producer runs on: the window moves past us
            with pytest.raises(client.PipeGap) as caught:
                async for _chunk in watcher:
                    pass
        release.set()
        await sending
        await receiving
        return caught.value

    gap = run(scenario())
    assert isinstance(gap, client.PipeGap) and gap.lost_to > gap.lost_from == gap.offset


# -- live tokens --


@pytest.mark.parametrize("framing", ["ndjson", "raw"])
def test_tokens_from_an_async_generator_arrive_live(server: Server, framing: str) -> None:
    """The reader sees each token before the generator yields the next one."""

    async def scenario() -> list[tuple[str, bool]]:
        path = fresh()
        seen = [asyncio.Event() for _ in range(3)]
        timeline: list[tuple[str, bool]] = []

        async def tokens() -> AsyncIterator[str]:
            for i, token in enumerate(["Hel", "lo", " world"]):
                yield token
                try:  # the next token only once the reader has this one (or 10 s: the test fails)
                    await asyncio.wait_for(seen[i].wait(), 10)
                    timeline.append((token, True))
                except TimeoutError:
                    timeline.append((token, False))

        async def read() -> bytes:
            got = b""
            async with client.receive(server.url + path, framing=framing) as receiver:  # type: ignore[arg-type]
                async for chunk in receiver:
                    got += chunk.data
                    for i, upto in enumerate((b"Hel", b"Hello", b"Hello world")):
                        if got == upto:
                            seen[i].set()
            return got

        reading = asyncio.create_task(read())
        await registered(server, path)
        result = await client.send(server.url + path, tokens(), content_type="text/plain")
        assert await reading == b"Hello world" and result.ok
        return timeline

    assert run(scenario()) == [("Hel", True), ("lo", True), (" world", True)]


# -- refusals, credentials, secrets --


def test_refusals_are_pipe_refused_with_status_and_reason(server: Server) -> None:
    async def scenario() -> list[client.PipeRefused]:
        path = fresh()
        url = server.url + path
        out = []
        waiting = asyncio.create_task(collect(client.receive(url, n=2)))
        await registered(server, path)
        for attempt in (client.receive(url, n=3), client.receive(url, n=2, stall_timeout=-1)):
            with pytest.raises(client.PipeRefused) as caught:
                await collect(attempt)
            out.append(caught.value)
        with pytest.raises(client.PipeRefused) as sent:
            await client.send(url, b"data", n=5)
        out.append(sent.value)
        with pytest.raises(client.PipeRefused) as watched:
            await collect(client.watch(server.url + fresh()))
        out.append(watched.value)
        await client.cancel(url)
        with pytest.raises(client.PipeCancelled):
            await waiting
        return out

    n_mismatch, bad_stall, sender, nothing = run(scenario())
    assert (n_mismatch.status, n_mismatch.message) == (400, "The number of receivers should be 2 but 3.")
    assert bad_stall.status == 400 and "stall_timeout" in bad_stall.message
    assert (sender.status, sender.message) == (400, "The number of receivers should be 2 but 5.")
    assert nothing.status == 404 and nothing.message.startswith("Nothing to watch on ")


def test_an_unreachable_relay_is_relay_unreachable() -> None:
    async def scenario() -> None:
        for call in (
            client.send("http://127.0.0.1:9/p", b"x"),
            collect(client.receive("http://127.0.0.1:9/p")),
            client.status("http://127.0.0.1:9/p"),
            client.cancel("http://127.0.0.1:9/p"),
        ):
            with pytest.raises(client.RelayUnreachable):
                await call

    run(scenario())


def test_tokens_signed_urls_and_read_keys_and_no_secret_is_logged(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory(
        "--workers", "2", "--token", f"all:{TOKEN}:send,recv,watch,cancel,status", "--signing-key", SIGNING_KEY
    )
    data = pattern(50_000, seed=1)
    caplog.set_level(logging.DEBUG)

    path = fresh()
    url = server.url + path
    query = signed_query(SIGNING_KEY.encode(), path, ["recv"], int(time.time()) + 600)
    signed = f"{url}?{query}"

    async def scenario() -> tuple[list[client.PipeRefused], bytes, client.SendResult, int]:
        refusals = []
        with pytest.raises(client.PipeRefused) as no_token:
            await client.status(url)
        refusals.append(no_token.value)
        with pytest.raises(client.PipeRefused) as wrong:
            await client.send(url, b"x", token="not-the-token")
        refusals.append(wrong.value)
        async with CuttingProxy(server.port) as proxy:
            proxy.plan = [20_000]
            signed_via_proxy = signed.replace(server.url, proxy.url) + f"&key={READ_KEY}"
            receiver = client.receive(signed_via_proxy)  # recv scope only: resumes without an epoch
            reading = asyncio.create_task(collect(receiver))
            await registered_with(url, TOKEN, READ_KEY)
            with pytest.raises(client.PipeRefused) as no_key:
                await client.status(url, token=TOKEN)
            refusals.append(no_key.value)
            result = await client.send(url, paced(data, 2000), token=TOKEN, read_key=READ_KEY)
            chunks = await reading
        return refusals, b"".join(c.data for c in chunks), result, receiver.reconnects

    refusals, got, result, reconnects = run(scenario())
    assert [r.status for r in refusals] == [401, 403, 403]
    assert got == data and result.completed == 1 and reconnects == 1
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP Request" in logged and "rp_sig=***" in logged  # httpx's lines are there, masked
    signature = dict(parse_qsl(query))["rp_sig"]
    for secret in (TOKEN, READ_KEY, signature):
        assert secret not in logged


async def registered_with(url: str, token: str, read_key: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await client.status(url, token=token, read_key=read_key)).connected:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the reader never registered")


# -- the sync wrapper --


def test_the_sync_wrapper_sends_receives_and_tells_endings(server: Server) -> None:
    path = fresh()
    url = server.url + path
    data = pattern(300_000, seed=4)
    got: list[bytes] = []

    def read() -> None:
        with sync.receive(url) as chunks:
            got.extend(chunk.data for chunk in chunks)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 20
    while sync.status(url).connected == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    result = sync.send(url, iter([data[:1000], data[1000:]]))
    reader.join(30)
    assert b"".join(got) == data and result.ok
    assert sync.status(url).state == "free" and sync.cancel(url) is False
