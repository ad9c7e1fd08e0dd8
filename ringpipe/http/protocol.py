"""The HTTP protocol: uvicorn's httptools protocol, with what the pipe endpoints need added.

``RingpipeHttpProtocol`` gives each request scope a ``connection.Connection`` (under
``scope["extensions"][EXTENSION]``) and serves that facade's hot path: a sender's body held
back from the parser at the end of its head, so it can be read straight into the ring
(``rawbody.RawBody``), or fed from ``on_body`` to a sink with no ASGI message.

It is also the edge's guard (SPEC Part 4): request-head limits (400/414/431 in the SPEC's
rejection form, answered before any app code runs), the header timeout, the connection
limit, TLS on the same port, and the HTTP/1.0 status line; see the class.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import httptools
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ringpipe.core.chunked import BodyFraming
from ringpipe.http.connection import EXTENSION, Connection
from ringpipe.http.lean import LeanHttpToolsProtocol
from ringpipe.http.limits import (
    BLANK_LINE,
    TLS_HANDSHAKE,
    EdgeLimits,
    LingeringClose,
    Refusal,
    head_end,
    head_too_large,
    malformed_reason,
    rejection,
)
from ringpipe.http.rawbody import RawBody, raw_body_framing
from ringpipe.http.tls import start_server_tls
from ringpipe.http.uvicorn_shims import Http10StatusLine
from ringpipe.mesh.handoff import Handoff
from ringpipe.ops import metrics, tally

if TYPE_CHECKING:
    from collections.abc import Callable

    from uvicorn._types import HTTPScope
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from ringpipe.mesh.ingest import Ingest

__all__ = ["RingpipeHttpProtocol"]

log = logging.getLogger("ringpipe.connection")

AT_CONNECTION_LIMIT: Final = "The server is at its connection limit."
NO_VERSION: Final = "The request line has no HTTP version (HTTP/0.9 is not served)."


class RingpipeHttpProtocol(LeanHttpToolsProtocol):
    """uvicorn's httptools protocol with a ``Connection`` in the scope and the hot-path hooks.

    Body hold-back: while a request head is expected, each read is split at the first
    blank line, and the head alone is fed to the parser. If that head is a would-be pipe
    sender (PUT/POST with a plain ``Content-Length`` or ``chunked`` body), the bytes after
    it are kept in ``holding`` and reading pauses: the parser never sees the body, so the
    app can have it read straight into the ring (``start_raw_body``), or, if the app
    answers without reading it, it is given back to the parser once the response is done.
    Splitting a read in two never changes what the parser makes of it; the hold-back only
    decides where body bytes go.

    Limits (``limits``, SPEC Part 4), all checked where the head is read, so a request
    body never pays for them: the head's bytes are counted as they come (over
    ``max_header_bytes``: 431; the parser is fed only up to the limit, so a huge head is
    never buffered), the target's length in ``on_url`` (over ``max_path_bytes``: 414), a
    parser error is a 400, and a deadline per head (``limits.Deadlines``) closes a
    connection whose head is not complete within ``header_timeout``. Each refusal is answered here in the SPEC's form
    and the connection is closed the lingering way (``limits.LingeringClose``).

    TLS: with a TLS context the first byte decides (``tls.py``); after the handshake
    ``connection_made`` comes again with the TLS transport, and ``Connection.tls`` turns
    the raw socket fast paths off.

    The transport's write buffer limits are (0, 0), so ``resume_writing`` means exactly
    "nothing buffered", which ``Connection.write_parts`` waits for. uvicorn's own writes
    (status lines, logs) are small and unaffected.
    """

    __slots__ = (
        "_adopted",
        "_adopted_fd",
        "_at_head",
        "_between",
        "_deferred",
        "_framing",
        "_head_bytes",
        "_head_timer",
        "_header_sum",
        "_line_open",
        "_origin",
        "_refusal",
        "_refused",
        "_replay",
        "_rp_connection",
        "_sniffing",
        "_splitting",
        "_tail",
        "_tls",
        "_tls_pending",
        "_upgraded",
        "holding",
    )

    #: This worker's limits; ``configured`` makes the subclass a worker serves with.
    limits: ClassVar[EdgeLimits] = EdgeLimits()
    #: How to pass a connection to its pipe's owner worker (``handoff.py``); None: never.
    handoff: ClassVar[Handoff | None] = None

    @classmethod
    def configured(cls, limits: EdgeLimits, handoff: Handoff | None = None) -> type[RingpipeHttpProtocol]:
        """This protocol with ``limits`` and ``handoff`` (uvicorn builds protocols from a class)."""
        return type(cls.__name__, (cls,), {"limits": limits, "handoff": handoff, "__doc__": cls.__doc__})

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Per connection: what a peer worker read from it before handing it here, and its
        # descriptor (``adopting``); whether its current request was handed here (it is
        # then served here, whoever owns its path); our ``Connection``, made with the first
        # request (a connection handed off before one never needs it); TLS is on.
        self._replay: bytes | None = None
        self._adopted_fd: int | None = None
        self._adopted = self._tls = False
        self._rp_connection: Connection | None = None
        #: Body bytes read past a held-back head; None when nothing is held.
        self.holding: bytearray | None = None
        self._framing: BodyFraming | None = None
        self._at_head, self._splitting, self._tail = True, False, b""
        #: The parser is between two requests of a keep-alive connection (``_feed`` drops it).
        self._between = False
        #: Bytes of the current request head read so far (counted while ``_at_head``).
        self._head_bytes = 0
        #: Header bytes the parser reported for the current request (a backstop for heads that
        #: arrive in the same read as the previous request's body, which are not counted above).
        self._header_sum = 0
        #: The ``Deadlines`` bucket of the head deadline; None: not armed.
        self._head_timer: set[Callable[[], None]] | None = None
        # TLS is configured and the client's first byte has not come yet; TLS was started
        # (the next ``connection_made`` brings the TLS transport); the connection became a
        # WebSocket (no byte of it is for the HTTP parser any more); a request began and its
        # version has not been checked yet (``_check_version``); it was refused.
        self._sniffing = self._tls_pending = self._upgraded = self._line_open = self._refused = False
        self._refusal: Refusal | None = None
        self._origin: bytes | None = None  # the request's first Origin, for ``_answer`` (headers go)
        #: A refusal waiting for the responses owed before it (``_refuse``).
        self._deferred: Refusal | None = None

    def adopting(self, replay: bytes, fd: int) -> RingpipeHttpProtocol:
        """Serve a connection (socket ``fd``) a peer worker handed over, starting with the
        ``replay`` bytes it had read (fed before anything new is read)."""
        self._replay = replay
        self._adopted_fd = fd
        return self

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = self._tls_pending
        self._tls_pending = False
        self._tls = tls
        self._rp_connection = None  # after a TLS handshake: made again for the TLS transport
        # "Paused" must mean "anything buffered": (0, 0) on a socket transport, which pauses
        # above the high mark; (1, 0) on the TLS transport, which pauses at it.
        transport.set_write_buffer_limits(high=1 if tls else 0, low=0)
        if tls:
            return
        limits = self.limits
        self._arm_head_timer()
        if limits.tls is not None:
            self._sniffing = True
        elif len(self.connections) > limits.max_connections:
            self._refuse(503, AT_CONNECTION_LIMIT)
        replay, self._replay = self._replay, None
        if replay is not None and not self._refused:
            self._adopted = True
            self.data_received(replay)
            # The event loop starts reading this transport after ``connection_made``
            # returns, whatever was paused in it: pause again once it has.
            self.loop.call_soon(self._keep_paused)

    def data_received(self, data: bytes) -> None:
        if self._deferred is not None or self._upgraded:
            return  # after a parse error, nothing the client sends is a request; after an upgrade it is not ours
        if self.holding is not None:
            self.holding += data
            self.flow.pause_reading()
            # Also the transport itself: after a hand-off, uvloop starts reading once
            # ``connection_made`` (which replayed the head and paused) has returned, so
            # ``flow`` can believe reading is paused while it is not.
            self.transport.pause_reading()
            return
        if self._keep_alive_in is not None:
            self._unset_keepalive_if_required()
        if self._sniffing:
            self._sniffing = False
            if self._sniff(data):
                return
        if self._at_head:
            if self._head_timer is None:
                self._arm_head_timer()
            tail = self._tail
            if tail:
                end = head_end(tail, data)
            else:
                end = data.find(BLANK_LINE)
                if end >= 0:
                    end += 4
            size = len(data) if end < 0 else end
            self._head_bytes += size
            over = self._head_bytes - self.limits.max_header_bytes
            if over > 0:
                self._head_too_large(data[: size - over])
                return
            if end < 0:
                self._tail = (self._tail + data)[-3:]
            else:
                self._tail = b""
                if self._head_bytes == size and self.handoff is not None and self._hand_off(data, end):
                    return
                self._splitting = True
                try:
                    self._feed(data[:end], rest=data[end:])
                finally:
                    self._splitting = False
                if self._refused or self._upgraded:
                    return
                if self._framing is not None:
                    self.holding = bytearray(data[end:])
                    self.flow.pause_reading()
                    return
                data = data[end:]
                if not data:
                    return
        self._feed(data)

    def _hand_off(self, data: bytes, end: int) -> bool:
        """Pass this connection to the owner of its request's pipe (``handoff.py``); True if
        it is gone there. ``data`` is this read, a whole request head first (``end`` bytes).

        Only between requests (nothing running or queued on the connection), not under
        TLS (the session lives here), and not for a request handed here already.
        """
        handoff = self.handoff
        if handoff is None or self._tls or self._adopted or self.pipeline:
            return False
        if self._running is not None and not self._running.response_complete:
            return False
        worker = handoff.target(data)  # (it reads the request line only)
        if worker is None:
            return False
        sock = self.transport.get_extra_info("socket")  # (a ``Connection`` is not made for this)
        if sock is None or not handoff.send(worker, sock.fileno(), data, self._family()):
            return False
        tally.count(metrics.HANDOFFS)
        self._cancel_head_timer()
        self.transport.pause_reading()
        self.transport.abort()  # closes our copy only: the peer's keeps the connection open
        return True

    def _feed(self, data: bytes, rest: bytes = b"") -> None:
        """uvicorn's ``data_received`` minus its own 400: ours is the SPEC's form (``_refuse``).

        ``rest``: bytes read after ``data`` and not fed yet; after a WebSocket upgrade they,
        and whatever of ``data`` follows the upgrade's head, belong to the WebSocket.
        """
        parser = self.parser
        if parser is None:
            parser = self._new_parser()
        try:
            parser.feed_data(data)
            if self._line_open and data.endswith(b"\n") and self.url and parser.get_http_version() == "0.0":
                # A request line ended with no version (llhttp waits for headers): an HTTP/0.9
                # client, which waits for an answer, not a 1.x one still sending its line.
                self._line_open = False
                self._refuse(400, NO_VERSION)
            elif self._between and self.parser is parser:
                # Between two requests of a keep-alive connection, a parser holds no state a
                # fresh one lacks: the next bytes fed make one, and a connection waiting
                # (for its pipe's peer, its app) meanwhile holds none (~1 KiB).
                self.parser = cast("httptools.HttpRequestParser", None)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                at = upgrade.args[0] if upgrade.args and isinstance(upgrade.args[0], int) else len(data)
                self.handle_websocket_upgrade(data[at:] + rest)
            else:  # served as a plain request; uvicorn's two warnings per read would let clients flood the log
                log.debug("ignored an Upgrade header", extra={"client": self._peer()})
        except httptools.HttpParserError as exc:
            refusal, self._refusal = self._refusal, None
            if refusal is not None:
                self._refuse(refusal.status, refusal.message)
            else:
                self._refuse(400, f"The request is malformed: {malformed_reason(exc)}.")

    def handle_websocket_upgrade(self, rest: bytes = b"") -> None:
        """Hand the connection to the WebSocket protocol, with ``rest``, the bytes read after
        the upgrade's head: they are the WebSocket's (its protocol drops a client that
        speaks before the handshake), never a request for the HTTP parser."""
        self._upgraded = True
        self._cancel_head_timer()
        super().handle_websocket_upgrade()
        # This protocol is done with the connection, but the parser holds its callbacks, bound
        # to it: a cycle (protocol → parser → protocol) that would keep it, the transport and the
        # connection's state alive until a full collection, long after the WebSocket closed.
        self.parser = cast("httptools.HttpRequestParser", None)
        protocol = self.transport.get_protocol()
        if rest and isinstance(protocol, asyncio.Protocol) and protocol is not self and not self.transport.is_closing():
            protocol.data_received(rest)

    # -- limits --

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_path_bytes:
            self._refusal = Refusal(414, f"The request target is longer than {self.limits.max_path_bytes} bytes.")
            raise self._refusal

    def _check_version(self) -> None:
        """Refuse an HTTP/0.9 request (llhttp parses one, headers and all) before the app
        sees it: SPEC Part 4, request-line garbage is a 400."""
        self._line_open = False
        if self.parser.get_http_version() == "0.9":
            self._refusal = Refusal(400, NO_VERSION)
            raise self._refusal

    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's (a lower-case name, a value without trailing blanks, ``Expect:
        100-continue`` noted), counted against ``max_header_bytes`` as received."""
        if self._line_open:
            self._check_version()
        self._header_sum += len(name) + len(value) + 4
        name = name.lower()
        value = value.rstrip(b" \t")  # RFC 9110 5.5: trailing whitespace is not part of the value
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        elif name == b"origin" and self._origin is None:
            self._origin = value
        if self.headers is not None:  # None after the head: a trailer (nothing reads the list any more)
            self.headers.append((name, value))
        if self._header_sum > self.limits.max_header_bytes:
            self._refusal = Refusal(431, head_too_large(self.limits))
            raise self._refusal

    def _head_too_large(self, within_limit: bytes) -> None:
        """The head passed ``max_header_bytes``: 414 if the target is what is long, else 431."""
        if within_limit:
            self._feed(within_limit)  # the target may prove too long on the way (on_url: 414)
        if not self._refused:
            self._refuse(431, head_too_large(self.limits))

    def _arm_head_timer(self) -> None:
        timeout = self.limits.header_timeout
        if timeout and not self._refused:
            self._head_timer = self._deadline(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.discard(self._head_timed_out)
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._arm_head_timer()  # a request is being served: its response comes first
            return
        if not self.transport.is_closing():
            log.info(
                "closed a connection that sent no complete request head in time",
                extra={"event": "header_timeout", "timeout_s": self.limits.header_timeout},
            )
            self.transport.abort()

    def _sniff(self, data: bytes) -> bool:
        """The first bytes of a connection when TLS is on; True when this protocol is done with them."""
        limits = self.limits
        assert limits.tls is not None
        full = len(self.connections) > limits.max_connections
        if data[0] == TLS_HANDSHAKE:
            if full:  # no handshake (the costly part) for a connection we will not serve
                log.warning(
                    "refused a TLS connection: at the connection limit",
                    extra={"event": "refused", "status": 503, "client": self._peer()},
                )
                metrics.REJECTIONS.labels(code="503").inc()
                self.transport.abort()
                return True
            self._tls_pending = True
            start_server_tls(
                self.transport,
                self,
                limits.tls,
                data,
                handshake_timeout=limits.header_timeout or None,
                on_settled=self._tls_settled,
            )
            return True
        if limits.ssl_only:
            self._refuse(400, "This server only accepts HTTPS.")
            return True
        if full:
            self._refuse(503, AT_CONNECTION_LIMIT)
            return True
        return False

    def _tls_settled(self) -> None:
        if self._tls_pending:  # the handshake failed or the client left during it
            self._tls_pending = False
            self.connection_lost(None)

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` in the SPEC's rejection form, then close the lingering way.

        Responses already owed on this connection come first (HTTP/1.1 answers in order):
        with a request still being served, the answer waits for ``on_response_complete``
        (input is read and dropped meanwhile, so the client leaving is still noticed). If
        the error is in the body of the request being read, that request will never be
        answered: it is detached (its app sees the client gone).
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        # A client's bad request is the client's problem (info); capacity is the operator's (warning).
        log.log(
            logging.WARNING if status == 503 else logging.INFO,
            "refused %d: %s",
            status,
            message,
            extra={"event": "refused", "status": status, "client": self._peer()},
        )
        metrics.REJECTIONS.labels(code=str(status)).inc()
        if self.transport.is_closing():
            return
        current = self.cycle
        if current is not None and not current.response_complete and not self._at_head:
            if current.response_started:  # the answer cannot come now: the client sees a cut response
                self.transport.abort()
                return
            self._detach_request(current)
        if self._owed():  # input is dropped meanwhile, but still read: a client leaving is seen
            self._deferred = Refusal(status, message)
            self.holding = None
            self.flow.resume_reading()
            return
        self._answer(status, message)

    def _answer(self, status: int, message: str) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        headers, cors = self.server_state.default_headers, self.limits.cors
        answer = rejection(status, message, headers, version=b"1.1", cors=cors, origin=self._origin)
        transport.write(answer)
        transport.set_protocol(LingeringClose(transport, self.connection_lost))

    def _owed(self) -> bool:
        """Whether a request on this connection still waits for (the end of) its response."""
        running = self._running
        return bool(self.pipeline) or (
            running is not None and not running.response_complete and not running.disconnected
        )

    def _detach_request(self, cycle: RequestResponseCycle) -> None:
        """``cycle`` will not be answered: its app, if it runs, sees the client gone."""
        cycle.disconnected = True
        cycle.message_event.set()
        queued = [item for item in self.pipeline if item[0] is not cycle]
        if len(queued) < len(self.pipeline):  # not started yet: it never will be
            self.pipeline.clear()
            self.pipeline.extend(queued)
            return
        self._connection_gone()

    def _connection_gone(self) -> None:
        """The client is gone: mark our ``Connection`` lost and tell a diverted body's sink."""
        conn = self._rp_connection
        if conn is not None:
            conn.set_lost()
            if conn.sink is not None:
                sink, conn.sink = conn.sink, None
                sink.lost()

    # -- hold-back, raw body --

    def on_headers_complete(self) -> None:
        if self._line_open:
            self._check_version()
        self._cancel_head_timer()
        self._head_bytes = 0
        self._start_request()
        self._at_head = False
        cycle = self.cycle
        if cycle is not None and self.scope.get("http_version") == "1.0" and not cycle.response_started:
            cycle.transport = Http10StatusLine(cycle, self.transport)
        if self._splitting and not self.pipeline and cycle is not None and not cycle.response_complete:
            self._framing = raw_body_framing(self.scope["method"], self.headers)
        if not self.parser.should_upgrade():  # (an upgrade's, even one not taken, are read again)
            # The cycle and the app have the scope and headers (~1 KiB): the connection lets go (the target too).
            self.scope, self.headers, self.url = cast("HTTPScope", None), cast("list[tuple[bytes, bytes]]", None), b""

    def start_raw_body(self, ingest: Ingest) -> None:
        """Read the held-back body straight into the ring (see ``rawbody.py``)."""
        held, framing = self.holding, self._framing
        assert held is not None and framing is not None
        self.holding = self._framing = None
        # The parser stopped at the body, which it will never see: the next request, after
        # the body, gets a fresh one (``end_raw_body``). Meanwhile the upload holds none.
        self.parser = cast("httptools.HttpRequestParser", None)
        raw = RawBody(self, ingest, framing)
        if raw.take(bytes(held)):
            return  # the whole body had already arrived
        if self._rp_connection is not None and self._rp_connection.lost.is_set():
            if not raw.failed:
                ingest.lost()
            return
        self.transport.set_protocol(raw)  # also after a framing error: the rest is dropped there, not parsed
        if raw.failed or not ingest.pending:  # else the ring is full: ``Ingest.run`` resumes once it has room
            self.flow.resume_reading()

    def end_raw_body(self, raw: RawBody, leftover: bytes) -> None:
        """The raw body ended: take the transport back; the next bytes fed make a parser
        (at a message boundary)."""
        if self.transport.get_protocol() is raw:
            self.transport.set_protocol(self)
        self._at_head, self._tail, self._head_bytes = True, b"", 0
        if self.cycle is not None:
            self.cycle.more_body = False
            self.cycle.message_event.set()
        if leftover:
            self.data_received(leftover)

    def on_response_complete(self) -> None:
        """After uvicorn's (the next request starts, or the keep-alive wait), a refusal or a
        held body comes now."""
        self._adopted = False
        held, self.holding, self._framing = self.holding, None, None
        super().on_response_complete()
        deferred = self._deferred
        if deferred is not None:
            if not self._owed():
                self._deferred = None
                self._answer(deferred.status, deferred.message)
        elif held:  # the app answered without reading the body: the parser takes it now
            self.data_received(bytes(held))

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
        self._connection_gone()

    def on_message_begin(self) -> None:
        """A request begins: uvicorn's scope, with our ``Connection`` in its extensions."""
        self._between, self._header_sum, self._line_open, self._origin = False, 0, True, None
        super().on_message_begin()
        conn = self._rp_connection
        if conn is None:  # the first request: a connection handed off before one never makes it
            conn = self._rp_connection = Connection(self.transport, self, tls=self._tls, fd=self._adopted_fd)
        cast("dict[str, Any]", self.scope)["extensions"][EXTENSION] = conn

    def on_body(self, body: bytes) -> None:
        conn = self._rp_connection
        if conn is not None and conn.sink is not None:
            conn.sink.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._at_head, self._tail, self._head_bytes = True, b"", 0
        # After ``Connection: close`` the parser drops whatever follows: it is kept for that.
        self._between = self.parser.should_keep_alive()
        conn = self._rp_connection
        if conn is not None and conn.sink is not None:
            sink, conn.sink = conn.sink, None
            sink.end()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # the WebSocket's (there may be no cycle)
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._rp_connection is not None:
            self._rp_connection.buffer_drained()
