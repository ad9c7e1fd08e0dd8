"""The owner-side rendezvous of every path a worker owns. Pure: events in, actions out.

Everything that decides who meets whom, who is refused and when a transfer is over lives in
this file (h11's ``_state.py`` rule). The owner worker feeds it events decoded from control
frames and carries out the actions it returns; it holds no socket, no clock, no segment.

A path is *free* (absent from ``pipes``), *waiting* (a ``Waiting``: parties registered, not
all there) or *established* (a ``Relay``: bytes flowing). Transitions:

============ =================================== ============== ==========================================
state        event                               next           actions
============ =================================== ============== ==========================================
free         Join(sender)                        waiting        Accepted(sender, connected=None)
free         Join(receiver)                      waiting        --
waiting      Join(sender), none yet, n agrees    waiting|est.   Accepted(sender, connected=k); Establish?
waiting      Join(sender), sender present        waiting        Reject(400 "Another sender ...")
waiting      Join(receiver), n agrees, slot free waiting|est.   ReceiverConnected(sender)?; Establish?
waiting      Join(any), n disagrees              waiting        Reject(400 "The number of receivers ...")
waiting      Join(receiver), no slot left        waiting        Reject(400 "... reached limits.")
waiting      Leave(party)                        waiting|free   -- (the party is forgotten)
established  Join(any)                           established    Reject(400 "... established already.")
established  Leave(receiver, completed)          est.|free      (last one) Finish(sender)
established  Leave(receiver, aborted)            est.|free      Detach(slot); ReceiverAborted(sender);
                                                                (last one) Finish(sender, all_aborted?)
established  Leave(sender, aborted mid-body)     free           Break(relay, receivers left)
any          WorkerGone(w, pid)                  --             as Leave(aborted) for each party on it
any          Drain                               --             Reject(503) every waiting party; refuse joins
============ =================================== ============== ==========================================

A relay outlives its path: the path is freed as soon as the transfer is decided (all
receivers gone, or the sender aborted) so a new transfer can start, while the relay record
stays until every party has left; then ``Release`` tells the shell to unlink the ring.

Invariants:

- A party is in at most one of ``_waiting_of`` and ``_relay_of``.
- ``pipes[path]`` is either a ``Waiting`` with ``0 < parties`` or a live ``Relay``.
- Every ``Establish`` is followed, eventually, by exactly one ``Release`` of the same id.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Accepted",
    "Action",
    "Break",
    "Detach",
    "Drain",
    "Establish",
    "Event",
    "Finish",
    "Join",
    "Leave",
    "PartyId",
    "ReceiverAborted",
    "ReceiverConnected",
    "Reject",
    "Release",
    "Rendezvous",
    "Role",
    "WorkerGone",
]

Headers = tuple[tuple[str, str], ...]


class Role(enum.StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"


@dataclass(frozen=True, slots=True, order=True)
class PartyId:
    """One HTTP request taking part in a pipe: the worker slot, its pid, a per-process serial.

    The pid tells a restarted worker's parties apart from its predecessor's.
    """

    worker: int
    pid: int
    serial: int


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    """A sender or receiver asks to take part in ``path``'s transfer of ``n`` receivers.

    ``receiver_headers`` (senders only) are the response headers every receiver will get.
    """

    party: PartyId
    path: str
    role: Role
    n: int
    receiver_headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Leave:
    """A party is gone. ``completed``: a sender published its whole body / a receiver got it all."""

    party: PartyId
    completed: bool


@dataclass(frozen=True, slots=True)
class WorkerGone:
    """Worker slot ``worker`` running as ``pid`` died or its control link broke."""

    worker: int
    pid: int


@dataclass(frozen=True, slots=True)
class Drain:
    """The server is shutting down: refuse new joins, turn waiting parties away."""


Event = Join | Leave | WorkerGone | Drain


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer ``party`` with ``status`` and ``[ERROR] <message>``; it is forgotten."""

    party: PartyId
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """The sender may start its log: ``Waiting for n``, then ``connected`` receivers if not None."""

    party: PartyId
    n: int
    connected: int | None


@dataclass(frozen=True, slots=True)
class ReceiverConnected:
    """Tell the waiting sender ``party`` that a receiver joined."""

    party: PartyId


@dataclass(frozen=True, slots=True)
class Establish:
    """All parties are there: allocate relay ``relay_id`` and start every party.

    ``receivers[i]`` reads through reader slot ``i`` of the ring.
    """

    relay_id: int
    path: str
    sender: PartyId
    receivers: tuple[PartyId, ...]
    receiver_headers: Headers


@dataclass(frozen=True, slots=True)
class ReceiverAborted:
    """Tell the sender ``party`` that one receiver vanished mid-transfer."""

    party: PartyId


@dataclass(frozen=True, slots=True)
class Finish:
    """Every receiver of the sender ``party`` is gone: end its log (and its upload if aborted)."""

    party: PartyId
    all_aborted: bool


@dataclass(frozen=True, slots=True)
class Detach:
    """Reader ``slot`` of ``relay_id`` must no longer gate the writer."""

    relay_id: int
    slot: int


@dataclass(frozen=True, slots=True)
class Break:
    """The producer of ``relay_id`` vanished mid-body: ``parties`` must end visibly broken."""

    relay_id: int
    parties: tuple[PartyId, ...]


@dataclass(frozen=True, slots=True)
class Release:
    """Every party of ``relay_id`` has left: the ring can be unlinked.

    ``completed``/``aborted`` count receivers by how they left; ``broken``: the sender
    vanished mid-body. Together they say how the transfer ended, for logs and metrics.
    """

    relay_id: int
    completed: int
    aborted: int
    broken: bool


Action = Reject | Accepted | ReceiverConnected | Establish | ReceiverAborted | Finish | Detach | Break | Release


# --- state --------------------------------------------------------------------------------


@dataclass(slots=True)
class Waiting:
    path: str
    n: int
    sender: PartyId | None = None
    receiver_headers: Headers = ()
    receivers: list[PartyId] = field(default_factory=list)

    def parties(self) -> list[PartyId]:
        return ([self.sender] if self.sender else []) + self.receivers


@dataclass(slots=True)
class Relay:
    relay_id: int
    path: str
    n: int
    sender: PartyId | None
    slots: dict[PartyId, int]
    completed: int = 0
    aborted: int = 0
    broken: bool = False
    path_freed: bool = False


SHUTTING_DOWN = "The server is shutting down."


class Rendezvous:
    """The rendezvous state of all paths one worker owns."""

    def __init__(self) -> None:
        self.pipes: dict[str, Waiting | Relay] = {}
        self.relays: dict[int, Relay] = {}
        self._waiting_of: dict[PartyId, str] = {}
        self._relay_of: dict[PartyId, int] = {}
        self._next_relay_id = 1
        self.draining = False

    # The single entry point. Never raises for any event sequence (a stale or duplicate
    # event yields no action); the hypothesis test in tests/unit drives it at random.
    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Join):
            return self._join(event)
        if isinstance(event, Leave):
            return self._leave(event.party, event.completed)
        if isinstance(event, WorkerGone):
            gone = sorted(
                p for p in (*self._waiting_of, *self._relay_of) if (p.worker, p.pid) == (event.worker, event.pid)
            )
            actions: list[Action] = []
            for party in gone:
                actions += self._leave(party, completed=False)
            return actions
        return self._drain()

    # -- joins --

    def _join(self, join: Join) -> list[Action]:
        party, path = join.party, join.path
        if party in self._waiting_of or party in self._relay_of:
            return []
        if self.draining:
            return [Reject(party, 503, SHUTTING_DOWN)]
        current = self.pipes.get(path)
        if isinstance(current, Relay):
            return [Reject(party, 400, f"Connection on '{path}' has been established already.")]
        if current is None:
            current = self.pipes[path] = Waiting(path, join.n)
            if join.role is Role.SENDER:
                return self._add_sender(current, join, connected=None)
            return self._add_receiver(current, party)
        if join.role is Role.SENDER and current.sender is not None:
            return [Reject(party, 400, f"Another sender has been connected on '{path}'.")]
        if join.n != current.n:
            return [Reject(party, 400, f"The number of receivers should be {current.n} but {join.n}.")]
        if join.role is Role.SENDER:
            return self._add_sender(current, join, connected=len(current.receivers))
        if len(current.receivers) >= current.n:
            return [Reject(party, 400, "The number of receivers has reached limits.")]
        return self._add_receiver(current, party)

    def _add_sender(self, waiting: Waiting, join: Join, connected: int | None) -> list[Action]:
        waiting.sender = join.party
        waiting.receiver_headers = join.receiver_headers
        self._waiting_of[join.party] = waiting.path
        return [Accepted(join.party, waiting.n, connected), *self._establish_if_complete(waiting)]

    def _add_receiver(self, waiting: Waiting, party: PartyId) -> list[Action]:
        waiting.receivers.append(party)
        self._waiting_of[party] = waiting.path
        actions: list[Action] = [ReceiverConnected(waiting.sender)] if waiting.sender else []
        return actions + self._establish_if_complete(waiting)

    def _establish_if_complete(self, waiting: Waiting) -> list[Action]:
        if waiting.sender is None or len(waiting.receivers) < waiting.n:
            return []
        relay_id = self._next_relay_id
        self._next_relay_id += 1
        relay = Relay(
            relay_id, waiting.path, waiting.n, waiting.sender, {p: i for i, p in enumerate(waiting.receivers)}
        )
        self.pipes[waiting.path] = self.relays[relay_id] = relay
        for party in waiting.parties():
            del self._waiting_of[party]
            self._relay_of[party] = relay_id
        return [Establish(relay_id, waiting.path, waiting.sender, tuple(waiting.receivers), waiting.receiver_headers)]

    # -- leaves --

    def _leave(self, party: PartyId, completed: bool) -> list[Action]:
        if party in self._waiting_of:
            self._forget_waiting(party)
            return []
        relay_id = self._relay_of.pop(party, None)
        if relay_id is None:
            return []
        relay = self.relays[relay_id]
        actions: list[Action] = []
        if party == relay.sender:
            relay.sender = None
            if not completed and relay.slots:
                relay.broken = True
                actions.append(Break(relay_id, tuple(relay.slots)))
                self._free_path(relay)
        else:
            slot = relay.slots.pop(party)
            if completed:
                relay.completed += 1
            else:
                relay.aborted += 1
                actions.append(Detach(relay_id, slot))
                if relay.sender is not None and not relay.path_freed:
                    actions.append(ReceiverAborted(relay.sender))
            if not relay.slots and not relay.path_freed:
                self._free_path(relay)
                if relay.sender is not None:
                    actions.append(Finish(relay.sender, all_aborted=relay.completed == 0))
        if relay.sender is None and not relay.slots:
            del self.relays[relay_id]
            self._free_path(relay)
            actions.append(Release(relay_id, relay.completed, relay.aborted, relay.broken))
        return actions

    def _forget_waiting(self, party: PartyId) -> None:
        path = self._waiting_of.pop(party)
        waiting = self.pipes[path]
        assert isinstance(waiting, Waiting)
        if waiting.sender == party:
            waiting.sender = None
            waiting.receiver_headers = ()
        else:
            waiting.receivers.remove(party)
        if not waiting.parties():
            del self.pipes[path]

    def _free_path(self, relay: Relay) -> None:
        if not relay.path_freed:
            relay.path_freed = True
            if self.pipes.get(relay.path) is relay:
                del self.pipes[relay.path]

    def _drain(self) -> list[Action]:
        self.draining = True
        actions: list[Action] = []
        for waiting in [p for p in self.pipes.values() if isinstance(p, Waiting)]:
            for party in waiting.parties():
                self._forget_waiting(party)
                actions.append(Reject(party, 503, SHUTTING_DOWN))
        return actions

    # -- views for HEAD/metrics --

    def parties_on(self, worker: int) -> Sequence[PartyId]:
        return [p for p in (*self._waiting_of, *self._relay_of) if p.worker == worker]
