"""The connection beneath ASGI: what the pipe endpoints need that ASGI does not give them.

ASGI hides the transport. Each request scope carries a ``Connection`` under
``scope["extensions"]["ringpipe.connection"]`` (``EXTENSION``), put there by the HTTP
protocol (``protocol.RingpipeHttpProtocol``), giving the endpoint the socket's file
descriptor (for ``hangup.HangupWatcher``), a raw write (for an immediate ``100 Continue``),
``lost`` (set when the connection is gone), ``close``, and the relay's hot path:

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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

from ringpipe.http.limits import LINGER_S, LingeringClose
from ringpipe.shm.flag import Flag

if TYPE_CHECKING:
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from ringpipe.mesh.ingest import Ingest

__all__ = ["EXTENSION", "BodySink", "Buffer", "Connection", "HttpProtocol"]

EXTENSION: Final = "ringpipe.connection"

#: One part of a ``writev``: ring views, a producer's own read buffer, framing bytes.
Buffer: TypeAlias = bytes | bytearray | memoryview


class HttpProtocol(Protocol):
    """What a ``Connection`` drives in the HTTP protocol that serves it.

    That is ``protocol.RingpipeHttpProtocol``, named here by its shape: it builds the
    ``Connection``, so this module cannot import it.
    """

    @property
    def cycle(self) -> RequestResponseCycle | None: ...

    @property
    def holding(self) -> bytearray | None: ...

    @property
    def flow(self) -> FlowControl: ...

    def start_raw_body(self, ingest: Ingest) -> None: ...


class BodySink(Protocol):
    """Where a diverted request body goes, straight from the HTTP parser."""

    def feed(self, body: bytes) -> None: ...

    def end(self) -> None: ...

    def lost(self) -> None: ...


class Connection:
    """One client connection, as the pipe endpoints see it."""

    __slots__ = (
        "_fd",
        "_protocol",
        "_drained",
        "_via_transport",
        "_when_lost",
        "lost",
        "sink",
        "tls",
        "transport",
        "unframed",
    )

    def __init__(
        self, transport: asyncio.Transport, protocol: HttpProtocol, *, tls: bool = False, fd: int | None = None
    ) -> None:
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
        #: ``tls or lost``, as one plain attribute: ``write_parts_now`` asks it per token.
        self._via_transport = tls
        #: Set while the transport's write buffer is empty (write limits are 0/0): made by the
        #: first wait for that (``_wait_drained``; most connections never wait), None until then.
        self._drained: Flag | None = None
        self.sink: BodySink | None = None
        #: Called once the connection is gone (a list only once somebody asks: most never do).
        self._when_lost: list[Callable[[], None]] | None = None
        #: The socket's descriptor, looked up once (see ``fileno``) unless the caller knows it.
        self._fd = fd

    @property
    def protocol(self) -> HttpProtocol:
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
        elif self._when_lost is None:
            self._when_lost = [callback]
        else:
            self._when_lost.append(callback)

    def forget_when_lost(self, callback: Callable[[], None]) -> None:
        if self._when_lost is not None:
            with contextlib.suppress(ValueError):
                self._when_lost.remove(callback)

    def set_lost(self) -> None:
        """The HTTP protocol saw the connection go: wake everything waiting on it."""
        self.lost.set()
        self._via_transport = True
        self.buffer_drained()
        callbacks, self._when_lost = self._when_lost, None
        for callback in callbacks or ():
            callback()

    def buffer_drained(self) -> None:
        """The transport's write buffer is empty again (the protocol's ``resume_writing``)."""
        if self._drained is not None:
            self._drained.set()

    def fileno(self) -> int:
        """The socket's descriptor, for watching it (``hangup.HangupWatcher``); never write to it
        directly when ``tls`` is set. A TLS transport names its underlying socket.

        Looked up once: a transport keeps its socket for life. The number may name another
        socket once the transport has closed it, so a write checks ``is_closing`` first.
        """
        fd = self._fd
        if fd is None:
            sock = self.transport.get_extra_info("socket")
            fd = self._fd = -1 if sock is None else int(sock.fileno())
        return fd

    def write_raw(self, data: bytes) -> None:
        """Write bytes outside the ASGI response (``HTTP/1.1 100 Continue``)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    def unstarted_cycle(self) -> RequestResponseCycle | None:
        """The response cycle of the request being served, while the client is here and its
        response has not started (what a caller may gather or hold the head of); else None."""
        if self.lost.is_set():
            return None
        protocol = self._protocol()
        cycle = None if protocol is None else protocol.cycle
        return None if cycle is None or cycle.response_started else cycle

    def continue_sent(self) -> None:
        """We answered ``Expect: 100-continue`` ourselves: uvicorn must not do it again."""
        cycle = self.protocol.cycle
        if cycle is not None:
            cycle.waiting_for_100_continue = False

    # -- ingest --

    def divert_body(self, ingest: Ingest) -> None:
        """Route the rest of the request body into ``ingest`` (and so into the ring).

        When the HTTP protocol held the body back at the end of the head (see
        ``protocol.RingpipeHttpProtocol``), the socket is read straight into the ring by a
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

    async def write_parts(self, parts: Sequence[Buffer], total: int) -> None:
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
        sent = self.write_parts_now(parts, total)
        if sent is None:  # gone or closing while we waited: its descriptor may be another socket's
            raise ConnectionResetError("client connection is closing")
        if not sent:
            await self._wait_drained()

    def write_parts_now(self, parts: Sequence[Buffer], total: int) -> bool | None:
        """``write_parts`` without waiting, for a reader that writes from its wake-up callback.

        Returns None, having written nothing, when the bytes cannot go out at once without
        copying or queueing behind others (TLS, a transport backlog, a closing
        connection); else whether the kernel took them all. When it did not, the rest is
        already queued (copied) in the transport, so the caller's views may be released,
        but it must not write again before the backlog drains: the next ``write_parts``
        waits for that, and so keeps the per-reader backpressure.

        Raises:
            ConnectionResetError: the client is gone.
        """
        transport = self.transport  # ``can_write_now``, inlined: this runs per token
        if self._via_transport or transport.is_closing() or transport.get_write_buffer_size():
            return None
        # One ``writev``; what the kernel did not take goes, copied, to the transport. The
        # transport is not closing (checked just above): the descriptor is still this socket's.
        fd = self._fd
        try:
            written = os.writev(self.fileno() if fd is None else fd, parts)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise ConnectionResetError(str(exc)) from None
        if written < total:
            transport.write(_rest(parts, written))
            return False
        return True

    def can_write_now(self) -> bool:
        """Whether ``write_parts_now`` would write (not TLS, open, no transport backlog)."""
        transport = self.transport
        return not (self._via_transport or transport.is_closing() or transport.get_write_buffer_size())

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
            drained = self._drained
            if drained is None:
                drained = self._drained = Flag()
            else:
                drained.clear()
            await drained.wait()  # set by ``buffer_drained`` (resume_writing), or by connection_lost

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


def _rest(parts: Sequence[Buffer], skip: int) -> bytes:
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
