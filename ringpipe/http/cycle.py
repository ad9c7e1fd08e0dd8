"""uvicorn's per-request objects made lean: ``Flow`` (a connection's write flow control) and
``Cycle`` (one request's response cycle), for ``lean.LeanHttpToolsProtocol``.

uvicorn's ``FlowControl`` and ``RequestResponseCycle`` keep their fields in a dict (sized for
growth) and make an ``asyncio.Event`` each (a ~760-byte deque, up front), and a waiting
receiver holds both for as long as it waits. Here they are uvicorn's classes with slots and a
``Flag`` for their event, built positionally (uvicorn's keyword call took a tenth of the
protocol's head handling), with the same behaviour:

- ``Cycle.app_ended`` is uvicorn's ``run_asgi`` epilogue (the log line, a 500 or a close for
  an app that failed or broke its response), run from the request task's done-callback;
- the response head is written as uvicorn's ``send`` writes it, a header pair checked before
  taken from a worker-wide table of lines (``Cycle._write_head``), and once the response has
  started the cycle keeps only the method of its request's scope.

``tests/unit/test_uvicorn_mirror.py`` checks that the slots cover every attribute uvicorn's
classes set, and ``tests/unit/test_lean_protocol.py`` (a hypothesis test) that the head writer
writes uvicorn's bytes and state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from ringpipe.shm.flag import Flag

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent, HTTPScope

__all__ = ["Cycle", "Flow"]

#: What a response cycle keeps of its request's scope once its response has started, per
#: method, shared (read only; llhttp knows a fixed set of methods).
_STARTED_SCOPES: Final[dict[str, dict[str, str]]] = {}
#: Response header lines uvicorn's ``send`` would write (``name: value\r\n``, the name lower
#: case, both checked), by their ``(name, value)`` pair: a worker answers with the same few
#: pairs again and again (its Date for a second, CORS, Cache-Control, content types). Only
#: pairs without a meaning for the response's framing (not Content-Length,
#: Transfer-Encoding, Connection). Bounded: cleared when full (each second's Date is new).
_HEADER_LINES: Final[dict[tuple[bytes, bytes], bytes]] = {}
_HEADER_LINES_MAX: Final = 512
#: Lower-case header names that change how uvicorn frames or ends a response.
_FRAMING_NAMES: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class Flow(FlowControl):
    """uvicorn's ``FlowControl`` in slots, its writable event a ``Flag`` made the first time
    writing pauses (most connections never fill their socket: until then nothing waits)."""

    __slots__ = ("_is_writable_event", "_transport", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._is_writable_event = cast("asyncio.Event", None)

    async def drain(self) -> None:
        if self._is_writable_event is not None:
            await self._is_writable_event.wait()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            if self._is_writable_event is None:
                self._is_writable_event = cast("asyncio.Event", Flag())
            else:
                self._is_writable_event.clear()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            self._is_writable_event.set()


class Cycle(RequestResponseCycle):
    """uvicorn's ``RequestResponseCycle`` in slots, its message event a ``Flag``.

    Built positionally by the HTTP protocol (uvicorn's keyword call took a tenth of the
    protocol's head handling): the fields are uvicorn's, at the values its constructor gives.
    """

    __slots__ = (
        "access_log",
        "access_logger",
        "body",
        "chunked_encoding",
        "default_headers",
        "disconnected",
        "expected_content_length",
        "flow",
        "keep_alive",
        "logger",
        "message_event",
        "more_body",
        "on_response",
        "response_complete",
        "response_started",
        "scope",
        "transport",
        "waiting_for_100_continue",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        transport: asyncio.Transport,
        flow: FlowControl,
        logger: logging.Logger,
        access_logger: logging.Logger,
        access_log: bool,
        default_headers: list[tuple[bytes, bytes]],
        expect_100_continue: bool,
        keep_alive: bool,
        on_response: Callable[..., None],
    ) -> None:
        self.scope = cast("HTTPScope", scope)
        self.transport = transport
        self.flow = flow
        self.logger = logger
        self.access_logger = access_logger
        self.access_log = access_log
        self.default_headers = default_headers
        self.message_event = cast("asyncio.Event", Flag())
        self.on_response = on_response
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0

    def app_ended(self, task: asyncio.Task[None]) -> Coroutine[Any, Any, None] | None:
        """uvicorn's ``run_asgi`` after its ``await app(...)``, for the request's ``task``
        that has ended: an app that failed, returned a value, or left its response unstarted
        or unfinished is logged as uvicorn does, and its connection closed, or a 500 sent
        when no response started (returned: the coroutine that sends it, then ends the
        cycle as uvicorn's ``finally`` does); the cycle tells the protocol nothing more."""
        try:
            result = task.result()
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                return self._answer_500()
            self.transport.close()
        else:
            if result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
                self.transport.close()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                return self._answer_500()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self.transport.close()
        self.on_response = _no_response
        return None

    def send(self, message: ASGISendEvent) -> Coroutine[Any, Any, None]:
        """uvicorn's ``send``; the response's start through ``_start_response``."""
        if self.response_started:
            return RequestResponseCycle.send(self, message)
        return self._start_response(message)

    async def _start_response(self, message: ASGISendEvent) -> None:
        """uvicorn's ``send`` of the response's start, after which the cycle keeps only the
        method of the request's scope (all uvicorn reads from it then): a held stream whose
        app has let go of its scope holds none of it (~1 KiB with its headers)."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if message["type"] != "http.response.start":
            raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
        self._write_head(message["status"], message.get("headers", ()))
        if self.response_started:
            method = self.scope["method"]
            started = _STARTED_SCOPES.get(method)
            if started is None:
                started = _STARTED_SCOPES[method] = {"method": method}
            self.scope = cast("HTTPScope", started)

    def _write_head(self, status_code: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Write the response head as uvicorn's ``send`` does: the same checks (a name or value
        it refuses raises its ``RuntimeError``), the same state (framing, keep-alive), the
        same bytes. A pair seen before is one dict lookup (``_HEADER_LINES``) instead of two
        regex searches, a ``lower`` and three comparisons: uvicorn's took ~4 us for a head of
        seven headers, this ~1.8 us."""
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status_code,
            )
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        lines = _HEADER_LINES
        for pair in (*self.default_headers, *headers):
            try:
                line = lines.get(pair)
            except TypeError:  # an unhashable pair (a list, a bytearray): checked each time
                line = None
            if line is None:
                name, value = pair
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    connection = [token.lower().strip() for token in value.split(b",")]
                    if b"close" in connection:
                        self.keep_alive = False
                        has_connection_close = True
                line = b"".join((name, b": ", value, b"\r\n"))
                if name not in _FRAMING_NAMES and type(pair) is tuple and type(name) is bytes and type(value) is bytes:
                    if len(lines) >= _HEADER_LINES_MAX:
                        lines.clear()
                    lines[pair] = line
            content.append(line)
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
            self.chunked_encoding = True  # neither Content-Length nor Transfer-Encoding given
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))

    async def _answer_500(self) -> None:
        try:
            await self.send_500_response()
        finally:
            self.on_response = _no_response


def _no_response() -> None:
    """``Cycle.on_response`` once the app has ended: the protocol is not told again."""
