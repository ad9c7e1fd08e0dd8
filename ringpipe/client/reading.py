"""``receive`` and ``watch``: a pipe's bytes as an async iterator of ``Chunk``, across drops.

**Framings.** ``ndjson`` (the default) reads ``?format=ndjson&encoding=base64``: exact bytes,
each record with its pipe offset, and an explicit last record naming the ending (done,
aborted, cancelled, lagged). ``raw`` reads the producer's bytes as they are (less work for
large files), but a raw stream has only two ends: the final chunk (done) or a closed
connection, which may be a network drop or any of the other endings (SPEC 2.2).

**Resume** (SPEC 2.4). A framed reader, or a raw one with ``?resume=1``, keeps its slot for
the server's ``reconnect_grace`` (default 10 s) after its connection drops. On a drop the
reader reconnects with ``Last-Event-ID: <epoch>-<offset>`` (``?offset=`` while the epoch is
unknown), backing off from 50 ms to 1 s, for at most ``reconnect_for`` seconds; the server
continues exactly at ``offset``, so every byte is yielded once, in order. The epoch pins the
resume to this pipe and not a newer one on the same path; no response of a fresh receiver
carries it, so the reader asks ``HEAD`` once when its transfer starts (which needs the
``status`` scope where tokens are in force; without it, resumes go by offset alone).

What a failed reconnect means: 410 *no longer held* → ``PipeGap``; 410 *cancelled* →
``PipeCancelled``; 410 *gone* (the pipe or this reader's slot no longer exists) after a raw
cut → ``PipeAborted(certain=False)``; nothing answering within ``reconnect_for`` →
``RelayUnreachable``.

**Watchers** (``?watch=1``) take no slot and cannot resume at an offset (the server starts
them at the oldest byte held or the live head), so a dropped watcher reconnects from the
oldest byte held and skips what it already yielded; bytes it can no longer get are a gap.

Invariant: ``offset`` is the pipe offset just after the last byte yielded; every chunk
yielded starts exactly there (a gap skipped by ``gaps="skip"`` is the one exception, and it
moves ``offset`` to the gap's end first).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final, Literal, TypeAlias

import anyio
import httpx

from ringpipe.client.errors import (
    ClientError,
    PipeAborted,
    PipeCancelled,
    PipeEnded,
    PipeGap,
    PipeLagged,
)
from ringpipe.client.transport import Target, make_client, unreachable
from ringpipe.client.wire import (
    Chunk,
    DataRecord,
    GapRecord,
    error_message,
    parse_record,
    parse_status,
    resume_refusal,
)

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "Framing", "Receiver", "receive", "watch"]

log = logging.getLogger("ringpipe.client")

Framing: TypeAlias = Literal["raw", "ndjson"]
BACKOFF_MIN_S: Final = 0.05
BACKOFF_MAX_S: Final = 1.0
_ENDINGS: Final[dict[str, type[PipeEnded]]] = {
    "aborted": PipeAborted,
    "cancelled": PipeCancelled,
    "lagged": PipeLagged,
}
_CONNECT_FAILED: Final = (httpx.ConnectError, httpx.ConnectTimeout)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


class Receiver:
    """A pipe's bytes as ``Chunk``\\ s: ``async for chunk in receiver``; ``aclose()`` (or
    ``async with``) when leaving early. Build it with ``receive()`` or ``watch()``.

    Attributes while it runs: ``offset`` (pipe offset after the last chunk yielded),
    ``epoch``, ``reconnects`` (drops survived), ``headers`` (the last response's head: a
    raw receiver gets the sender's ``Content-Type``, ``Content-Disposition``, ``X-Piping``).
    """

    def __init__(
        self,
        url: str,
        *,
        framing: Framing = "ndjson",
        resume: bool = True,
        watcher: bool = False,
        live: bool = False,
        gaps: Literal["raise", "skip"] = "raise",
        n: int | None = None,
        stall_timeout: float | None = None,
        token: str | None = None,
        read_key: str | None = None,
        reconnect_for: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if framing not in ("raw", "ndjson"):
            raise ValueError(f"framing is 'raw' or 'ndjson', not {framing!r}")
        self.target = Target(url, token=token, read_key=read_key)
        self.framing: Framing = framing
        self.resume = resume
        self.watcher = watcher
        self.gaps = gaps
        self.reconnect_for = reconnect_for
        self.offset = 0
        self.epoch = ""
        self.reconnects = 0
        self.headers: httpx.Headers | None = None
        self._live = live
        self._params: dict[str, str | None] = {
            "n": None if n is None else str(n),
            "stall_timeout": None if stall_timeout is None else f"{stall_timeout:g}",
        }
        self._own_client = client is None
        self._http = client if client is not None else make_client()
        self._response: httpx.Response | None = None
        self._pieces: AsyncIterator[bytes] = _nothing()
        self._pending: deque[Chunk] = deque()
        #: How the stream ended other than cleanly, raised once ``_pending`` is handed out.
        self._failure: ClientError | None = None
        #: NDJSON: the pieces of a record whose line end has not come yet.
        self._partial: list[bytes] = []
        #: Raw: the pipe offset the current response has reached.
        self._stream_pos = 0
        #: A response head arrived at least once: the transfer started for this reader.
        self._joined = False
        #: The first stream's first bytes set ``offset`` (a watcher starts where the ring does).
        self._anchor = True
        #: When the current outage began (monotonic), None while connected and progressing.
        self._cut_at: float | None = None
        self._finished = False

    # -- iteration --

    def __aiter__(self) -> Receiver:
        return self

    async def __anext__(self) -> Chunk:
        try:
            return await self._next()
        except BaseException:
            await self.aclose()
            raise

    async def _next(self) -> Chunk:
        while True:
            if self._pending:
                chunk = self._pending.popleft()
                self.offset = chunk.offset
                self._cut_at = None
                return chunk
            if self._failure is not None:
                raise self._failure
            if self._finished:
                raise StopAsyncIteration
            if self._response is None:
                await self._connect()
                continue
            try:
                piece = await self._pieces.__anext__()
            except StopAsyncIteration:
                await self._drop_response()
                if self.framing == "raw":
                    self._finished = True  # the final chunk arrived: done
                else:
                    self._cut("the NDJSON stream ended without its last record")
                continue
            except httpx.TransportError as exc:
                await self._drop_response()
                self._cut(f"{type(exc).__name__}: {exc}")
                continue
            if self.framing == "raw":
                self._stream_pos += len(piece)
                self._take(piece, self._stream_pos)
            else:
                self._take_ndjson(piece)

    async def aclose(self) -> None:
        """Close the connection (and the client this receiver made). A receiver that stops
        early keeps its slot reserved on the server for the reconnect grace."""
        self._finished = True
        await self._drop_response()
        if self._own_client:
            await self._http.aclose()

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- bytes in --

    def _take(self, data: bytes, end: int) -> None:
        """Queue ``data``, which ends at pipe offset ``end``: trim what was already yielded,
        and treat a jump past it as a gap."""
        start = end - len(data)
        if self._anchor:
            self._anchor = False
            self.offset = start
        expected = self._pending[-1].offset if self._pending else self.offset
        if start > expected:
            if not self._gap(expected, start):
                return
            expected = start
        if end > expected:
            self._pending.append(Chunk(data[expected - start :], end))

    def _gap(self, lost_from: int, lost_to: int) -> bool:
        """Bytes ``[lost_from, lost_to)`` will never come: go on (True) or stop (False)."""
        if self.gaps == "raise":
            self._failure = PipeGap(lost_from, lost_to)
            self._finished = True
            return False
        log.info("gap on %s: bytes %d..%d lost", self.target.path, lost_from, lost_to)
        if not self._pending:
            self.offset = lost_to
        return True

    def _take_ndjson(self, piece: bytes) -> None:
        if b"\n" not in piece:  # a record longer than one read: join once, at its end
            self._partial.append(piece)
            return
        lines = b"".join([*self._partial, piece]).split(b"\n")
        self._partial = [lines.pop()]
        for line in lines:
            if self._finished:
                return
            if not line.strip():
                continue
            try:
                record = parse_record(line)
            except ValueError as exc:
                raise ClientError(f"{self.target.path}: {exc}") from None
            if isinstance(record, DataRecord):
                self._take(record.data, record.offset)
            elif isinstance(record, GapRecord):
                self._gap(record.lost_from, record.lost_to)
            elif record.ending == "done":
                self._finished = True
            else:
                self._finished = True
                self._failure = _ENDINGS.get(record.ending, PipeAborted)(record.offset, record.reason)

    # -- connections --

    def _cut(self, why: str) -> None:
        if not self.resume:
            raise PipeAborted(self.offset, f"the connection closed ({why})", certain=False)
        if self._cut_at is None:
            self._cut_at = time.monotonic()
        log.info("connection to %s dropped at offset %d (%s); resuming", self.target.path, self.offset, why)

    async def _drop_response(self) -> None:
        response, self._response = self._response, None
        self._partial = []
        if response is not None:
            await response.aclose()

    def _request(self) -> httpx.Request:
        params = dict(self._params)
        headers: dict[str, str] = {}
        if self.framing == "ndjson":
            params.update(format="ndjson", encoding="base64")
        if self.watcher:
            params["watch"] = "1"
            params["from"] = "live" if self._live and not self._joined else None
        elif self._joined:
            if self.epoch:
                headers["Last-Event-ID"] = f"{self.epoch}-{self.offset}"
            else:
                params["offset"] = str(self.offset)
        if self.framing == "raw" and self.resume and not self.watcher:
            params["resume"] = "1"
        return self._http.build_request("GET", self.target.url_with(**params), headers=self.target.headers(headers))

    async def _connect(self) -> None:
        """Open (or reopen) the stream; back off while the relay does not answer."""
        delay = BACKOFF_MIN_S
        while True:
            try:
                response = await self._http.send(self._request(), stream=True)
            except httpx.TransportError as exc:
                if self._cut_at is None and isinstance(exc, _CONNECT_FAILED):
                    raise unreachable(self.target, exc) from None  # a first connection: fail fast
                if not self.resume:
                    raise PipeAborted(self.offset, f"the connection closed ({exc})", certain=False) from None
                if self._cut_at is None:
                    self._cut_at = time.monotonic()
                if time.monotonic() - self._cut_at >= self.reconnect_for:
                    raise unreachable(self.target, exc) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if response.status_code in (200, 206):
                await self._opened(response)
                return
            body = await response.aread()
            await response.aclose()
            raise self._refusal(response.status_code, body)

    def _refusal(self, status_code: int, body: bytes) -> ClientError:
        message = error_message(body)
        if status_code == 410:
            kind, oldest = resume_refusal(message)
            if kind == "cancelled":
                return PipeCancelled(self.offset, message)
            if self._joined and kind == "gap":
                return PipeGap(self.offset, oldest)
            if self._joined:
                return PipeAborted(self.offset, f"the pipe is gone ({message})", certain=False)
        if status_code == 404 and self.watcher and self._joined:
            return PipeAborted(self.offset, f"the pipe is gone ({message})", certain=False)
        return self.target.refused(status_code, body)

    async def _opened(self, response: httpx.Response) -> None:
        reconnected = self._joined
        self._response = response
        self._pieces = response.aiter_raw()
        self.headers = response.headers
        self.epoch = response.headers.get("ringpipe-epoch", self.epoch)
        start = response.headers.get("ringpipe-offset")
        self._stream_pos = int(start) if start is not None else (self.offset if reconnected else 0)
        if reconnected:
            self.reconnects += 1
            log.info("resumed %s at offset %d", self.target.path, self.offset)
        self._joined = True
        if self.resume and not self.watcher and not self.epoch:
            await self._learn_epoch()

    async def _learn_epoch(self) -> None:
        try:
            response = await self._http.head(self.target.url, headers=self.target.headers())
            pipe = parse_status(response.status_code, response.headers)
        except (httpx.TransportError, ValueError):
            return
        if pipe.state == "established":
            self.epoch = pipe.epoch


def receive(
    url: str,
    *,
    framing: Framing = "ndjson",
    resume: bool = True,
    n: int | None = None,
    stall_timeout: float | None = None,
    token: str | None = None,
    read_key: str | None = None,
    reconnect_for: float = 10.0,
    client: httpx.AsyncClient | None = None,
) -> Receiver:
    """Receive the pipe at ``url``: ``async for chunk in receive(url): ...``.

    Args:
        framing: ``ndjson`` (exact bytes and explicit endings) or ``raw``.
        resume: reconnect after a dropped connection and continue at the same offset.
        n: receivers of the transfer (``?n=``; must agree with the sender's).
        stall_timeout: seconds without progress before the server evicts this reader (0:
            never); the server's default otherwise.
        token: bearer token with the ``recv`` scope (``status`` too, to pin resumes).
        read_key: the pipe's read key, if its sender set one.
        reconnect_for: seconds to keep reconnecting after a drop (the server keeps the slot
            for its ``reconnect_grace``, default 10 s).
        client: an httpx client to use (no read timeout, or waits end early).

    The iteration yields ``Chunk(data, offset)`` as bytes arrive and stops at a clean end.

    Raises (from the iteration):
        PipeAborted: the producer vanished (``certain`` False: a raw stream was cut and the
            pipe is gone, the cause unknown).
        PipeCancelled: the pipe was cancelled.
        PipeLagged: this reader was evicted for making no progress.
        PipeGap: a resume asked for bytes no longer held.
        PipeRefused: refused (a conflict on the path, a credential, the wait timeout).
        RelayUnreachable: no connection, or none came back within ``reconnect_for``.
    """
    return Receiver(
        url,
        framing=framing,
        resume=resume,
        n=n,
        stall_timeout=stall_timeout,
        token=token,
        read_key=read_key,
        reconnect_for=reconnect_for,
        client=client,
    )


def watch(
    url: str,
    *,
    framing: Framing = "ndjson",
    live: bool = False,
    gaps: Literal["raise", "skip"] = "raise",
    token: str | None = None,
    read_key: str | None = None,
    reconnect_for: float = 10.0,
    client: httpx.AsyncClient | None = None,
) -> Receiver:
    """Watch the pipe at ``url`` without taking a receiver slot or ever slowing its producer
    (SPEC 2.4): from the oldest byte still held, or from the live head with ``live=True``.

    A watcher that falls behind the replay window loses bytes: ``gaps="raise"`` raises
    ``PipeGap`` (with the lost range), ``gaps="skip"`` goes on after it (``Chunk.start`` then
    jumps). Refused with 404 when nothing is on the path. Raises as ``receive`` does.
    """
    return Receiver(
        url,
        framing=framing,
        watcher=True,
        live=live,
        gaps=gaps,
        token=token,
        read_key=read_key,
        reconnect_for=reconnect_for,
        client=client,
    )
