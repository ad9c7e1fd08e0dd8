"""The edge's limits (SPEC Part 4) and how a connection is turned away when it breaks one.

A request that cannot be served as HTTP (malformed, oversize head, over the connection
limit, plain HTTP on an HTTPS-only port) never reaches the app: the HTTP protocol answers
it itself with the SPEC's rejection form and hands the transport to a ``LingeringClose``.

Why lingering: the client may still be sending (the rest of a 1 MB head, a body). Closing
a socket with unread input makes the kernel send a reset, and a client that is still
writing then sees "connection reset" and loses the answer it was sent. So the write side
is shut first (the client reads the answer and then EOF), input is read and dropped for a
short while, and only then is the socket closed. Both the time and the bytes dropped are
bounded, so a refused client costs little and cannot hold a connection open.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import httptools

from ringpipe.core.cors import CorsPolicy

if TYPE_CHECKING:
    import ssl

    from ringpipe.core.config import Settings

__all__ = [
    "BLANK_LINE",
    "Deadlines",
    "EdgeLimits",
    "LingeringClose",
    "Refusal",
    "head_end",
    "head_too_large",
    "malformed_reason",
    "rejection",
]

log = logging.getLogger("ringpipe.limits")
#: ``malformed_reason`` logs as the HTTP protocol (``protocol.py``) that calls it.
_protocol_log = logging.getLogger("ringpipe.connection")

#: Seconds a refused connection is drained before it is closed.
LINGER_S: Final = 2.0
#: Input bytes a refused connection may send while it lingers before it is cut.
LINGER_BYTES: Final = 4 << 20

#: The first byte of a TLS connection (a handshake record).
TLS_HANDSHAKE: Final = 0x16
#: The end of a request head.
BLANK_LINE: Final = b"\r\n\r\n"
#: Seconds between the moments ``Deadlines`` can fire: a deadline is met up to this late, never early.
DEADLINE_TICK_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What the HTTP protocol of one worker enforces, fixed for the worker's life.

    ``max_connections`` is this worker's share of ``--max-connections``
    (``Settings.connections_per_worker``), counting connections handed to it by a peer.
    ``header_timeout`` 0 means no deadline for a request head. ``tls`` is the server's TLS
    context when ``--ssl-certfile`` is given: the port then speaks HTTPS, and plain HTTP
    too unless ``ssl_only``. ``cors`` (``--cors-origins``) applies to the edge's own
    answers as to every other.
    """

    max_header_bytes: int = 16 << 10
    max_path_bytes: int = 4096
    header_timeout: float = 10.0
    max_connections: int = 10_000
    tls: ssl.SSLContext | None = None
    ssl_only: bool = False
    cors: CorsPolicy = CorsPolicy(None)

    @classmethod
    def from_settings(cls, settings: Settings, tls: ssl.SSLContext | None) -> EdgeLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_path_bytes=settings.max_path_bytes,
            header_timeout=settings.header_timeout,
            max_connections=settings.connections_per_worker,
            tls=tls,
            ssl_only=settings.ssl_only,
            cors=CorsPolicy.from_setting(settings.cors_origins),
        )


def rejection(
    status: int,
    message: str,
    default_headers: list[tuple[bytes, bytes]],
    *,
    version: bytes,
    cors: CorsPolicy | None = None,
    origin: bytes | None = None,
) -> bytes:
    """A whole response in the SPEC's rejection form that closes the connection.

    ``version`` is the status line's (``b"1.1"``, or ``b"1.0"`` for an HTTP/1.0 request);
    ``default_headers`` are uvicorn's (the Date header). Under a ``cors`` allowlist the
    ``Access-Control-Allow-Origin`` header follows it for the request's ``origin`` (None:
    no Origin header, or none was parsed before the request was refused).
    """
    body = f"[ERROR] {message}\n".encode()
    phrase = http.HTTPStatus(status).phrase.encode()
    headers = [
        *default_headers,
        (b"content-type", b"text/plain"),
        (b"access-control-allow-origin", b"*"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    if cors is not None and not cors.any_origin:
        headers = cors.rewrite(headers, origin)
    lines = [b"HTTP/" + version + b" %d " % status + phrase, *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class LingeringClose(asyncio.Protocol):
    """The transport's protocol once the answer is written: drop input, then close.

    ``connection_lost`` is passed on to ``on_lost`` (the HTTP protocol's own), so the
    server's bookkeeping of connections stays whole.
    """

    def __init__(self, transport: asyncio.Transport, on_lost: Callable[[Exception | None], None]) -> None:
        self.transport = transport
        self._on_lost = on_lost
        self._left = LINGER_BYTES
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(LINGER_S, self._close)
        if transport.can_write_eof():
            transport.write_eof()  # the client reads the answer, then EOF
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self._close()

    def eof_received(self) -> bool:
        self._close()
        return False  # (a TLS transport ignores True, and warns)

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_lost(exc)


class Deadlines:
    """One event-loop timer per tick for the deadlines of all connections of a worker.

    Every connection waits for its request head under a deadline (``header_timeout``) and
    every idle keep-alive connection under another; almost all of them are cancelled, and
    a ``TimerHandle`` each cost a timer set and cancelled in the loop per connection. Here a
    deadline joins the bucket of its tick (rounded up: it fires at most ``tick`` seconds
    late, and never earlier than a ``call_later`` would), one loop timer fires a bucket,
    and cancelling is a set removal.

    ``add`` returns the bucket: ``bucket.discard(callback)`` cancels (callbacks are
    compared by equality, so a fresh bound method of the same object cancels). A callback
    that raises is logged; the others in its bucket still run.
    """

    __slots__ = ("_buckets", "_tick", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = DEADLINE_TICK_S) -> None:
        self.loop = loop
        self._tick = tick
        self._buckets: dict[int, set[Callable[[], None]]] = {}

    def add(self, delay: float, callback: Callable[[], None]) -> set[Callable[[], None]]:
        """Call ``callback`` once, ``delay`` seconds from now (to the next tick)."""
        key = -int(-(self.loop.time() + delay) // self._tick)  # rounded up
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            self.loop.call_at(key * self._tick, self._fire, key)
        bucket.add(callback)
        return bucket

    def _fire(self, key: int) -> None:
        for callback in self._buckets.pop(key, ()):
            try:
                callback()
            except Exception:
                log.exception("a connection deadline failed")


class Refusal(Exception):
    """A request the edge will not serve, and its answer. Raised from a parser callback,
    it stops the parse of that request's head."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def head_end(tail: bytes, data: bytes) -> int:
    """Where in ``data`` the first blank line ends (CRLF CRLF, possibly begun in ``tail``)."""
    for k in (3, 2, 1):
        if tail.endswith(BLANK_LINE[:k]) and data.startswith(BLANK_LINE[k:]):
            return 4 - k
    found = data.find(BLANK_LINE)
    return -1 if found < 0 else found + 4


def head_too_large(limits: EdgeLimits) -> str:
    """The 431 message: the request head passed ``limits.max_header_bytes``."""
    return f"The request head is larger than {limits.max_header_bytes} bytes."


def malformed_reason(exc: httptools.HttpParserError) -> str:
    """What is wrong with a request, as the tail of a sentence ("invalid header token").

    llhttp's own reason, or, when a callback failed, what made it fail: uvicorn's
    ``on_headers_complete`` cannot parse an authority-form or empty target. Any other
    failure in a callback is a bug of ours: logged with its traceback, still a 400.
    """
    if isinstance(exc, httptools.HttpParserCallbackError):
        cause = exc.__context__
        if isinstance(cause, httptools.HttpParserInvalidURLError):
            return "the request target is not a path"
        if isinstance(cause, UnicodeError):
            return "the request target is not ASCII"
        _protocol_log.error("an HTTP parser callback failed", exc_info=cause)
        return "it could not be parsed"
    text = str(exc).strip().rstrip(".") or "it could not be parsed"
    return text[0].lower() + text[1:]
