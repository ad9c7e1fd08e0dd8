"""The owner-side rendezvous: a pure state machine that decides who meets whom on a path.

- ``events``: the vocabulary: who takes part (``PartyId``, ``Role``), the events fed in and
  the actions handed back, the ``Limits``.
- ``records``: what is held about one pipe (``Waiting``, ``Relay``) and its ``PipeState``.
- ``timers``: the heap of wait, reconnect-grace and parked-resume deadlines (``TimerKind``).
- ``machine``: ``Rendezvous``, whose ``TRANSITIONS`` table dispatches every event on the
  state of the pipe it addresses; its docstring is the theory of operation.

Pure: stdlib only, no I/O, no clock (time comes in as ``now``).
"""

from __future__ import annotations

from ringpipe.core.rendezvous.events import (
    Accepted,
    Action,
    Answer,
    Break,
    Cancel,
    Cancelled,
    CancelRelay,
    Detach,
    Drain,
    Establish,
    Event,
    Evicted,
    Finish,
    Headers,
    Join,
    Leave,
    Limits,
    PartyId,
    Query,
    ReceiverAborted,
    ReceiverConnected,
    ReceiverEvicted,
    Reject,
    Release,
    Resume,
    RingView,
    Role,
    Stalled,
    StatusReply,
    Tick,
    TimedOut,
    WatcherStart,
    WorkerGone,
)
from ringpipe.core.rendezvous.machine import SHUTTING_DOWN, Rendezvous
from ringpipe.core.rendezvous.records import PipeState, Relay, Waiting, keys_match

__all__ = [
    "SHUTTING_DOWN",
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
    "Headers",
    "Join",
    "Leave",
    "Limits",
    "PartyId",
    "PipeState",
    "Query",
    "ReceiverAborted",
    "ReceiverConnected",
    "ReceiverEvicted",
    "Reject",
    "Relay",
    "Release",
    "Rendezvous",
    "Resume",
    "RingView",
    "Role",
    "Stalled",
    "StatusReply",
    "Tick",
    "TimedOut",
    "Waiting",
    "WatcherStart",
    "WorkerGone",
    "keys_match",
]
