"""Noticing that a client hung up without reading from its socket.

uvicorn only notices a client hanging up when it reads from the socket. A waiting sender's
body must *not* be read (SPEC 1.1.1: TCP flow control holds the uploader), so uvicorn would
never see that sender leave, and its path would stay blocked. ``HangupWatcher`` asks the
kernel (``EPOLLRDHUP``) to say when a peer shuts its side down, without reading a byte: one
epoll object per worker, registered with the event loop, so a thousand waiting senders cost
nothing while they wait.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Final

__all__ = ["HangupWatcher"]

_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class HangupWatcher:
    """Calls back once when the peer of a watched socket hangs up; never reads from it."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the peer of ``fd`` hangs up; at once (soon) if the socket is
        already gone, a closed one included (``fd`` -1)."""
        if self._epoll is None:
            self._epoll = select.epoll()
            asyncio.get_running_loop().add_reader(self._epoll.fileno(), self._ready)
        try:
            self._epoll.register(fd, _HANGUP)
        except (OSError, ValueError):  # the socket is already gone (closed: its fd is -1)
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
