"""The ``Reader`` contract: what differs between framings in a receiver's life.

``http.receiver`` runs every receiver's life the same way (join, wait, start, relay, leave)
and asks its ``Reader`` for what differs:

- ``session(on_hangup)``: the reader's connection for the whole life (hang-up callback);
- ``admitted()``: the pipe's owner took the reader in (it waits, or the transfer starts). No
  head goes out before that, so every refusal is a plain HTTP answer (SPEC 2.4); from then
  on SSE has its head, with ``retry: 1000``, and a ``: ping`` comment after every
  ``heartbeat`` seconds without a write, and a WebSocket has its handshake (and pings);
- ``reject(status, message)``: the piping error form before the head; after it (an admitted
  reader that waited too long, a drain) only an ending, *aborted*, saying why;
- ``relay(consumer, start)``: the response from the transfer's start to its ending; True only
  for a complete transfer (the producer's clean end);
- ``finish(completed)``: make an incomplete end visible (raw: close before the last chunk;
  SSE/NDJSON: the ending, if none went out yet);
- ``cancelled_while_waiting(message)``: a DELETE ended the pipe before its transfer started
  (SPEC 2.3, 2.4): the cancelled ending in every framing that has one (SSE
  ``event: cancelled``, NDJSON ``{"end":"cancelled"}``, WebSocket close 4002); a raw reader,
  whose only endings are a clean end or a cut, gets ``410`` with the piping error text.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from starlette.types import Scope

from ringpipe.core.control_frames import Start
from ringpipe.core.errors import PeerGone
from ringpipe.core.framing import GRANULARITIES, Granularity
from ringpipe.core.paths import query_param
from ringpipe.mesh.ingest import HEADER_BLOCK, HEADER_MAGIC, parse_header_block
from ringpipe.mesh.relay import Consumer

__all__ = ["FRESH_START", "ReadOptions", "ReadStart", "Reader", "part_headers", "read_options"]

HTTP_FORMATS: Final = ("raw", "sse", "ndjson")
WEBSOCKET_FORMATS: Final = ("raw", "lines", "text")
#: The framings whose readers take a gap (``event: gap``, ``{"gap":…}``) where raw ones are cut
#: or refused with 410 (SPEC 2.4).
GAP_FORMATS: Final = ("sse", "ndjson")


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How a reader wants the pipe: ``?format=``, ``?encoding=base64``, ``?done=openai``, and
    the event granularity of its framing (``?sse=`` or ``?ndjson=``: ``lines`` or ``chunks``;
    None: by the producer's Content-Type, ``framing.default_granularity``)."""

    format: str = "raw"
    base64: bool = False
    done_openai: bool = False
    granularity: Granularity | None = None

    @property
    def takes_gaps(self) -> bool:
        """An HTTP reader that reports lost bytes and goes on (SSE, NDJSON), never refused for them."""
        return self.format in GAP_FORMATS


@dataclass(frozen=True, slots=True)
class ReadStart:
    """Where a reader joins the pipe (SPEC 2.4): a watcher, a resumed receiver (offset,
    ``Last-Event-ID``), by ``Range`` (raw answers 206). A fresh receiver is the default.

    ``lost``: a reader that takes gaps and resumed at a point no longer held (or of an
    older pipe on the path) starts at the oldest byte held, and first reports these lost
    bytes ``[from, to)``. ``aligned``: the start is known to be an event boundary of a
    ``text/event-stream`` producer (an id we issued), so no bytes are skipped to the next one.
    """

    watcher: bool = False
    resumed: bool = False
    by_range: bool = False
    lost: tuple[int, int] | None = None
    aligned: bool = False


#: Where a fresh receiver joins (every field its default), shared: a frozen dataclass costs a
#: ``__setattr__`` call per field to build.
FRESH_START: Final = ReadStart()


def read_options(scope: Scope) -> ReadOptions | str:
    """The reader's options, or the rejection message for a value we do not know.

    HTTP: ``?format=raw|sse|ndjson`` (``Accept: text/event-stream`` means sse when ``format``
    is absent, which is what EventSource sends); WebSocket: ``?format=raw|lines|text``.
    ``?sse=`` and ``?ndjson=`` (``lines|chunks``) are checked wherever they appear; the one
    of the reader's framing sets its granularity.
    """
    query = scope["query_string"]
    websocket = scope["type"] == "websocket"
    known = WEBSOCKET_FORMATS if websocket else HTTP_FORMATS
    fmt = query_param(query, "format")
    if fmt is None:
        accept = b",".join(v for k, v in scope["headers"] if k == b"accept").lower()
        fmt = "sse" if not websocket and b"text/event-stream" in accept else "raw"
    if fmt not in known:
        return f"Unknown format '{fmt}': use {', '.join(known[:-1])} or {known[-1]}."
    encoding = query_param(query, "encoding") or "text"
    if encoding not in ("text", "base64"):
        return f"Unknown encoding '{encoding}': use text or base64."
    done = query_param(query, "done")
    if done not in (None, "openai"):
        return f"Unknown done marker '{done}': use openai."
    granularity: dict[str, Granularity] = {}
    for name in GAP_FORMATS:
        value = query_param(query, name)
        if value is None:
            continue
        if value not in GRANULARITIES:
            return f"Unknown {name} granularity '{value}': use lines or chunks."
        granularity[name] = "lines" if value == "lines" else "chunks"
    return _options(fmt, encoding == "base64", done == "openai", None if websocket else granularity.get(fmt))


@functools.cache
def _options(fmt: str, base64: bool, done_openai: bool, granularity: Granularity | None) -> ReadOptions:
    """One shared ``ReadOptions`` per combination (immutable; a handful of formats): a frozen
    dataclass costs a ``__setattr__`` call per field to build, on every receiver."""
    return ReadOptions(fmt, base64, done_openai, granularity)


class Reader(abc.ABC):
    """What differs between framings in a receiver's life (see the module docstring)."""

    __slots__ = ()  # a reader lives as long as its receiver: its framings' state is in slots

    @abc.abstractmethod
    def session(self, on_hangup: Callable[[], None]) -> contextlib.AbstractAsyncContextManager[None]:
        """The reader's connection from its join to its leave; ``on_hangup`` once the client is gone."""

    async def admitted(self) -> None:  # noqa: B027 (a hook: most framings send nothing yet)
        """The owner admitted the reader (``Accepted`` or ``Start``); called again, it does nothing."""

    @abc.abstractmethod
    async def reject(self, status: int, message: str) -> None:
        """Refuse the reader with ``status`` and the piping error text ``message`` (after its
        head: the *aborted* ending with ``message`` as the reason)."""

    @abc.abstractmethod
    async def relay(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
        """The response from the transfer's start to its ending; True for a complete transfer.

        Raises:
            OSError: the client went away while we wrote (the caller treats it as gone).
        """

    @abc.abstractmethod
    async def finish(self, completed: bool, ending: str | None = None) -> None:
        """After the relay (or instead of it): make an incomplete end visible to the client,
        saying ``ending`` (``errors.ENDINGS``; None: unknown, told as aborted) where the
        framing can."""

    def finish_needed(self, completed: bool) -> bool:
        """Whether ``finish(completed)`` would do anything; when not, the receiver skips the
        cancel scopes and the timer that bound it (two scopes and a timer per receiver)."""
        del completed
        return True

    async def cancelled_while_waiting(self, message: str) -> None:
        """The pipe was cancelled before its transfer started: the cancelled ending (the
        framings that only have their head to go, WebSocket; see the module docstring)."""
        del message  # the framing's ending says it
        await self.finish(False, "cancelled")


async def part_headers(consumer: Consumer) -> dict[str, str] | None:
    """A multipart upload's first-part headers from the head of the ring; None if the
    producer vanished first."""
    try:
        magic, size = HEADER_BLOCK.unpack(await consumer.read_exact(HEADER_BLOCK.size))
        if magic != HEADER_MAGIC:
            raise PeerGone("no header block at the head of the ring")
        return dict(parse_header_block(await consumer.read_exact(size)))
    except PeerGone:
        return None
