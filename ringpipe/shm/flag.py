"""``Flag``: ``asyncio.Event``'s interface at a fraction of its memory.

Every connection carries a few events (ours: lost, drained; uvicorn's: the cycle's
``message_event``, ``FlowControl``'s writable event), and a waiting receiver holds all of
them for as long as it waits. An ``asyncio.Event`` allocates an empty ``collections.deque``
up front, a 64-slot block of ~760 bytes; with thousands of waiting receivers that was the
largest single cost per connection (measured with tracemalloc: 4 of them, ~3 KiB). A
``Flag`` is two slots and a list of waiter futures only while somebody waits.

Semantics are ``asyncio.Event``'s: ``set`` wakes every current waiter (even if ``clear``
follows before they run), ``wait`` returns True at once when set, and a cancelled waiter
leaves no trace.
"""

from __future__ import annotations

import asyncio
from typing import Literal

__all__ = ["Flag"]


class Flag:
    """A set/clear flag that coroutines can wait for (drop-in for ``asyncio.Event``)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        #: Futures of the coroutines waiting now; None when there are none.
        self._waiters: list[asyncio.Future[None]] | None = None

    def __repr__(self) -> str:
        return f"<Flag {'set' if self._value else 'unset'}>"

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        if waiters is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._waiters
            if waiters is not None:
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass
                if not waiters:
                    self._waiters = None
        return True
