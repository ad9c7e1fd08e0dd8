"""The owner-side rendezvous of every path a worker owns. Pure: events in, actions out.

Everything that decides who meets whom, who is refused and when a transfer is over lives in
this file (h11's ``_state.py`` rule). The owner worker feeds it events decoded from control
frames (plus ``Tick(now)`` from its clock) and carries out the actions it returns; it holds
no socket, no clock, no segment. What it needs to know about a live ring (the bytes still
held, the epoch) it asks through ``ring_view``, a plain function the shell injects.

A path is *free* (absent from ``pipes``), *waiting* (a ``Waiting``: parties registered, not
all there) or *established* (a ``Relay``: bytes flowing). Transitions:

============ =================================== ============== ==========================================
state        event                               next           actions
============ =================================== ============== ==========================================
any          Join(any), wrong read key           same           Reject(403)
free         Join(sender)                        waiting        Accepted(sender, connected=None)
free         Join(receiver)                      waiting        --
free         Join(watcher) / Join(resume, N>0)   free           Reject(404) / Reject(410)
free         Join(any), max_pipes reached        free           Reject(503)
waiting      Join(sender), none yet, n agrees    waiting|est.   Accepted(sender, connected=k); Establish?
waiting      Join(sender), sender present        waiting        Reject(400 "Another sender ...")
waiting      Join(receiver), n agrees, slot free waiting|est.   ReceiverConnected(sender)?; Establish?
waiting      Join(any), n disagrees              waiting        Reject(400 "The number of receivers ...")
waiting      Join(receiver), no slot left        waiting        Reject(400 "... reached limits.")
waiting      Join(watcher)                       waiting        -- (started with the others; 503 if full)
waiting      Leave(party)                        waiting|free   -- (the party is forgotten)
waiting      Tick past a party's wait_timeout    waiting|free   Reject(party, 408)
waiting      complete, memory budget spent       free           Reject(503) every party
established  Join(sender|fresh receiver)         established    Reject(400 "... established already."),
                                                                but a fresh resumable receiver takes a
                                                                reserved slot (a reloaded page)
established  Join(watcher)                       established    WatcherStart (503 beyond max_watchers)
established  Join(receiver, resume N)            established    Resume(slot) if a slot is reserved and N
                                                                is held; parked while a resumable
                                                                receiver is connected (its drop may not
                                                                be seen yet); else Reject(410)
established  Leave(receiver, completed)          est.|free      (last one) Finish(sender)
established  Leave(resumable receiver, aborted)  established    -- (slot reserved for reconnect_grace)
established  Tick past a reserved slot's grace   est.|free      as Leave(receiver, aborted) below
established  Leave(receiver, aborted)            est.|free      Detach(slot); ReceiverAborted(sender);
                                                                (last one) Finish(sender, all_aborted?)
established  Stalled(sender, slot)               est.|free      Evicted(reader); ReceiverEvicted(sender);
                                                                (last one) Finish(sender, all_aborted?)
established  Leave(sender, aborted mid-body)     free           Break(relay, receivers left)
waiting      Cancel                              free           Cancelled(every party); Answer(204)
established  Cancel                              free           CancelRelay(every party); Answer(204)
free         Cancel / Query                      free           Answer(404)
waiting|est. Query                               same           StatusReply
any          WorkerGone(w, pid)                  --             as Leave(aborted) for each party on it
any          Drain                               --             Reject(503) every waiting party; refuse joins
============ =================================== ============== ==========================================

A relay outlives its path: the path is freed as soon as the transfer is decided (all
receivers gone, the sender aborted, or a cancel) so a new transfer can start, while the
relay record stays until every party has left and no slot is reserved; then ``Release``
tells the shell to unlink the ring. Watchers never keep a relay alive: they read a mapping
of the ring that outlives the unlink.

Reconnect grace: a receiver that said it can resume (``Join.resumable``) and drops mid-body
keeps its slot for ``reconnect_grace`` seconds; its ring cursor keeps gating the writer
(lockstep: nothing it has not read is overwritten), and the sender's log hears nothing. A
``Join`` with ``offset`` within that time takes the slot back; at the deadline the slot is
detached exactly as if the receiver had aborted. Plain receivers keep piping-server's
immediate ``A receiver aborted.``.

Read keys: the first party that brings a key (a digest; never the secret) binds a waiting
pipe to it; a sender's key always wins over keyless waiting readers, who are then refused.
Every later party, HEAD and DELETE must bring the same digest (``hmac.compare_digest``).

Invariants:

- A party is in at most one of ``_waiting_of`` and ``_relay_of``.
- ``pipes[path]`` is either a ``Waiting`` with ``0 < parties`` or a live ``Relay``.
- Every ``Establish`` is followed, eventually, by exactly one ``Release`` of the same id.
- A reader slot of a live relay is held by exactly one of: a party (``slots``), a grace
  reservation (``reserved``), or nobody (detached, done or evicted).
"""

from __future__ import annotations

import enum
import heapq
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Accepted",
    "Action",
    "Answer",
    "Break",
    "Cancel",
    "CancelRelay",
    "Cancelled",
    "Detach",
    "Drain",
    "Establish",
    "Event",
    "Evicted",
    "Finish",
    "Join",
    "Leave",
    "Limits",
    "PartyId",
    "Query",
    "ReceiverAborted",
    "ReceiverConnected",
    "ReceiverEvicted",
    "Reject",
    "Release",
    "TimedOut",
    "Rendezvous",
    "Resume",
    "RingView",
    "Role",
    "Stalled",
    "StatusReply",
    "Tick",
    "WatcherStart",
    "WorkerGone",
]

Headers = tuple[tuple[str, str], ...]


class Role(enum.StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"
    WATCHER = "watcher"


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
    """A sender, receiver or watcher asks to take part in ``path``'s transfer of ``n`` receivers.

    ``receiver_headers`` (senders only) are the response headers every receiver will get.
    ``key``: hex sha256 of the party's read key, or ``""``. ``offset`` >= 0: a receiver
    resuming at that pipe offset (``epoch``: of the pipe it read, ``""`` if unknown).
    ``resumable``: a receiver that can resume, so its slot is reserved if it drops.
    ``stall_ms``: the party's ``?stall_timeout=`` in ms, -1 for the server's default.
    """

    party: PartyId
    path: str
    role: Role
    n: int
    receiver_headers: Headers = ()
    key: str = ""
    offset: int = -1
    epoch: str = ""
    resumable: bool = False
    stall_ms: int = -1


@dataclass(frozen=True, slots=True)
class Leave:
    """A party is gone. ``completed``: a sender published its whole body / a receiver got it all."""

    party: PartyId
    completed: bool


@dataclass(frozen=True, slots=True)
class Cancel:
    """``DELETE path`` by ``party`` (which only waits for the ``Answer``)."""

    party: PartyId
    path: str
    key: str = ""


@dataclass(frozen=True, slots=True)
class Query:
    """``HEAD path`` by ``party`` (which only waits for the ``StatusReply``/``Answer``)."""

    party: PartyId
    path: str
    key: str = ""


@dataclass(frozen=True, slots=True)
class Stalled:
    """The producer ``party`` evicted reader ``slot``: it made no progress for the stall timeout."""

    party: PartyId
    slot: int


@dataclass(frozen=True, slots=True)
class Tick:
    """The owner's clock: expire waits and reconnect graces due at ``now`` (monotonic seconds)."""

    now: float


@dataclass(frozen=True, slots=True)
class WorkerGone:
    """Worker slot ``worker`` running as ``pid`` died or its control link broke."""

    worker: int
    pid: int


@dataclass(frozen=True, slots=True)
class Drain:
    """The server is shutting down: refuse new joins, turn waiting parties away."""


Event = Join | Leave | Cancel | Query | Stalled | Tick | WorkerGone | Drain


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer ``party`` with ``status`` and ``[ERROR] <message>``; it is forgotten."""

    party: PartyId
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to a ``Cancel`` or ``Query``: ``status`` (204, 403, 404) and a message."""

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

    ``receivers[i]`` reads through reader slot ``i`` of the ring; ``watchers`` read
    without a slot. ``stall_ms``: the pipe's stall timeout (-1: the server's default).
    """

    relay_id: int
    path: str
    sender: PartyId
    receivers: tuple[PartyId, ...]
    receiver_headers: Headers
    watchers: tuple[PartyId, ...] = ()
    stall_ms: int = -1


@dataclass(frozen=True, slots=True)
class WatcherStart:
    """Start watcher ``party`` on the established relay ``relay_id``."""

    party: PartyId
    relay_id: int


@dataclass(frozen=True, slots=True)
class Resume:
    """Start ``party`` on reader ``slot`` of ``relay_id``, whose reservation it took back."""

    party: PartyId
    relay_id: int
    slot: int


@dataclass(frozen=True, slots=True)
class ReceiverAborted:
    """Tell the sender ``party`` that one receiver vanished mid-transfer."""

    party: PartyId


@dataclass(frozen=True, slots=True)
class ReceiverEvicted:
    """Tell the sender ``party`` that one receiver was evicted for making no progress."""

    party: PartyId


@dataclass(frozen=True, slots=True)
class Evicted:
    """Tell reader ``party`` it was evicted (its ending is ``lagged``)."""

    party: PartyId


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Tell ``party`` its pipe was cancelled (``DELETE``)."""

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
class CancelRelay:
    """``DELETE`` on an established pipe: mark ring ``relay_id`` cancelled, tell ``parties``."""

    relay_id: int
    parties: tuple[PartyId, ...]


@dataclass(frozen=True, slots=True)
class StatusReply:
    """The answer to a ``Query`` on a live pipe; the shell adds the ring's offset and epoch."""

    party: PartyId
    state: str
    connected: int
    n: int
    relay_id: int | None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """A waiting pipe on ``path`` lost its last party to ``wait_timeout``: it never started
    (the ``timeout`` ending of the transfers metric; nothing to clean up)."""

    path: str


@dataclass(frozen=True, slots=True)
class Release:
    """Every party of ``relay_id`` has left: the ring can be unlinked.

    ``completed``/``aborted``/``evicted`` count receivers by how they left; ``broken``: the
    sender vanished mid-body; ``cancelled``: a ``DELETE`` ended it. Together they say how
    the transfer ended, for logs and metrics.
    """

    relay_id: int
    completed: int
    aborted: int
    broken: bool
    cancelled: bool = False
    evicted: int = 0


Action = (
    Reject
    | Answer
    | Accepted
    | ReceiverConnected
    | Establish
    | WatcherStart
    | Resume
    | ReceiverAborted
    | ReceiverEvicted
    | Evicted
    | Cancelled
    | Finish
    | Detach
    | Break
    | CancelRelay
    | StatusReply
    | TimedOut
    | Release
)


@dataclass(frozen=True, slots=True)
class RingView:
    """What the shell reports about a live ring: bytes ``[oldest, head)`` are held; its epoch."""

    oldest: int
    head: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Limits:
    """This owner's share of the server's limits (see ``WorkerPipes``: each owner gets 1/workers).

    ``max_memory``: bytes of rings this owner may hold at once, as counted by the
    ``ring_cost(n)`` the shell passes to ``Rendezvous``. Timeouts in seconds; 0 means none.
    """

    wait_timeout: float = 0.0
    reconnect_grace: float = 0.0
    max_pipes: int = 1 << 62
    max_watchers: int = 1 << 62
    max_memory: int = 1 << 62


# --- state --------------------------------------------------------------------------------


@dataclass(slots=True)
class Waiting:
    path: str
    n: int
    sender: PartyId | None = None
    receiver_headers: Headers = ()
    receivers: list[PartyId] = field(default_factory=list)
    watchers: list[PartyId] = field(default_factory=list)
    key: str = ""
    stall_ms: int = -1
    #: The receivers that can resume (a list: an empty set is 216 bytes, held by every waiting pipe).
    resumable: list[PartyId] = field(default_factory=list)

    def parties(self) -> list[PartyId]:
        return ([self.sender] if self.sender else []) + self.receivers + self.watchers


@dataclass(slots=True)
class Relay:
    relay_id: int
    path: str
    n: int
    sender: PartyId | None
    slots: dict[PartyId, int]
    completed: int = 0
    aborted: int = 0
    evicted: int = 0
    broken: bool = False
    cancelled: bool = False
    path_freed: bool = False
    key: str = ""
    #: Reader slots kept for a dropped resumable receiver: slot -> grace deadline.
    reserved: dict[int, float] = field(default_factory=dict)
    resumable: set[PartyId] = field(default_factory=set)
    watchers: set[PartyId] = field(default_factory=set)
    #: Resumes that came before the old connection's drop was seen: they wait for a slot.
    parked: dict[PartyId, Join] = field(default_factory=dict)


SHUTTING_DOWN = "The server is shutting down."


def _no_ring(relay_id: int) -> RingView | None:
    return None


def _free(n: int) -> int:
    return 0


def keys_match(expected: str, given: str) -> bool:
    """Constant-time comparison of two key digests (``""``: no key)."""
    return hmac.compare_digest(expected.encode(), given.encode())


class Rendezvous:
    """The rendezvous state of all paths one worker owns."""

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
        #: (deadline, kind, party-or-(relay, slot)) for waits and reconnect graces; stale
        #: entries are skipped when they come due (cheap for thousands of waiting parties).
        self._timers: list[tuple[float, int, PartyId | tuple[int, int]]] = []
        self._wait_deadline: dict[PartyId, float] = {}
        self._compact_at = 1024
        self._next_relay_id = 1
        self.now = 0.0
        self.draining = False

    # The single entry point. Never raises for any event sequence (a stale or duplicate
    # event yields no action); the hypothesis test in tests/unit drives it at random.
    def handle(self, event: Event, now: float | None = None) -> list[Action]:
        if now is not None:
            self.now = now
        if isinstance(event, Join):
            return self._join(event)
        if isinstance(event, Leave):
            return self._leave(event.party, event.completed)
        if isinstance(event, Tick):
            self.now = event.now
            return self._expire()
        if isinstance(event, Cancel):
            return self._cancel(event)
        if isinstance(event, Query):
            return self._query(event)
        if isinstance(event, Stalled):
            return self._stalled(event)
        if isinstance(event, WorkerGone):
            gone = sorted(
                p
                for p in (*self._waiting_of, *self._relay_of, *self._watching, *self._parked)
                if (p.worker, p.pid) == (event.worker, event.pid)
            )
            actions: list[Action] = []
            for party in gone:
                actions += self._leave(party, completed=False, resumable=False)
            return actions
        return self._drain()

    def _push_timer(self, deadline: float, kind: int, what: PartyId | tuple[int, int]) -> None:
        """Add a timer. Timers of parties that left stay in the heap until due; when they
        outnumber the live ones, the heap is rebuilt (amortized O(1) per push), so a busy
        server's heap stays proportional to what is really waiting."""
        heapq.heappush(self._timers, (deadline, kind, what))
        if len(self._timers) > self._compact_at:
            self._timers = [t for t in self._timers if self._timer_live(t)]
            heapq.heapify(self._timers)
            self._compact_at = max(1024, 2 * len(self._timers))

    def _timer_live(self, timer: tuple[float, int, PartyId | tuple[int, int]]) -> bool:
        deadline, kind, what = timer
        if kind == 0:
            return isinstance(what, PartyId) and self._wait_deadline.get(what) == deadline
        if kind == 2:
            return what in self._parked
        assert isinstance(what, tuple)
        relay = self.relays.get(what[0])
        return relay is not None and relay.reserved.get(what[1]) == deadline

    def next_deadline(self) -> float | None:
        """When the next ``Tick`` may have something to do (None: no timer pending)."""
        return self._timers[0][0] if self._timers else None

    # -- joins --

    def _join(self, join: Join) -> list[Action]:
        party, path = join.party, join.path
        if party in self._waiting_of or party in self._relay_of or party in self._watching or party in self._parked:
            return []
        if self.draining:
            return [Reject(party, 503, SHUTTING_DOWN)]
        current = self.pipes.get(path)
        if isinstance(current, Relay):
            return self._join_relay(current, join)
        if join.offset > 0 or join.epoch:
            return [Reject(party, 410, f"The pipe on '{path}' that offset {max(join.offset, 0)} belongs to is gone.")]
        if current is None:
            if join.role is Role.WATCHER:
                return [Reject(party, 404, f"Nothing to watch on '{path}'.")]
            if len(self.pipes) >= self.limits.max_pipes:
                return [Reject(party, 503, "The server is at its limit of pipes; try again later.")]
            current = self.pipes[path] = Waiting(path, join.n, key=join.key, stall_ms=join.stall_ms)
            if join.role is Role.SENDER:
                return self._add_sender(current, join, connected=None)
            return self._add_receiver(current, join)
        if not keys_match(current.key, join.key):
            if join.role is Role.SENDER and join.key and not current.key and current.sender is None:
                return self._bind_sender_key(current, join)
            return [Reject(party, 403, _WRONG_KEY)]
        if join.role is Role.WATCHER:
            if len(current.watchers) >= self.limits.max_watchers:
                return [Reject(party, 503, f"'{path}' has its limit of watchers.")]
            current.watchers.append(party)
            self._await(party, path)
            return []
        if join.role is Role.SENDER and current.sender is not None:
            return [Reject(party, 400, f"Another sender has been connected on '{path}'.")]
        if join.n != current.n:
            return [Reject(party, 400, f"The number of receivers should be {current.n} but {join.n}.")]
        if join.role is Role.SENDER:
            if join.stall_ms >= 0:
                current.stall_ms = join.stall_ms
            return self._add_sender(current, join, connected=len(current.receivers))
        if len(current.receivers) >= current.n:
            return [Reject(party, 400, "The number of receivers has reached limits.")]
        return self._add_receiver(current, join)

    def _bind_sender_key(self, waiting: Waiting, join: Join) -> list[Action]:
        """A keyed sender meets keyless waiting readers: the pipe becomes private, they go."""
        actions = self._dissolve([*waiting.watchers, *waiting.receivers], 403, _WRONG_KEY)
        if waiting.path not in self.pipes:  # everyone left: the sender starts a new pipe
            waiting = self.pipes[waiting.path] = Waiting(waiting.path, join.n)
        waiting.key = join.key
        if join.n != waiting.n:
            return [*actions, Reject(join.party, 400, f"The number of receivers should be {waiting.n} but {join.n}.")]
        if join.stall_ms >= 0:
            waiting.stall_ms = join.stall_ms
        return actions + self._add_sender(waiting, join, connected=len(waiting.receivers))

    def _await(self, party: PartyId, path: str) -> None:
        self._waiting_of[party] = path
        if self.limits.wait_timeout > 0:
            deadline = self.now + self.limits.wait_timeout
            self._wait_deadline[party] = deadline
            self._push_timer(deadline, 0, party)

    def _add_sender(self, waiting: Waiting, join: Join, connected: int | None) -> list[Action]:
        waiting.sender = join.party
        waiting.receiver_headers = join.receiver_headers
        self._await(join.party, waiting.path)
        return [Accepted(join.party, waiting.n, connected), *self._establish_if_complete(waiting)]

    def _add_receiver(self, waiting: Waiting, join: Join) -> list[Action]:
        party = join.party
        if join.key and not waiting.key:
            waiting.key = join.key
        waiting.receivers.append(party)
        if join.resumable:
            waiting.resumable.append(party)  # once: a party joins once (see ``_join``)
        self._await(party, waiting.path)
        actions: list[Action] = [ReceiverConnected(waiting.sender)] if waiting.sender else []
        return actions + self._establish_if_complete(waiting)

    def _establish_if_complete(self, waiting: Waiting) -> list[Action]:
        if waiting.sender is None or len(waiting.receivers) < waiting.n:
            return []
        cost = self.ring_cost(waiting.n)
        if self.memory + cost > self.limits.max_memory:
            message = "The server is at its memory limit; try again later."
            return self._dissolve(waiting.parties()[::-1], 503, message)
        relay_id = self._next_relay_id
        self._next_relay_id += 1
        relay = Relay(
            relay_id,
            waiting.path,
            waiting.n,
            waiting.sender,
            {p: i for i, p in enumerate(waiting.receivers)},
            key=waiting.key,
            resumable=set(waiting.resumable),
            watchers=set(waiting.watchers),
        )
        self.pipes[waiting.path] = self.relays[relay_id] = relay
        self.memory += cost
        for party in waiting.parties():
            del self._waiting_of[party]
            self._wait_deadline.pop(party, None)
            if party in relay.watchers:
                self._watching[party] = relay_id
            else:
                self._relay_of[party] = relay_id
        return [
            Establish(
                relay_id,
                waiting.path,
                waiting.sender,
                tuple(waiting.receivers),
                waiting.receiver_headers,
                tuple(waiting.watchers),
                waiting.stall_ms,
            )
        ]

    def _join_relay(self, relay: Relay, join: Join) -> list[Action]:
        party, path = join.party, relay.path
        if not keys_match(relay.key, join.key):
            return [Reject(party, 403, _WRONG_KEY)]
        if join.role is Role.WATCHER:
            if len(relay.watchers) >= self.limits.max_watchers:
                return [Reject(party, 503, f"'{path}' has its limit of watchers.")]
            relay.watchers.add(party)
            self._watching[party] = relay.relay_id
            return [WatcherStart(party, relay.relay_id)]
        established = Reject(party, 400, f"Connection on '{path}' has been established already.")
        if join.role is Role.SENDER or (join.offset < 0 and not (join.resumable and relay.reserved)):
            return [established]
        view = self.ring_view(relay.relay_id)
        if view is None or (join.epoch and join.epoch != view.epoch):
            return [Reject(party, 410, f"The pipe on '{path}' that offset {join.offset} belongs to is gone.")]
        if not relay.reserved:
            if self.limits.reconnect_grace > 0 and relay.resumable & set(relay.slots):
                # A reload can arrive before its old connection's drop: wait for that slot.
                relay.parked[party] = join
                self._parked[party] = relay.relay_id
                deadline = self.now + self.limits.reconnect_grace
                self._push_timer(deadline, 2, party)
                return []
            return [Reject(party, 410, _NO_SLOT.format(path=path))]
        return self._take_slot(relay, join)

    def _take_slot(self, relay: Relay, join: Join) -> list[Action]:
        """Give a reserved slot of ``relay`` to the resuming ``join`` if its offset is held
        (a resumable reader without an offset, a reloaded page, takes it from the oldest
        byte held)."""
        party, path = join.party, relay.path
        view = self.ring_view(relay.relay_id)
        if view is None:
            return [Reject(party, 410, f"The pipe on '{path}' that offset {join.offset} belongs to is gone.")]
        if join.offset >= 0 and not view.oldest <= join.offset <= view.head:
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
            relay.resumable.add(party)
        return [Resume(party, relay.relay_id, slot)]

    # -- leaves --

    def _leave(self, party: PartyId, completed: bool, *, resumable: bool = True) -> list[Action]:
        if party in self._waiting_of:
            return self._forget_waiting(party)
        parked = self._parked.pop(party, None)
        if parked is not None:
            del self.relays[parked].parked[party]
            return []
        watched = self._watching.pop(party, None)
        if watched is not None:
            watched_relay = self.relays.get(watched)
            if watched_relay is not None:
                watched_relay.watchers.discard(party)
            return []
        relay_id = self._relay_of.pop(party, None)
        if relay_id is None:
            return []
        relay = self.relays[relay_id]
        actions: list[Action] = []
        if party == relay.sender:
            relay.sender = None
            if not completed and (relay.slots or relay.reserved) and not relay.cancelled:
                relay.broken = True
                relay.aborted += len(relay.reserved)  # dropped receivers that can no longer resume
                relay.reserved.clear()
                actions.append(Break(relay_id, tuple(relay.slots)))
                actions += self._turn_parked_away(relay)
                self._free_path(relay)
        else:
            slot = relay.slots.pop(party)
            keep = (
                resumable
                and not completed
                and party in relay.resumable
                and self.limits.reconnect_grace > 0
                and not relay.path_freed
            )
            relay.resumable.discard(party)
            if keep:
                deadline = self.now + self.limits.reconnect_grace
                relay.reserved[slot] = deadline
                self._push_timer(deadline, 1, (relay_id, slot))
                return self._unpark(relay)
            actions += self._slot_gone(relay, slot, completed=completed)
        return actions + self._release_if_empty(relay)

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
            actions.append(Cancelled(party) if cancelled else Reject(party, 410, _NO_SLOT.format(path=relay.path)))
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

    # -- timers, cancel, status, eviction --

    def _expire(self) -> list[Action]:
        actions: list[Action] = []
        while self._timers and self._timers[0][0] <= self.now:
            deadline, kind, what = heapq.heappop(self._timers)
            if kind == 0:
                assert isinstance(what, PartyId)
                if self._wait_deadline.get(what) == deadline and what in self._waiting_of:
                    path = self._waiting_of[what]
                    actions += self._forget_waiting(what)
                    seconds = f"{self.limits.wait_timeout:g}"
                    actions.append(Reject(what, 408, f"Nobody else came to '{path}' within {seconds} s."))
                    if path not in self.pipes:
                        actions.append(TimedOut(path))
            elif kind == 2:
                assert isinstance(what, PartyId)
                parked = self._parked.pop(what, None)
                if parked is not None:
                    holder = self.relays[parked]
                    del holder.parked[what]
                    actions.append(Reject(what, 410, _NO_SLOT.format(path=holder.path)))
            else:
                assert isinstance(what, tuple)
                relay_id, slot = what
                relay = self.relays.get(relay_id)
                if relay is not None and relay.reserved.get(slot) == deadline:
                    del relay.reserved[slot]
                    actions += self._slot_gone(relay, slot, completed=False)
                    actions += self._release_if_empty(relay)
        return actions

    def _find(self, path: str, key: str, party: PartyId) -> Waiting | Relay | Answer:
        current = self.pipes.get(path)
        if current is None:
            return Answer(party, 404, f"Nothing is on '{path}'.")
        if not keys_match(current.key, key):
            return Answer(party, 403, _WRONG_KEY)
        return current

    def _cancel(self, cancel: Cancel) -> list[Action]:
        current = self._find(cancel.path, cancel.key, cancel.party)
        if isinstance(current, Answer):
            return [current]
        actions: list[Action] = []
        if isinstance(current, Waiting):
            actions += self._dissolve(current.parties()[::-1], 0, "")
        else:
            current.cancelled = True
            actions += self._turn_parked_away(current, cancelled=True)
            self._free_path(current)
            for slot in list(current.reserved):
                del current.reserved[slot]
                current.aborted += 1
            parties = [p for p in (current.sender, *current.slots, *current.watchers) if p is not None]
            actions.append(CancelRelay(current.relay_id, tuple(parties)))
            actions += self._release_if_empty(current)
        return [*actions, Answer(cancel.party, 204, "")]

    def _query(self, query: Query) -> list[Action]:
        current = self._find(query.path, query.key, query.party)
        if isinstance(current, Answer):
            return [current]
        if isinstance(current, Waiting):
            return [StatusReply(query.party, "waiting", len(current.receivers), current.n, None)]
        return [StatusReply(query.party, "established", len(current.slots), current.n, current.relay_id)]

    def _stalled(self, stalled: Stalled) -> list[Action]:
        relay_id = self._relay_of.get(stalled.party)
        relay = self.relays.get(relay_id) if relay_id is not None else None
        if relay is None or relay.sender != stalled.party:
            return []
        if stalled.slot in relay.reserved:
            del relay.reserved[stalled.slot]
            return self._slot_gone(relay, stalled.slot, completed=False, evicted=True)
        reader = next((p for p, s in relay.slots.items() if s == stalled.slot), None)
        if reader is None:
            return []
        del relay.slots[reader]
        del self._relay_of[reader]
        relay.resumable.discard(reader)
        return [Evicted(reader), *self._slot_gone(relay, stalled.slot, completed=False, evicted=True)]

    def _drain(self) -> list[Action]:
        self.draining = True
        actions: list[Action] = []
        for waiting in [p for p in self.pipes.values() if isinstance(p, Waiting)]:
            actions += self._dissolve(waiting.parties()[::-1], 503, SHUTTING_DOWN)
        return actions

    # -- views for HEAD/metrics --

    def parties_on(self, worker: int) -> Sequence[PartyId]:
        return [p for p in (*self._waiting_of, *self._relay_of, *self._watching) if p.worker == worker]


_NO_SLOT = "No receiver slot on '{path}' is reserved for a resume."
_WRONG_KEY = "This pipe needs its read key (Ringpipe-Read-Key header or ?key=)."
