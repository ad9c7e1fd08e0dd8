"""A party on this worker: one sender, receiver or watcher request between its Join and its
Leave, and the inbox the owner's answers (and its client's hang-up) arrive in.

``WorkerPipes`` (``worker_pipes.py``) registers parties and delivers to them; the request's
handler is an inbox's only reader.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ringpipe.core.control_frames import Frame
from ringpipe.core.rendezvous import PartyId, Role

__all__ = ["Hangup", "Inbox", "InboxItem", "LocalParty"]


@dataclass(frozen=True, slots=True)
class Hangup:
    """Local: the party's client went away."""


InboxItem = Frame | Hangup


class Inbox:
    """A party's mailbox: frames and hang-ups in arrival order, async-iterable until closed.

    A list and at most one waiting future: the party's handler is its only reader. (An anyio
    memory object stream takes several objects and a task-info lookup per receive, for each
    of thousands of waiting receivers; an empty deque alone is a ~760-byte block, a list 56
    bytes, and an inbox rarely holds more than two items.)
    """

    __slots__ = ("_closed", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[InboxItem] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def put(self, item: InboxItem) -> None:
        if not self._closed:
            self._items.append(item)
            self._wake()

    def close(self) -> None:
        """No more items: pending ones are dropped and iteration stops."""
        self._closed = True
        self._items.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> InboxItem:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


@dataclass(eq=False, slots=True)
class LocalParty:
    """One sender or receiver request on this worker, between its Join and its Leave."""

    id: PartyId
    path: str
    role: Role
    n: int
    owner: int
    inbox: Inbox = field(default_factory=Inbox, repr=False)
    left: bool = False
    joined: float = field(default_factory=time.monotonic, repr=False)

    def deliver(self, item: InboxItem) -> None:
        self.inbox.put(item)

    def hang_up(self) -> None:
        """The party's client went away (a bound method is the hang-up callback: no closure)."""
        self.inbox.put(Hangup())
