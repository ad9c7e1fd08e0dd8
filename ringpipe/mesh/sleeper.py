"""``Sleeper``: how one end of a relay waits for the other, on bare asyncio futures.

A side that finds nothing to do (``relay.py``) sets its *waiting* word in the ring header,
re-checks, and sleeps here; the other side wakes it after publishing. Because a wake-up can
in theory be missed (see ``segment.py``), every sleep has a timeout that backs off from
``WAIT_MIN_S`` to ``WAIT_MAX_S``: a missed wake costs latency, never a hang, and an idle
relay wakes at most once a second.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Final

__all__ = ["WAIT_MAX_S", "WAIT_MIN_S", "Sleeper"]

WAIT_MIN_S: Final = 0.1
WAIT_MAX_S: Final = 1.0
#: The context every sleeper's timeout runs in (it reads no context variable): one for all,
#: where ``call_later`` would copy the caller's for each sleep.
_TIMER_CONTEXT: Final = contextvars.Context()


class Sleeper:
    """A resettable wake-up flag with a backing-off timeout, on bare asyncio futures.

    A ``wake`` that arrives while the owner is busy is remembered, so the next ``sleep``
    returns at once. Built on one future and one timer handle per sleep: anyio's
    ``move_on_after`` + ``Event`` cost several times more per wake, and a token stream with
    16 readers sleeps and wakes thousands of times a second. Cancellation (anyio cancel
    scopes cancel the task) interrupts the await like any other.

    A sleep during which the owner's work was done for it (``progressed`` while parked: an
    express round, see ``Consumer._on_wake``) is not idle: when its timeout comes, the timer
    is armed again instead of waking the owner to find nothing to do. A caught-up reader
    whose tokens all go out from the wake-up callback thus costs one timer callback per
    timeout, not a task switch.

    ``patient``: the other side runs in this thread (a reader in its producer's worker), so
    none of its wake-ups can be missed (the waiting word is set and re-checked in program
    order); only a wake-up from another worker (the owner's cancel or break) can be lost,
    and for that ``WAIT_MAX_S`` is soon enough. Such a sleeper always waits ``WAIT_MAX_S``;
    the others start at ``WAIT_MIN_S`` after progress, so a missed wake-up costs at most
    that while bytes flow.
    """

    __slots__ = ("_base", "_progress", "_timeout", "_timer", "_woken", "future")

    def __init__(self, *, patient: bool = False) -> None:
        #: The future the owner awaits while it sleeps (``parked``), else None.
        self.future: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._base = WAIT_MAX_S if patient else WAIT_MIN_S
        self._timeout = self._base
        self._woken = False
        self._progress = False

    @property
    def parked(self) -> bool:
        """Whether the owner is inside ``sleep`` right now, waiting for a wake-up."""
        future = self.future
        return future is not None and not future.done()

    def wake(self) -> None:
        self._woken = True
        future = self.future
        if future is not None and not future.done():
            future.set_result(True)

    def progressed(self) -> None:
        self._timeout = self._base
        self._progress = True

    async def sleep(self) -> None:
        future = self.park()
        if future is None:
            return
        woken = None
        try:
            woken = await future
        finally:
            self.unpark(woken)

    def park(self) -> asyncio.Future[bool] | None:
        """``sleep`` in three steps, for an owner that awaits in its own frame (a coroutine
        less under every waiting reader): the future to await, its timeout armed (None: a
        wake-up came meanwhile, do not wait); then, whatever the await did, ``unpark`` with
        its result (None if it raised)."""
        if self._woken:
            self._woken = False
            return None
        loop = asyncio.get_running_loop()
        future = self.future = loop.create_future()
        self._progress = False
        self._timer = loop.call_later(self._timeout, self._expire, future, context=_TIMER_CONTEXT)
        return future

    def unpark(self, woken: bool | None) -> None:
        """The sleep is over: ``woken`` by a wake-up (True), at its timeout (False), or cut (None)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.future = None
        if woken is None:
            return
        self._woken = False
        if not woken:
            self._timeout = min(self._timeout * 2, WAIT_MAX_S)

    def _expire(self, future: asyncio.Future[bool]) -> None:
        if future.done():
            return
        if self._progress:  # served while parked: not idle, keep sleeping
            self._progress = False
            self._timer = asyncio.get_running_loop().call_later(
                self._base, self._expire, future, context=_TIMER_CONTEXT
            )
            return
        future.set_result(False)
