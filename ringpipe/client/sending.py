"""``send``: upload a source to a pipe and return how the transfer went, from the sender's log.

Each item of an iterable source goes out as its own HTTP chunk the moment it is produced,
so tokens are live for the readers; bytes, a path and a regular file go out with a
``Content-Length`` (readers get it too). Blocking sources (files, sync iterables, stdin) are
read in a worker thread, so the event loop never waits on them.

The upload and the sender's log run at once (``_Exchange``): ``on_log`` sees each log line
as it comes, and the upload stops the moment the log ends early (cancelled, every receiver
gone, an error), closing the source even while it waits for its next item.

If the source raises, the upload is cut before its last chunk and the readers see the
producer vanish (aborted), never a clean end; the exception propagates.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Iterator
from typing import IO, Final, TypeAlias

import anyio
import anyio.abc
import anyio.to_thread
import h11
import httpx

from ringpipe import __version__
from ringpipe.client.errors import RelayUnreachable
from ringpipe.client.transport import Target
from ringpipe.client.wire import SenderLog, SendResult

__all__ = ["READ_SIZE", "Source", "send"]

log = logging.getLogger("ringpipe.client")

#: Bytes per read of a file source (stdin gets what is there, up to this: ``read1``).
READ_SIZE: Final = 256 * 1024

Item: TypeAlias = bytes | bytearray | memoryview | str
#: What ``send`` uploads: bytes or text as a whole; a path or binary file, read to its end;
#: or a (sync or async) iterable whose every item becomes one chunk.
Source: TypeAlias = Item | os.PathLike[str] | IO[bytes] | Iterable[Item] | AsyncIterable[Item]


def _as_bytes(item: Item) -> bytes:
    return item.encode("utf-8") if isinstance(item, str) else bytes(item)


def _known_length(file: IO[bytes]) -> int | None:
    """Bytes left in a regular file, or None (pipe, socket, terminal, unseekable)."""
    try:
        stat = os.fstat(file.fileno())
        if not (stat.st_mode & 0o170000) == 0o100000:
            return None
        return max(stat.st_size - file.tell(), 0)
    except (OSError, ValueError, AttributeError):
        return None


async def _file_chunks(file: IO[bytes]) -> AsyncGenerator[bytes, None]:
    read = getattr(file, "read1", file.read)  # read1: what a pipe has now, so tokens stay live
    while True:
        data = await anyio.to_thread.run_sync(read, READ_SIZE, abandon_on_cancel=True)
        if not data:
            return
        yield data


async def _path_chunks(path: os.PathLike[str]) -> AsyncGenerator[bytes, None]:
    file = await anyio.to_thread.run_sync(open, path, "rb")
    try:
        async for data in _file_chunks(file):
            yield data
    finally:
        file.close()


async def _sync_items(items: Iterable[Item]) -> AsyncGenerator[bytes, None]:
    iterator: Iterator[Item] = iter(items)
    end = object()
    while True:
        item = await anyio.to_thread.run_sync(next, iterator, end, abandon_on_cancel=True)
        if item is end:
            return
        yield _as_bytes(item)  # type: ignore[arg-type]  # not ``end``, so an Item


async def _async_items(items: AsyncIterable[Item]) -> AsyncGenerator[bytes, None]:
    try:
        async for item in items:
            yield _as_bytes(item)
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:  # a producer whose upload ended early stops too (like SIGPIPE)
            await close()


def body_of(source: Source) -> tuple[bytes | AsyncGenerator[bytes, None], int | None]:
    """The request body for ``source`` and its length when known up front."""
    if isinstance(source, (bytes, bytearray, memoryview, str)):
        data = _as_bytes(source)
        return data, len(data)
    if isinstance(source, os.PathLike):
        return _path_chunks(source), os.path.getsize(source)
    if hasattr(source, "read"):
        file: IO[bytes] = source  # type: ignore[assignment]  # has read(): a binary file
        return _file_chunks(file), _known_length(file)
    if isinstance(source, AsyncIterable):
        return _async_items(source), None
    if isinstance(source, Iterable):
        return _sync_items(source), None
    raise TypeError(f"cannot send a {type(source).__name__}: give bytes, str, a path, a file or an iterable")


async def _counted(
    chunks: bytes | AsyncGenerator[bytes, None], sent: list[int], on_progress: Callable[[int], None] | None
) -> AsyncGenerator[bytes, None]:
    """Yield the body chunk by chunk, counting bytes (``sent[0]``) and reporting them."""
    if isinstance(chunks, bytes):
        for i in range(0, len(chunks), READ_SIZE):
            piece = chunks[i : i + READ_SIZE]
            yield piece
            sent[0] += len(piece)
            if on_progress is not None:
                on_progress(sent[0])
        return
    try:
        async for piece in chunks:
            if not piece:
                continue  # an empty chunk would end a chunked upload
            yield piece
            sent[0] += len(piece)
            if on_progress is not None:
                on_progress(sent[0])
    finally:
        await chunks.aclose()


async def send(
    url: str,
    source: Source,
    *,
    n: int = 1,
    content_type: str | None = None,
    token: str | None = None,
    read_key: str | None = None,
    headers: dict[str, str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_log: Callable[[SenderLog], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> SendResult:
    """Upload ``source`` to the pipe at ``url`` for ``n`` receivers; returns the outcome.

    Args:
        url: the pipe's URL (a signed URL keeps its ``rp_*`` parameters).
        source: bytes or str (sent whole), a path or binary file (read to its end), or a
            sync or async iterable of bytes/str: each item is flushed as one chunk at once.
        n: receivers the transfer waits for (``?n=``).
        content_type: the receivers' ``Content-Type`` (NDJSON types make framed readers
            split by lines, ``text/event-stream`` is passed through to SSE readers).
        token: bearer token with the ``send`` scope.
        read_key: makes the pipe private: readers must present the same key.
        headers: more request headers (``Content-Disposition``, ``X-Piping``).
        on_progress: called with the bytes uploaded so far after each chunk.
        on_log: called after each line of the sender's log, with the log so far
            (``SenderLog``: ``n``, ``connected``, ``started``, ``aborted``, ``lines``).
        ssl_context: for ``https`` relays with a private CA (default: the system's).

    Returns:
        ``SendResult``: receivers completed, aborted and evicted, and the log's lines. A
        transfer whose every receiver dropped returns too (``ok`` False, ``completed`` 0),
        and the source is closed at once.

    Raises:
        PipeRefused: the server refused the upload (status and ``[ERROR]`` reason: a second
            sender, an ``n`` that disagrees, a credential, a limit, the wait timeout).
        PipeCancelled: the pipe was cancelled (``DELETE``) while waiting or sending; the
            source is closed at once, even while it waits for its next item.
        RelayUnreachable: no connection, or it broke before the log ended.
    """
    target = Target(url, token=token, read_key=read_key)
    body, length = body_of(source)
    extra = dict(headers or {})
    if content_type is not None:
        extra["Content-Type"] = content_type
    framing = ("Content-Length", str(length)) if length is not None else ("Transfer-Encoding", "chunked")
    sent = [0]
    chunks = _counted(body, sent, on_progress)
    exchange = _Exchange(target, target.url_with(n=str(n)), on_log)
    try:
        await exchange.run(list(target.headers(extra).items()) + [framing], chunks, ssl_context)
    finally:
        await chunks.aclose()
    result = exchange.log.outcome(sent[0], path=target.path)
    log.info(
        "sent %d bytes to %s: %d completed, %d aborted, %d evicted",
        result.bytes_sent,
        target.path,
        result.completed,
        result.aborted,
        result.evicted,
    )
    return result


class _Exchange:
    """One upload over HTTP/1.1, full duplex: the body goes up while the log comes down.

    httpx (httpcore) reads a response only once the whole request body is sent, so a
    sender could neither show its log live nor notice a cancel while its source waits
    for the next item; h11 (httpx's own HTTP/1.1 parser) lets both directions run at once.
    The upload stops as soon as the log ends: a cancelled or abandoned transfer closes the
    source at once, and a refusal is read before the connection's reset can hide it.
    """

    def __init__(self, target: Target, url: httpx.URL, on_log: Callable[[SenderLog], None] | None) -> None:
        self.target = target
        self.url = url
        self.on_log = on_log
        self.log = SenderLog()
        self.conn = h11.Connection(h11.CLIENT)
        self.source_error: BaseException | None = None

    async def run(
        self, headers: list[tuple[str, str]], chunks: AsyncGenerator[bytes, None], context: ssl.SSLContext | None
    ) -> None:
        url = self.url
        https = url.scheme == "https"
        port = url.port or (443 if https else 80)
        stream: anyio.abc.ByteStream
        try:
            if https:
                context = context or ssl.create_default_context()
                stream = await anyio.connect_tcp(
                    url.host, port, ssl_context=context, tls_hostname=url.host, tls_standard_compatible=False
                )
            else:
                stream = await anyio.connect_tcp(url.host, port)
        except OSError as exc:
            raise RelayUnreachable(f"{url.host}:{port} {self.target.path}: {exc}") from None
        host = [("Host", url.netloc.decode("ascii")), ("User-Agent", f"ringpipe-client/{__version__}")]
        request = h11.Request(method="PUT", target=url.raw_path, headers=host + headers)
        async with stream:
            await stream.send(self.conn.send(request))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._upload, stream, chunks, tg.cancel_scope)
                status, body = await self._read(stream)
                tg.cancel_scope.cancel()
        if self.source_error is not None:
            raise self.source_error
        if status != 200:
            raise (
                self.target.refused(status, body)
                if status
                else RelayUnreachable(
                    f"{url.host}:{url.port or ''} {self.target.path}: the connection closed before an answer"
                )
            )

    async def _upload(
        self, stream: anyio.abc.ByteStream, chunks: AsyncGenerator[bytes, None], scope: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in chunks:
                await stream.send(self.conn.send(h11.Data(data=chunk)))
            await stream.send(self.conn.send(h11.EndOfMessage()))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, h11.LocalProtocolError):
            return  # the server stopped reading the upload: its log says why
        except Exception as exc:  # the source failed: cut the upload so readers see it broken
            self.source_error = exc
            await stream.aclose()
            scope.cancel()

    async def _read(self, stream: anyio.abc.ByteStream) -> tuple[int, bytes]:
        """The response: (200, b"") once the log has ended or was cut, else the refusal's
        status and body; (0, b"") when the connection closed before any answer."""
        status = 0
        body = bytearray()
        partial = b""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                return status, bytes(body)  # closed mid-body: the log was cut
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    data = b""
                self.conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data) and status != 200:
                body += event.data
            elif isinstance(event, h11.Data):
                *lines, partial = (partial + bytes(event.data)).split(b"\n")
                for line in lines:
                    self.log.feed(line.decode("utf-8", "replace"))
                    if self.on_log is not None:
                        self.on_log(self.log)
                if self.log.final is not None:
                    return status, b""
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, bytes(body)
