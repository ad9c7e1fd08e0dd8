"""``send``: upload a source to a pipe and return how the transfer went, from the sender's log.

Each item of an iterable source goes out as its own HTTP chunk the moment it is produced,
so tokens are live for the readers; bytes, a path and a regular file go out with a
``Content-Length`` (readers get it too). Blocking sources (files, sync iterables, stdin) are
read in a worker thread, so the event loop never waits on them.

httpx writes the whole request body before it reads the response, so the sender's log is
read once the upload is over (or the server has stopped reading it): ``send`` returns the
log's outcome, not a live view of it. The live state of a pipe is ``status()``'s.

If the source raises, the upload is cut before its last chunk and the readers see the
producer vanish (aborted), never a clean end; the exception propagates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Iterator
from typing import IO, Final, TypeAlias

import anyio
import anyio.to_thread
import httpx

from ringpipe.client.errors import RelayUnreachable
from ringpipe.client.transport import Target, open_client, unreachable
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
        data = await anyio.to_thread.run_sync(read, READ_SIZE)
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
        item = await anyio.to_thread.run_sync(next, iterator, end)
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
    client: httpx.AsyncClient | None = None,
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
        client: an httpx client to use (its timeouts must allow a long upload).

    Returns:
        ``SendResult``: receivers completed, aborted and evicted, and the log's lines. A
        transfer whose every receiver dropped returns too (``ok`` False, ``completed`` 0).

    Raises:
        PipeRefused: the server refused the upload (status and ``[ERROR]`` reason: a second
            sender, an ``n`` that disagrees, a credential, a limit, the wait timeout).
        PipeCancelled: the pipe was cancelled (``DELETE``) while waiting or sending.
        RelayUnreachable: no connection, or it broke before the log ended.
    """
    target = Target(url, token=token, read_key=read_key)
    body, length = body_of(source)
    extra = dict(headers or {})
    if content_type is not None:
        extra["Content-Type"] = content_type
    if length is not None:
        extra["Content-Length"] = str(length)
    sent = [0]
    stream = _counted(body, sent, on_progress)
    sender_log = SenderLog()
    try:
        async with open_client(client) as http:
            request = http.build_request(
                "PUT", target.url_with(n=str(n)), content=stream, headers=target.headers(extra)
            )
            try:
                response = await http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise unreachable(target, exc) from None
            try:
                if response.status_code != 200:
                    raise target.refused(response.status_code, await response.aread())
                try:
                    async for line in response.aiter_lines():
                        sender_log.feed(line)
                except httpx.TransportError:
                    pass  # the log was cut: ``outcome`` tells a cancel from a lost connection
            finally:
                await response.aclose()
    finally:
        await stream.aclose()
    try:
        result = sender_log.outcome(sent[0], path=target.path)
    except RelayUnreachable:
        log.info("sender log cut on %s after %d bytes", target.path, sent[0])
        raise
    log.info(
        "sent %d bytes to %s: %d completed, %d aborted, %d evicted",
        result.bytes_sent,
        target.path,
        result.completed,
        result.aborted,
        result.evicted,
    )
    return result
