"""The connection beneath ASGI: what the pipe endpoints need that ASGI does not give them.

ASGI hides the transport, and uvicorn only notices a client hanging up when it reads from the
socket. A waiting sender's body must *not* be read (SPEC 1.1.1: TCP flow control holds the
uploader), so uvicorn would never see that sender leave, and its path would stay blocked.
``RingpipeHttpProtocol`` is uvicorn's own httptools protocol with one addition: each request
scope carries a ``Connection`` under ``scope["extensions"]["ringpipe.connection"]``, giving
the endpoint the socket's file descriptor (for ``HangupWatcher``), a raw write (for an
immediate ``100 Continue``), ``lost`` (set when the connection is gone) and ``close``.

``HangupWatcher`` asks the kernel (``EPOLLRDHUP``) to say when a peer shuts its side down,
without reading a byte: one epoll object per worker, registered with the event loop, so a
thousand waiting senders cost nothing while they wait.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any, Final, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["EXTENSION", "Connection", "HangupWatcher", "RingpipeHttpProtocol"]

EXTENSION: Final = "ringpipe.connection"
_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class Connection:
    """One client connection, as the pipe endpoints see it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.lost = asyncio.Event()

    def fileno(self) -> int:
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def write_raw(self, data: bytes) -> None:
        """Write bytes outside the ASGI response (``HTTP/1.1 100 Continue``)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    async def abort(self) -> None:
        """Drop the connection now (RST); returns once the server has seen it go.

        Waiting for ``connection_lost`` marks the request as disconnected in uvicorn, so an
        app that returns without finishing its response is not logged as a server error.
        """
        self.transport.abort()
        await self.lost.wait()

    async def close(self, *, flush_timeout: float = 1.0) -> None:
        """Close after flushing what is buffered (FIN); abort if the peer will not take it."""
        if not self.transport.is_closing():
            self.transport.close()
        try:
            await asyncio.wait_for(self.lost.wait(), flush_timeout)
        except TimeoutError:
            self.transport.abort()
            await self.lost.wait()


class RingpipeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, exposing a ``Connection`` to the app through the scope."""

    _rp_connection: Connection | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._rp_connection = Connection(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._rp_connection is not None:
            self._rp_connection.lost.set()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope = cast("dict[str, Any]", self.scope)
        scope["extensions"] = {EXTENSION: self._rp_connection}


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
