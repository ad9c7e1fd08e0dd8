"""Who is where: the records and indexes of one owner's pipes, and the steps that move
parties between them.

``Ledger`` holds ``pipes`` (path -> its ``Waiting`` or established ``Relay``), ``relays``
(id -> every live relay, ending ones too) and four indexes from a party to where it is:
``_waiting_of`` (its path), ``_relay_of`` (the relay it sends or reads on), ``_watching``
and ``_parked`` (the relay it watches, or waits on for a reserved slot); plus the timers and
the bytes of rings held. Its methods are the steps the machine's transitions are made of:
seat a waiting party, forget one, take a reserved slot, count a slot that is over, free a
path, release a relay. Each leaves the records and the indexes agreeing (the invariants in
``machine``'s docstring); which step runs on which event is ``machine``'s business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ringpipe.core.rendezvous.events import (
    Action,
    Cancelled,
    Detach,
    Finish,
    Join,
    Limits,
    PartyId,
    ReceiverAborted,
    ReceiverEvicted,
    Reject,
    Release,
    Resume,
    RingView,
)
from ringpipe.core.rendezvous.records import Relay, Waiting
from ringpipe.core.rendezvous.timers import Timer, TimerKind, Timers

__all__ = ["NO_SLOT", "WRONG_KEY", "Ledger", "gone"]

NO_SLOT = "No receiver slot on '{path}' is reserved for a resume."
WRONG_KEY = "This pipe needs its read key (Ringpipe-Read-Key header or ?key=)."


def gone(party: PartyId, path: str, offset: int) -> Reject:
    """The answer to a resume whose pipe is no longer there."""
    return Reject(party, 410, f"The pipe on '{path}' that offset {offset} belongs to is gone.")


def _no_ring(relay_id: int) -> RingView | None:
    return None


def _free(n: int) -> int:
    return 0


class Ledger:
    """The records and indexes of the paths one worker owns (see the module docstring).

    ``ring_view(relay_id)`` reports what a live ring holds, ``ring_cost(n)`` what a ring for
    ``n`` receivers costs against ``limits.max_memory``; the shell injects both.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        ring_view: Callable[[int], RingView | None] = _no_ring,
        ring_cost: Callable[[int], int] = _free,
    ) -> None:
        self.limits = limits or Limits()
        self.ring_view = ring_view
        self.ring_cost = ring_cost
        #: Bytes of the rings of live relays (``ring_cost``), against ``limits.max_memory``.
        self.memory = 0
        self.pipes: dict[str, Waiting | Relay] = {}
        self.relays: dict[int, Relay] = {}
        self._waiting_of: dict[PartyId, str] = {}
        self._relay_of: dict[PartyId, int] = {}
        self._watching: dict[PartyId, int] = {}
        self._parked: dict[PartyId, int] = {}
        self._timers = Timers(self._timer_live)
        self._wait_deadline: dict[PartyId, float] = {}
        self._next_relay_id = 1
        #: The owner's clock as last told (``handle``'s ``now`` or a ``Tick``); deadlines count from it.
        self.now = 0.0
        #: A ``Drain`` was seen: every later Join is refused.
        self.draining = False

    def _pipe_of(self, party: PartyId) -> Waiting | Relay | None:
        """The waiting pipe or the relay ``party`` is in (it is in one index at most); None if none."""
        path = self._waiting_of.get(party)
        if path is not None:
            return self.pipes[path]
        for relay_of in (self._relay_of, self._parked, self._watching):
            relay_id = relay_of.get(party)
            if relay_id is not None:
                return self.relays[relay_id]
        return None

    def _knows(self, party: PartyId) -> bool:
        return party in self._waiting_of or party in self._relay_of or party in self._watching or party in self._parked

    def _timer_live(self, timer: Timer) -> bool:
        """Whether ``timer`` still guards something (a compacting heap keeps only these)."""
        deadline, kind, what = timer
        if kind is TimerKind.WAIT:
            return isinstance(what, PartyId) and self._wait_deadline.get(what) == deadline
        if kind is TimerKind.PARK:
            return what in self._parked
        assert isinstance(what, tuple)
        relay = self.relays.get(what[0])
        return relay is not None and relay.reserved.get(what[1]) == deadline

    def next_deadline(self) -> float | None:
        """When the next ``Tick`` may have something to do (None: no timer pending)."""
        return self._timers.next_deadline()

    def _await(self, party: PartyId, path: str) -> None:
        """``party`` now waits on ``path``, until ``wait_timeout`` if there is one."""
        self._waiting_of[party] = path
        if self.limits.wait_timeout > 0:
            deadline = self.now + self.limits.wait_timeout
            self._wait_deadline[party] = deadline
            self._timers.push(deadline, TimerKind.WAIT, party)

    def _take_slot(self, relay: Relay, join: Join) -> list[Action]:
        """Give a reserved slot of ``relay`` to the resuming ``join`` if its offset is held
        (a resumable reader without an offset, a reloaded page, takes it from the oldest
        byte held; a reader that takes gaps takes it whatever its offset)."""
        party, path = join.party, relay.path
        view = self.ring_view(relay.relay_id)
        if view is None:
            return [gone(party, path, join.offset)]
        if join.offset >= 0 and not view.oldest <= join.offset <= view.head and not join.gaps:
            return [
                Reject(
                    party,
                    410,
                    f"Offset {join.offset} of '{path}' is no longer held (held: {view.oldest}..{view.head}).",
                )
            ]
        slot = min(relay.reserved)
        del relay.reserved[slot]
        relay.slots[party] = slot
        self._relay_of[party] = relay.relay_id
        if join.resumable:
            relay.resumable[party] = None
        return [Resume(party, relay.relay_id, slot)]

    def _unpark(self, relay: Relay) -> list[Action]:
        """Hand reserved slots to parked resumes, oldest first."""
        actions: list[Action] = []
        while relay.parked and relay.reserved:
            party = next(iter(relay.parked))
            join = relay.parked.pop(party)
            del self._parked[party]
            actions += self._take_slot(relay, join)
        return actions

    def _turn_parked_away(self, relay: Relay, cancelled: bool = False) -> list[Action]:
        actions: list[Action] = []
        for party in relay.parked:
            del self._parked[party]
            actions.append(Cancelled(party) if cancelled else Reject(party, 410, NO_SLOT.format(path=relay.path)))
        relay.parked.clear()
        return actions

    def _slot_gone(self, relay: Relay, slot: int, *, completed: bool, evicted: bool = False) -> list[Action]:
        """Reader ``slot`` of ``relay`` is over: count it, tell the sender, end the path if last."""
        actions: list[Action] = []
        if completed:
            relay.completed += 1
        else:
            if evicted:
                relay.evicted += 1
            else:
                relay.aborted += 1
                actions.append(Detach(relay.relay_id, slot))
            if relay.sender is not None and not relay.path_freed:
                actions.append(ReceiverEvicted(relay.sender) if evicted else ReceiverAborted(relay.sender))
        if not relay.slots and not relay.reserved and not relay.path_freed:
            self._free_path(relay)
            actions += self._turn_parked_away(relay)
            if relay.sender is not None:
                actions.append(Finish(relay.sender, all_aborted=relay.completed == 0))
        return actions

    def _release_if_empty(self, relay: Relay) -> list[Action]:
        if relay.sender is None and not relay.slots and not relay.reserved:
            parked = self._turn_parked_away(relay)
            del self.relays[relay.relay_id]
            self.memory -= self.ring_cost(relay.n)
            self._free_path(relay)
            for watcher in relay.watchers:
                self._watching.pop(watcher, None)
            return [
                *parked,
                Release(relay.relay_id, relay.completed, relay.aborted, relay.broken, relay.cancelled, relay.evicted),
            ]
        return []

    def _dissolve(self, parties: list[PartyId], status: int, message: str) -> list[Action]:
        """Turn ``parties`` of one waiting pipe away (watchers first, so none is orphaned)."""
        actions: list[Action] = []
        for party in parties:
            if party in self._waiting_of:
                actions += self._forget_waiting(party)
                actions.append(Reject(party, status, message) if status else Cancelled(party))
        return actions

    def _forget_waiting(self, party: PartyId) -> list[Action]:
        """Forget a waiting party; watchers left with nobody to watch are turned away."""
        path = self._waiting_of.pop(party)
        self._wait_deadline.pop(party, None)
        waiting = self.pipes[path]
        assert isinstance(waiting, Waiting)
        if waiting.sender == party:
            waiting.sender = None
            waiting.receiver_headers = ()
        elif party in waiting.watchers:
            waiting.watchers.remove(party)
        else:
            waiting.receivers.remove(party)
            if party in waiting.resumable:
                waiting.resumable.remove(party)
        actions: list[Action] = []
        if not waiting.sender and not waiting.receivers:  # watchers alone do not hold a pipe
            for watcher in waiting.watchers:
                self._waiting_of.pop(watcher, None)
                self._wait_deadline.pop(watcher, None)
                actions.append(Reject(watcher, 404, f"Nothing to watch on '{path}' any more."))
            waiting.watchers.clear()
            del self.pipes[path]
        return actions

    def _free_path(self, relay: Relay) -> None:
        if not relay.path_freed:
            relay.path_freed = True
            if self.pipes.get(relay.path) is relay:
                del self.pipes[relay.path]

    def parties_on(self, worker: int) -> Sequence[PartyId]:
        return [p for p in (*self._waiting_of, *self._relay_of, *self._watching) if p.worker == worker]
