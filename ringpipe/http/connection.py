"""The connection beneath ASGI: what the pipe endpoints need that ASGI does not give them.

ASGI hides the transport, and uvicorn only notices a client hanging up when it reads from the
socket. A waiting sender's body must *not* be read (SPEC 1.1.1: TCP flow control holds the
uploader), so uvicorn would never see that sender leave, and its path would stay blocked.
``RingpipeHttpProtocol`` is uvicorn's own httptools protocol with a few additions: each
request scope carries a ``Connection`` under ``scope["extensions"]["ringpipe.connection"]``,
giving the endpoint the socket's file descriptor (for ``HangupWatcher``), a raw write (for an
immediate ``100 Continue``), ``lost`` (set when the connection is gone), ``close``, and the
relay's hot path:

- ``divert_body(sink)``: body bytes go from the parser's ``on_body`` callback straight to a
  sink (the ring), with no ASGI message, no await and no intermediate buffer. Measured on
  the 1 GiB 1→1 benchmark, uvicorn's ``receive()`` path (``cycle.body += body``, then
  ``bytes(cycle.body)``, a dict per message and an event round trip) cost more CPU than
  everything else in the sender's worker.
- ``write_parts(parts)``: a vectored ``os.writev`` of ring memory straight to the socket,
  instead of ``send()`` building ``b"".join([size, body, CRLF])`` per chunk. What the kernel
  does not take goes to the transport's buffer, and the call returns only once that buffer
  is empty again, so raw and buffered writes never interleave out of order. Over TLS
  (``Connection.tls``) the bytes go through the transport instead, to be encrypted.

The protocol is also the edge's guard (SPEC Part 4): request-head limits (400/414/431 in
the SPEC's rejection form, answered before any app code runs), the header timeout, the
connection limit, TLS on the same port, and the HTTP/1.0 status line; see the class.

``HangupWatcher`` asks the kernel (``EPOLLRDHUP``) to say when a peer shuts its side down,
without reading a byte: one epoll object per worker, registered with the event loop, so a
thousand waiting senders cost nothing while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ringpipe.core.chunked import BodyFraming
from ringpipe.http.limits import LINGER_S, TLS_HANDSHAKE, EdgeLimits, LingeringClose, rejection
from ringpipe.http.rawbody import RawBody
from ringpipe.http.tls import start_server_tls
from ringpipe.mesh.handoff import Handoff
from ringpipe.ops import metrics
from ringpipe.shm.flag import Flag

if TYPE_CHECKING:
    from collections import deque

    from ringpipe.mesh.relay import Ingest

__all__ = ["EXTENSION", "BodySink", "Connection", "HangupWatcher", "RingpipeHttpProtocol"]

log = logging.getLogger("ringpipe.connection")

EXTENSION: Final = "ringpipe.connection"
AT_CONNECTION_LIMIT: Final = "The server is at its connection limit."
_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_BLANK: Final = b"\r\n\r\n"


class BodySink(Protocol):
    """Where a diverted request body goes, straight from the HTTP parser."""

    def feed(self, body: bytes) -> None: ...

    def end(self) -> None: ...

    def lost(self) -> None: ...


class Connection:
    """One client connection, as the pipe endpoints see it."""

    __slots__ = ("_protocol", "_when_lost", "drained", "lost", "sink", "tls", "transport", "unframed")

    def __init__(self, transport: asyncio.Transport, protocol: RingpipeHttpProtocol, *, tls: bool = False) -> None:
        self.transport = transport
        #: Weak: the protocol holds this connection (and the request scope does), so a strong
        #: link back made every finished connection a reference cycle that only a full pass
        #: of the cyclic collector freed, and workers' memory crept by some KiB per stream
        #: (issue 15). The protocol lives while its transport or a running request holds it.
        self._protocol = weakref.ref(protocol)
        #: The transport encrypts (HTTPS): bytes must go through it, never straight to the socket.
        self.tls = tls
        #: The response body is unframed (HTTP/1.0 without Content-Length): it ends at close.
        self.unframed = False
        self.lost = Flag()
        #: Set while the transport's write buffer is empty (write limits are 0/0).
        self.drained = Flag(True)
        self.sink: BodySink | None = None
        self._when_lost: list[Callable[[], None]] = []

    @property
    def protocol(self) -> RingpipeHttpProtocol:
        """The connection's HTTP protocol.

        Raises:
            ConnectionResetError: it is gone (the client left and nothing serves it any more).
        """
        protocol = self._protocol()
        if protocol is None:
            raise ConnectionResetError("client connection is gone")
        return protocol

    def call_when_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection is gone (at once if it already is)."""
        if self.lost.is_set():
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._when_lost.append(callback)

    def forget_when_lost(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._when_lost.remove(callback)

    def _gone(self) -> None:
        self.lost.set()
        self.drained.set()
        callbacks, self._when_lost = self._when_lost, []
        for callback in callbacks:
            callback()

    def fileno(self) -> int:
        """The socket's descriptor, for watching it (``HangupWatcher``); never write to it
        directly when ``tls`` is set. A TLS transport names its underlying socket."""
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def write_raw(self, data: bytes) -> None:
        """Write bytes outside the ASGI response (``HTTP/1.1 100 Continue``)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    def continue_sent(self) -> None:
        """We answered ``Expect: 100-continue`` ourselves: uvicorn must not do it again."""
        cycle = self.protocol.cycle
        if cycle is not None:
            cycle.waiting_for_100_continue = False

    # -- ingest --

    def divert_body(self, ingest: Ingest) -> None:
        """Route the rest of the request body into ``ingest`` (and so into the ring).

        When the HTTP protocol held the body back at the end of the head (see
        ``RingpipeHttpProtocol``), the socket is read straight into the ring by a
        ``RawBody``; otherwise the parser's ``on_body`` feeds ``ingest``. Either way
        ``ingest`` hears ``end`` or ``lost`` exactly once.
        """
        protocol = self.protocol
        if protocol.holding is not None:
            protocol.start_raw_body(ingest)
            return
        cycle = protocol.cycle
        assert cycle is not None
        buffered = bytes(cycle.body)
        cycle.body = bytearray()
        if buffered:
            ingest.feed(buffered)
        if not cycle.more_body:
            ingest.end()
        elif self.lost.is_set():
            ingest.lost()
        else:
            self.sink = ingest
            if not ingest.pending:  # else the ring is full: ``Ingest.run`` resumes once it has room
                protocol.flow.resume_reading()

    def pause_reading(self) -> None:
        self.protocol.flow.pause_reading()

    def resume_reading(self) -> None:
        self.protocol.flow.resume_reading()

    # -- egress --

    @property
    def chunked_response(self) -> bool:
        """Whether the response head we sent frames the body in chunks."""
        cycle = self.protocol.cycle
        return bool(cycle is not None and cycle.chunked_encoding)

    def unframed_response(self) -> None:
        """Before the response head: send the body unframed, then close (HTTP/1.0 clients)."""
        cycle = self.protocol.cycle
        assert cycle is not None and not cycle.response_started
        cycle.chunked_encoding = False
        cycle.keep_alive = False
        self.unframed = True

    async def write_parts(self, parts: list[memoryview | bytes], total: int) -> None:
        """Write ``parts`` (``total`` bytes in all) in order; return once the kernel has them all.

        Raises:
            ConnectionResetError: the client is gone.
        """
        if self.lost.is_set() or self.transport.is_closing():
            raise ConnectionResetError("client connection is gone")
        if self.transport.get_write_buffer_size():
            await self._wait_drained()
        if self.tls:  # the bytes must be encrypted: the transport takes a copy
            self.transport.write(b"".join(parts))
            await self._wait_drained()
            return
        if not self._writev(parts, total):
            await self._wait_drained()

    def write_parts_now(self, parts: list[memoryview | bytes], total: int) -> bool | None:
        """``write_parts`` without waiting, for a wake-up callback (see ``readers._Express``).

        Returns None, having written nothing, when the bytes cannot go out at once without
        copying or queueing behind others (TLS, a transport backlog, a closing
        connection); else whether the kernel took them all. When it did not, the rest is
        already queued (copied) in the transport, so the caller's views may be released,
        but it must not write again before the backlog drains: the next ``write_parts``
        waits for that, and so keeps the per-reader backpressure.

        Raises:
            ConnectionResetError: the client is gone.
        """
        if not self.can_write_now():
            return None
        return self._writev(parts, total)

    def can_write_now(self) -> bool:
        """Whether ``write_parts_now`` would write (not TLS, open, no transport backlog)."""
        transport = self.transport
        return not (self.tls or self.lost.is_set() or transport.is_closing() or transport.get_write_buffer_size())

    def _writev(self, parts: list[memoryview | bytes], total: int) -> bool:
        """One ``writev``; what the kernel did not take goes, copied, to the transport.
        True when the kernel took everything."""
        try:
            written = os.writev(self.fileno(), parts)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise ConnectionResetError(str(exc)) from None
        if written < total:
            self.transport.write(_rest(parts, written))
            return False
        return True

    @property
    def body_left(self) -> int | None:
        """Bytes of a Content-Length response still to send; None for a chunked one."""
        cycle = self.protocol.cycle
        if cycle is None or cycle.chunked_encoding is not False or self.unframed:
            return None
        return int(cycle.expected_content_length)

    def account_body(self, size: int) -> None:
        """Tell uvicorn that ``size`` bytes of a Content-Length body went out by ``write_parts``."""
        cycle = self.protocol.cycle
        if cycle is not None and not cycle.chunked_encoding and not self.unframed:
            cycle.expected_content_length -= size

    async def _wait_drained(self) -> None:
        while self.transport.get_write_buffer_size():
            if self.lost.is_set():
                raise ConnectionResetError("client connection is gone")
            self.drained.clear()
            await self.drained.wait()  # set by resume_writing, or by connection_lost

    async def abort(self) -> None:
        """Drop the connection now (RST); returns once the server has seen it go.

        Waiting for ``connection_lost`` marks the request as disconnected in uvicorn, so an
        app that returns without finishing its response is not logged as a server error.
        """
        self.transport.abort()
        await self.lost.wait()

    async def close(self, *, flush_timeout: float = 1.0) -> None:
        """Close after flushing what is buffered (FIN); abort if the peer will not take it.

        The lingering way (``limits.LingeringClose``) where the socket allows it: a client
        still sending (an upload cut short by an error, or by the last receiver leaving)
        reads what we sent and then EOF, instead of a reset that can destroy that answer.
        Its input is dropped until it closes, for at most ``LINGER_S``.
        """
        transport = self.transport
        if not transport.is_closing():
            if transport.can_write_eof():
                current = transport.get_protocol()
                transport.set_protocol(LingeringClose(transport, current.connection_lost))
            else:  # TLS: its close sends close_notify, which is the end the client needs
                transport.close()
        try:
            await asyncio.wait_for(self.lost.wait(), flush_timeout + LINGER_S)
        except TimeoutError:
            transport.abort()
            await self.lost.wait()


def _rest(parts: list[memoryview | bytes], skip: int) -> bytes:
    """The bytes of ``parts`` after the first ``skip`` (a copy: it goes to the transport)."""
    out = bytearray()
    for part in parts:
        size = len(part)
        if skip >= size:
            skip -= size
            continue
        out += part[skip:]
        skip = 0
    return bytes(out)


class _Refused(Exception):
    """Raised from a parser callback: stop parsing a request head we will not serve."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RingpipeHttpProtocol(HttpToolsProtocol):
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
    parser error is a 400, and one timer per head closes a connection whose head is not
    complete within ``header_timeout``. Each refusal is answered here in the SPEC's form
    and the connection is closed the lingering way (``limits.LingeringClose``).

    TLS: with a TLS context the first byte decides (``tls.py``); after the handshake
    ``connection_made`` comes again with the TLS transport, and ``Connection.tls`` turns
    the raw socket fast paths off.

    The transport's write buffer limits are (0, 0), so ``resume_writing`` means exactly
    "nothing buffered", which ``Connection.write_parts`` waits for. uvicorn's own writes
    (status lines, logs) are small and unaffected.
    """

    #: This worker's limits; ``configured`` makes the subclass a worker serves with.
    limits: ClassVar[EdgeLimits] = EdgeLimits()
    #: How to pass a connection to its pipe's owner worker (``handoff.py``); None: never.
    handoff: ClassVar[Handoff | None] = None
    #: Bytes a peer worker read from this connection before handing it here (``adopting``).
    _replay: bytes | None = None
    #: The current request was handed here: it is served here, whoever owns its path.
    _adopted = False

    _rp_connection: Connection | None = None
    #: Body bytes read past a held-back head; None when nothing is held.
    holding: bytearray | None = None
    _framing: BodyFraming | None = None
    _at_head = True
    _splitting = False
    _tail = b""
    #: Bytes of the current request head read so far (counted while ``_at_head``).
    _head_bytes = 0
    #: Header bytes the parser reported for the current request (a backstop for heads that
    #: arrive in the same read as the previous request's body, which are not counted above).
    _header_sum = 0
    _head_timer: asyncio.TimerHandle | None = None
    #: TLS is configured and the client's first byte has not come yet.
    _sniffing = False
    #: TLS was started; the next ``connection_made`` brings the TLS transport.
    _tls_pending = False
    _refusal: _Refused | None = None
    _refused = False
    #: A refusal waiting for the responses owed before it (``_refuse``).
    _deferred: _Refused | None = None
    #: The request whose app runs now (uvicorn runs a connection's requests one at a time).
    _running: RequestResponseCycle | None = None
    url = b""

    @classmethod
    def configured(cls, limits: EdgeLimits, handoff: Handoff | None = None) -> type[RingpipeHttpProtocol]:
        """This protocol with ``limits`` and ``handoff`` (uvicorn builds protocols from a class)."""
        return type(cls.__name__, (cls,), {"limits": limits, "handoff": handoff, "__doc__": cls.__doc__})

    def adopting(self, replay: bytes) -> RingpipeHttpProtocol:
        """Make this fresh protocol serve a connection another worker handed over, starting
        with the ``replay`` bytes that worker had read (fed before anything new is read)."""
        self._replay = replay
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's deque allocates ~760 bytes up front; a list holds the (rare) pipelined requests.
        self.pipeline = cast("deque[tuple[RequestResponseCycle, Any]]", _Pipeline())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = cast("asyncio.Event", Flag(not self.flow.write_paused))
        tls = self._tls_pending
        self._tls_pending = False
        # "Paused" must mean "anything buffered": (0, 0) on a socket transport, which pauses
        # above the high mark; (1, 0) on the TLS transport, which pauses at it.
        transport.set_write_buffer_limits(high=1 if tls else 0, low=0)
        self._rp_connection = Connection(transport, self, tls=tls)
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
        if self._deferred is not None:
            return  # after a parse error, nothing the client sends is a request
        if self.holding is not None:
            self.holding += data
            self.flow.pause_reading()
            # Also the transport itself: after a hand-off, uvloop starts reading once
            # ``connection_made`` (which replayed the head and paused) has returned, so
            # ``flow`` can believe reading is paused while it is not.
            self.transport.pause_reading()
            return
        self._unset_keepalive_if_required()
        if self._sniffing:
            self._sniffing = False
            if self._sniff(data):
                return
        if self._at_head:
            if self._head_timer is None:
                self._arm_head_timer()
            end = _head_end(self._tail, data)
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
                    self._feed(data[:end])
                finally:
                    self._splitting = False
                if self._refused:
                    return
                if self._framing is not None:
                    self.holding = bytearray(data[end:])
                    self.flow.pause_reading()
                    return
                data = data[end:]
                if not data:
                    return
        self._feed(data)

    def _keep_paused(self) -> None:
        if self.flow.read_paused and not self.transport.is_closing():
            self.transport.pause_reading()

    def _hand_off(self, data: bytes, end: int) -> bool:
        """Pass this connection to the owner of its request's pipe (``handoff.py``); True if
        it is gone there. ``data`` is this read, a whole request head first (``end`` bytes).

        Only between requests (nothing running or queued on the connection), not under
        TLS (the session lives here), and not for a request handed here already.
        """
        handoff = self.handoff
        conn = self._rp_connection
        if handoff is None or conn is None or conn.tls or self._adopted or self.pipeline:
            return False
        if self._running is not None and not self._running.response_complete:
            return False
        worker = handoff.target(data[:end])
        if worker is None or not handoff.send(worker, conn.fileno(), data):
            return False
        metrics.HANDOFFS.inc()
        self._cancel_head_timer()
        self.transport.pause_reading()
        self.transport.abort()  # closes our copy only: the peer's keeps the connection open
        return True

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received`` minus its own 400: ours is the SPEC's form (``_refuse``)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:  # served as a plain request; uvicorn's two warnings per read would let clients flood the log
                log.debug("ignored an Upgrade header", extra={"client": _client(self)})
        except httptools.HttpParserError as exc:
            refusal, self._refusal = self._refusal, None
            if refusal is not None:
                self._refuse(refusal.status, refusal.message)
            else:
                self._refuse(400, f"The request is malformed: {_problem(exc)}.")

    # -- limits --

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_path_bytes:
            self._refusal = _Refused(414, f"The request target is longer than {self.limits.max_path_bytes} bytes.")
            raise self._refusal

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._header_sum += len(name) + len(value) + 4
        if self._header_sum > self.limits.max_header_bytes:
            self._refusal = _Refused(431, _head_message(self.limits))
            raise self._refusal

    def _head_too_large(self, within_limit: bytes) -> None:
        """The head passed ``max_header_bytes``: 414 if the target is what is long, else 431."""
        if within_limit:
            self._feed(within_limit)  # the target may prove too long on the way (on_url: 414)
        if not self._refused:
            self._refuse(431, _head_message(self.limits))

    def _arm_head_timer(self) -> None:
        timeout = self.limits.header_timeout
        if timeout and not self._refused:
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
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
                    extra={"event": "refused", "status": 503, "client": _client(self)},
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
            extra={"event": "refused", "status": status, "client": _client(self)},
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
            self._deferred = _Refused(status, message)
            self.holding = None
            self.flow.resume_reading()
            return
        self._answer(status, message)

    def _answer(self, status: int, message: str) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(rejection(status, message, self.server_state.default_headers, version=b"1.1"))
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
            conn._gone()
            if conn.sink is not None:
                sink, conn.sink = conn.sink, None
                sink.lost()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # -- hold-back, raw body --

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._head_bytes = 0
        super().on_headers_complete()
        self._at_head = False
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            # Just created (an upgrade leaves the previous cycle here); its task has not run
            # yet, so nothing waits on the event: a Flag costs a tenth of an asyncio.Event.
            cycle.message_event = cast("asyncio.Event", Flag())
        if cycle is not None and self.scope.get("http_version") == "1.0" and not cycle.response_started:
            cycle.transport = _Http10StatusLine(cycle, self.transport)
        if self._splitting and not self.pipeline and cycle is not None and not cycle.response_complete:
            self._framing = _sender_framing(self.scope["method"], self.headers)
        # This instance's attributes (uvicorn's ~32 and ours) outgrew the class's shared-key
        # table, and the dict that grows out of it is sized for 3x its entries (a 1.5 KiB
        # block). A copy is sized for what it holds (0.8 KiB), and a waiting receiver keeps
        # this protocol for as long as it waits. Rebinding ``__dict__`` changes no attribute.
        self.__dict__ = dict(self.__dict__)

    def start_raw_body(self, ingest: Ingest) -> None:
        """Read the held-back body straight into the ring (see ``rawbody.py``)."""
        held, framing = self.holding, self._framing
        assert held is not None and framing is not None
        self.holding = self._framing = None
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
        """The raw body ended: take the transport back, with a parser at a message boundary."""
        if self.transport.get_protocol() is raw:
            self.transport.set_protocol(self)
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.2
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._at_head, self._tail, self._head_bytes = True, b"", 0
        if self.cycle is not None:
            self.cycle.more_body = False
            self.cycle.message_event.set()
        if leftover:
            self.data_received(leftover)

    def on_response_complete(self) -> None:
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
        running = self._running
        if running is not None and not running.response_complete:
            # uvicorn marks only the last request parsed, which is not the one running when
            # a pipelined request is queued: the running app would then "forget" to answer
            # and uvicorn would try a 500 on the closed transport.
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)
        self._connection_gone()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_sum = 0
        scope = cast("dict[str, Any]", self.scope)
        scope["extensions"] = {EXTENSION: self._rp_connection}

    def on_body(self, body: bytes) -> None:
        conn = self._rp_connection
        if conn is not None and conn.sink is not None:
            conn.sink.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._at_head, self._tail, self._head_bytes = True, b"", 0
        conn = self._rp_connection
        if conn is not None and conn.sink is not None:
            sink, conn.sink = conn.sink, None
            sink.end()
        super().on_message_complete()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._rp_connection is not None:
            self._rp_connection.drained.set()


class _Pipeline(list[tuple[RequestResponseCycle, Any]]):
    """uvicorn's queue of pipelined requests (``appendleft`` in, ``pop`` out) as a list: an
    empty deque is a ~760-byte block, held by every connection, and the queue is almost
    always empty."""

    __slots__ = ()

    def appendleft(self, item: tuple[RequestResponseCycle, Any]) -> None:
        self.insert(0, item)


class _Http10StatusLine(asyncio.Transport):
    """The transport as the response cycle of an HTTP/1.0 request sees it.

    uvicorn writes ``HTTP/1.1`` in every status line; piping-server answers an HTTP/1.0
    request with ``HTTP/1.0`` (SPEC 1.1 item 6, and clients of that age may care). This
    rewrites the version of the head uvicorn writes (and of an interim ``100 Continue``),
    then hands the cycle its real transport back, so the body never passes through here.
    """

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport) -> None:
        super().__init__()
        self._cycle = cycle
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, bytes) and data.startswith(b"HTTP/1.1 "):
            if not data.startswith(b"HTTP/1.1 1"):  # the final head: step out of the way
                self._cycle.transport = self._transport
            data = b"HTTP/1.0 " + data[9:]
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def _head_message(limits: EdgeLimits) -> str:
    return f"The request head is larger than {limits.max_header_bytes} bytes."


def _problem(exc: httptools.HttpParserError) -> str:
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
        log.error("an HTTP parser callback failed", exc_info=cause)
        return "it could not be parsed"
    text = str(exc).strip().rstrip(".") or "it could not be parsed"
    return text[0].lower() + text[1:]


def _client(protocol: HttpToolsProtocol) -> str | None:
    client = protocol.client
    return None if client is None else f"{client[0]}:{client[1]}"


def _head_end(tail: bytes, data: bytes) -> int:
    """Where in ``data`` the first blank line ends (CRLF CRLF, possibly begun in ``tail``)."""
    for k in (3, 2, 1):
        if tail.endswith(_BLANK[:k]) and data.startswith(_BLANK[k:]):
            return 4 - k
    found = data.find(_BLANK)
    return -1 if found < 0 else found + 4


def _sender_framing(method: str, headers: list[tuple[bytes, bytes]]) -> BodyFraming | None:
    """The body framing of a request whose body may go straight into a ring, else None.

    Only PUT/POST with a plain ``Content-Length`` (> 0) or ``Transfer-Encoding: chunked``
    body qualify; multipart forms and other encodings take uvicorn's path.
    """
    if method not in ("PUT", "POST"):
        return None
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                return None
            chunked = True
        elif name == b"content-type" and value.lower().startswith(b"multipart/"):
            return None
        elif name == b"upgrade":
            return None
    if chunked:
        return BodyFraming(content_length=None) if length is None else None
    if length is not None and length > 0:
        return BodyFraming(content_length=length)
    return None


class HangupWatcher:
    """Calls back once when the peer of a watched socket hangs up; never reads from it."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        if self._epoll is None:
            self._epoll = select.epoll()
            asyncio.get_running_loop().add_reader(self._epoll.fileno(), self._ready)
        try:
            self._epoll.register(fd, _HANGUP)
        except OSError:  # the socket is already gone
            asyncio.get_running_loop().call_soon(callback)
            return
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None and self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed meanwhile: the kernel already forgot it
                pass

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _events in self._epoll.poll(0):
            callback = self._callbacks.get(fd)
            self.unwatch(fd)
            if callback is not None:
                callback()

    def close(self) -> None:
        if self._epoll is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            except RuntimeError:
                pass
            self._epoll.close()
            self._epoll = None
        self._callbacks.clear()
