"""The client for scripts: the same calls as ``ringpipe.client``, blocking.

Each call runs the async one on an event loop of its own (``anyio.run``), so it cannot be
called from inside a running event loop (use the async API there). ``receive`` and
``watch`` return an iterator that keeps one loop running in a helper thread until it ends
or is closed (``with``, ``close()``)::

    from ringpipe.client import sync

    sync.send("http://localhost:8080/p", b"hello")
    with sync.receive("http://localhost:8080/p") as chunks:
        for chunk in chunks:
            print(chunk.data)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.from_thread

from ringpipe.client import reading, sending, transport
from ringpipe.client.wire import Chunk

__all__ = ["SyncReceiver", "cancel", "receive", "send", "status", "watch"]


P = ParamSpec("P")
T = TypeVar("T")


def _blocking(call: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """``call`` run to completion on an event loop of its own; same signature, blocking."""

    @functools.wraps(call)
    def blocking(*args: P.args, **kwargs: P.kwargs) -> T:
        return anyio.run(functools.partial(call, *args, **kwargs))

    return blocking


send = _blocking(sending.send)
status = _blocking(transport.status)
cancel = _blocking(transport.cancel)


class SyncReceiver(Iterator[Chunk]):
    """A ``Receiver`` driven from a blocking thread: ``for chunk in ...``; ``close()`` or
    ``with`` when leaving early. ``offset``, ``epoch`` and ``reconnects`` read through."""

    def __init__(self, make: Callable[[], reading.Receiver]) -> None:
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] = (
            anyio.from_thread.start_blocking_portal()
        )
        self._portal = self._portal_cm.__enter__()
        self._receiver = make()
        self._closed = False

    @property
    def offset(self) -> int:
        return self._receiver.offset

    @property
    def epoch(self) -> str:
        return self._receiver.epoch

    @property
    def reconnects(self) -> int:
        return self._receiver.reconnects

    def __next__(self) -> Chunk:
        if self._closed:
            raise StopIteration

        async def step() -> Chunk:
            return await self._receiver.__anext__()

        try:
            return self._portal.call(step)
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._receiver.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> SyncReceiver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _iterating(make: Callable[P, reading.Receiver]) -> Callable[P, SyncReceiver]:
    """``make``'s receiver as a blocking iterator; same signature."""

    @functools.wraps(make)
    def iterating(*args: P.args, **kwargs: P.kwargs) -> SyncReceiver:
        return SyncReceiver(functools.partial(make, *args, **kwargs))

    return iterating


receive = _iterating(reading.receive)
watch = _iterating(reading.watch)
