"""A party on this worker: one sender, receiver or watcher request between its Join and its
Leave, and the inbox the owner's answers (and its client's hang-up) arrive in.

``WorkerPipes`` (``worker_pipes.py``) registers parties and delivers to them; the request's
handler is an inbox's only reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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

    A list (only while items wait) and at most one waiting future: the party's handler is its
    only reader. (An anyio memory object stream takes several objects and a task-info lookup
    per receive, for each of thousands of waiting receivers; an empty deque alone is a
    ~760-byte block, a list 56 bytes, and an inbox rarely holds more than two items.)
    """

    __slots__ = ("_closed", "_items", "_on_item", "_waiter")

    def __init__(self) -> None:
        #: Items not read yet; None when there are none (a waiting party's inbox is empty).
        self._items: list[InboxItem] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._on_item: Callable[[], None] | None = None

    def put(self, item: InboxItem) -> None:
        if not self._closed:
            if self._items is None:
                self._items = [item]
            else:
                self._items.append(item)
            waiter = self._waiter  # ``_wake``, inlined: a few items per party, thousands of parties
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self._on_item is not None:
                self._on_item()

    def ready(self) -> bool:
        """An item is waiting: the next ``__anext__`` returns without waiting."""
        return bool(self._items)

    def on_item(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` for each item put from now on, and at once if one is waiting
        (None: stop). A transfer that any item ends (a receiver's: Broken, Cancelled,
        Evicted, Hangup) watches its inbox this way instead of with a task reading it: a
        task per receiver costs a spawn, and its cancellation at the end ~50 us and a
        reference cycle of ~57 objects for the cyclic collector."""
        self._on_item = callback
        if callback is not None and self._items:
            callback()

    def close(self) -> None:
        """No more items: pending ones are dropped and iteration stops."""
        self._closed = True
        self._items = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> InboxItem:
        items = self._items
        while not items:
            if self._closed:
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            items = self._items
        item = items.pop(0)
        if not items:
            self._items = None
        return item


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
