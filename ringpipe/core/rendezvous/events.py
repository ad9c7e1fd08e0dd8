"""The rendezvous's vocabulary: who takes part, the events it is fed and the actions it returns.

Every type here is a frozen value: the owner worker decodes events from control frames (see
``core.control_frames``), hands them to ``Rendezvous.handle`` and carries out the actions.
Nothing here decides anything; ``machine`` does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

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
    "GraceOver",
    "Headers",
    "InnerEvent",
    "Join",
    "Leave",
    "Limits",
    "ParkOver",
    "PartyId",
    "Query",
    "ReceiverAborted",
    "ReceiverConnected",
    "ReceiverEvicted",
    "Reject",
    "Release",
    "Resume",
    "RingView",
    "Role",
    "Stalled",
    "StatusReply",
    "Tick",
    "TimedOut",
    "Vanished",
    "WaitOver",
    "WatcherStart",
    "WorkerGone",
]

Headers = tuple[tuple[str, str], ...]


class Role(enum.StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"
    WATCHER = "watcher"


class PartyId(NamedTuple):
    """One HTTP request taking part in a pipe: the worker slot, its pid, a per-process serial.

    The pid tells a restarted worker's parties apart from its predecessor's. A tuple: it
    keys most of the rendezvous' indexes, and a tuple hashes and compares in C (a frozen
    dataclass runs a Python ``__hash__`` for every lookup, dozens per pipe).
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
    ``gaps``: a reader that takes a gap (SSE, NDJSON; SPEC 2.4): a resume point no longer
    held, or of an older pipe on the path (another epoch), is never refused for it; the
    reader reports the lost range and reads from the oldest byte held (a raw reader gets 410).
    ``quiet``: a reader that sends nothing before its transfer starts (a raw GET, unlike an SSE
    head or a WebSocket handshake), so it need not hear that it waits (``Accepted``).
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
    gaps: bool = False
    quiet: bool = False


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


# --- events the machine makes for itself ------------------------------------------------------
# ``Tick`` and ``WorkerGone`` concern many pipes at once: the machine turns them into one of
# these per timer due or per party lost, and dispatches each on the state of its own pipe.


@dataclass(frozen=True, slots=True)
class WaitOver:
    """The ``wait_timeout`` that ``party`` got at ``deadline`` came due."""

    party: PartyId
    deadline: float


@dataclass(frozen=True, slots=True)
class GraceOver:
    """The ``reconnect_grace`` of reader ``slot`` of ``relay_id``, due at ``deadline``, is over."""

    relay_id: int
    slot: int
    deadline: float


@dataclass(frozen=True, slots=True)
class ParkOver:
    """The parked resume ``party`` waited its ``reconnect_grace`` for a slot."""

    party: PartyId


@dataclass(frozen=True, slots=True)
class Vanished:
    """``party`` was on a worker that died: it left without completing and cannot resume."""

    party: PartyId


InnerEvent = WaitOver | GraceOver | ParkOver | Vanished


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
    """This owner's share of the server's limits (``mesh.worker_pipes`` gives each owner 1/workers of them).

    ``max_memory``: bytes of rings this owner may hold at once, as counted by the
    ``ring_cost(n)`` the shell passes to ``Rendezvous``. Timeouts in seconds; 0 means none.
    """

    wait_timeout: float = 0.0
    reconnect_grace: float = 0.0
    max_pipes: int = 1 << 62
    max_watchers: int = 1 << 62
    max_memory: int = 1 << 62
