"""The owner-side rendezvous of every path a worker owns: events in, actions out.

Everything that decides who meets whom, who is refused and when a transfer is over lives in
this module and the ``ledger`` it builds on (h11's ``_state.py`` rule). The owner worker
feeds ``Rendezvous.handle`` the events it decodes from control frames, plus ``Tick(now)``
from its clock, and carries out the actions it gets back. The machine holds no socket, no
clock and no segment: it asks about a live ring (the bytes still held, its epoch) through
``ring_view`` and about a ring's size through ``ring_cost``, plain functions the shell
injects.

Theory of operation. ``Ledger`` records who is where; ``Rendezvous`` adds the decisions. Every
event is addressed to one pipe: a Join, Cancel or Query to the pipe on its path; a Leave,
Stalled, WaitOver, ParkOver or Vanished to the pipe its party is in; a GraceOver to its relay.
``handle`` finds that pipe, takes its ``PipeState`` and runs
``TRANSITIONS[state, type(event)]``: a handler, or ``Ignored(why)`` for a pair that changes
nothing. That table, at the end of this module, is the one place that lists which code runs
when; it is total (a test walks it). Three events concern many pipes and are fanned out first:
``Tick`` becomes one WaitOver, GraceOver or ParkOver per live timer due (``TimerKind``; a stale
one, whose party or slot moved on, is dropped), ``WorkerGone`` one ``Vanished`` per party on
that worker, and ``Drain`` goes to every pipe on a path, then ends every grace reservation (one
``GraceOver`` each, due now: a draining server refuses the Join that would take the slot back,
so waiting out the grace would only hold the drain up). Two checks hold in every state and run
before a Join is dispatched: a party joins once (a repeated Join is ignored), and a draining
server refuses joins (503).

What the handlers do (rows in the order their conditions are checked; "est." established):

=========== ================================== ========== =============================================
state       event                              next       actions
=========== ================================== ========== =============================================
free        Join(resume: offset > 0 or epoch)  free       Reject(410); a resume that takes gaps
                                                          joins as a fresh party (rows below)
free        Join(watcher)                      free       Reject(404)
free        Join, max_pipes reached            free       Reject(503)
free        Join(sender) / Join(receiver)      waiting    Accepted(sender, connected=None) / --
free        Cancel / Query                     free       Answer(404)
waiting     Join(resume: offset > 0 or epoch)  waiting    Reject(410); a resume that takes gaps
                                                          joins as a fresh party (rows below)
waiting     Join, wrong read key               waiting    Reject(403), but a keyed sender meeting
                                                          keyless readers binds its key and
                                                          turns them away (403)
waiting     Join(watcher)                      waiting    -- (started with the others; 503 if full)
waiting     Join(sender), sender present       waiting    Reject(400 "Another sender ...")
waiting     Join, n disagrees                  waiting    Reject(400 "The number of receivers ...")
waiting     Join(sender)                       wait.|est. Accepted(sender, connected=k); Establish?
waiting     Join(receiver), no slot left       waiting    Reject(400 "... reached limits.")
waiting     Join(receiver)                     wait.|est. ReceiverConnected(sender)?; Establish?
waiting     (complete, memory budget spent)    free       Reject(503) every party
waiting     Leave / Vanished                   wait.|free -- (forgotten; watchers left alone: 404)
waiting     WaitOver                           wait.|free Reject(party, 408); TimedOut if last
waiting     Cancel / Query, wrong read key     waiting    Answer(403)
waiting     Cancel / Query                     free / =   Cancelled(all); Answer(204) / StatusReply
waiting     Drain                              free       Reject(503) every party
est.        Join, wrong read key               est.       Reject(403)
est.        Join(watcher)                      est.       WatcherStart (503 beyond max_watchers)
est.        Join(sender or fresh receiver)     est.       Reject(400 "... established already."),
                                                          but a fresh resumable receiver takes a
                                                          reserved slot (a reloaded page)
est.        Join(receiver, resume N)           est.       Resume(slot) if a slot is reserved and N
                                                          is held; parked while a resumable
                                                          receiver is connected (its drop may not
                                                          be seen yet); else Reject(410); a
                                                          resume that takes gaps takes the slot
                                                          whatever its epoch and N (the reader
                                                          reports the gap)
est.|ending Leave(receiver, completed)         est.|end.  (last one) Finish(sender)
est.        Leave(resumable receiver, aborted) est.       -- (slot reserved for reconnect_grace,
                                                          unless draining: then as below)
est.|ending Leave(receiver, aborted)/Vanished  est.|end.  Detach(slot); ReceiverAborted(sender) if
                                                          est.; (last one) Finish(sender, all_aborted?)
est.        GraceOver                          est.|end.  as Leave(receiver, aborted)
est.        ParkOver                           est.       Reject(parked, 410)
est.|ending Stalled(sender, slot)              est.|end.  Evicted(reader); ReceiverEvicted(sender) if
                                                          est.; (last one) Finish(sender, all_aborted?)
est.|ending Leave(sender, aborted mid-body)    ending     Break(relay, receivers left)
est.|ending Leave(the relay's last party)      free       Release(relay, counts)
est.        Cancel / Query, wrong read key     est.       Answer(403)
est.        Cancel / Query                     end. / =   CancelRelay(all); Answer(204) / StatusReply
=========== ================================== ========== =============================================

An ending relay outlives its path: the path is freed as soon as the transfer is decided (all
receivers gone, the sender aborted, or a cancel) so a new transfer can start on it, while the
relay stays until every party has left and no slot is reserved; then ``Release`` tells the
shell to unlink the ring. Watchers never keep a relay alive: they read a mapping of the ring
that outlives the unlink.

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

- A party is in at most one of ``_waiting_of``, ``_relay_of``, ``_watching`` and ``_parked``;
  each of the last three names a live relay.
- ``pipes[path]`` is either a ``Waiting`` with ``0 < parties`` or an established ``Relay``.
- Every ``Establish`` is followed, eventually, by exactly one ``Release`` of the same id.
- A reader slot of a live relay is held by exactly one of: a party (``slots``), a grace
  reservation (``reserved``), or nobody (detached, done or evicted).
- Only an established relay has reserved slots or parked resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ringpipe.core.rendezvous.events import (
    Accepted,
    Action,
    Answer,
    Break,
    Cancel,
    CancelRelay,
    Drain,
    Establish,
    Event,
    Evicted,
    GraceOver,
    InnerEvent,
    Join,
    Leave,
    ParkOver,
    PartyId,
    Query,
    ReceiverConnected,
    Reject,
    Role,
    Stalled,
    StatusReply,
    Tick,
    TimedOut,
    Vanished,
    WaitOver,
    WatcherStart,
    WorkerGone,
)
from ringpipe.core.rendezvous.ledger import NO_SLOT, WRONG_KEY, Ledger, gone
from ringpipe.core.rendezvous.records import PipeState, Relay, Waiting, keys_match
from ringpipe.core.rendezvous.timers import TimerKind

__all__ = ["SHUTTING_DOWN", "TRANSITIONS", "Addressed", "Ignored", "Rendezvous"]

SHUTTING_DOWN = "The server is shutting down."

#: The events dispatched on the state of one pipe (``Tick`` and ``WorkerGone`` are fanned out first).
Addressed = Join | Leave | Cancel | Query | Stalled | Drain | InnerEvent


@dataclass(frozen=True, slots=True)
class Ignored:
    """A (state, event) pair that changes nothing and yields no action; ``why`` says why.
    Called like a handler, it returns no action (so ``_fire`` needs no type check)."""

    why: str

    def __call__(self, rendezvous: Rendezvous, pipe: object, event: object) -> list[Action]:
        return []


class Rendezvous(Ledger):
    """The rendezvous of all paths one worker owns: ``handle`` runs each event's transition."""

    # -- dispatch --

    def handle(self, event: Event, now: float | None = None) -> list[Action]:
        """The single entry point. Never raises for any event sequence (a stale or duplicate
        event yields no action); the hypothesis tests in tests/unit drive it at random."""
        if now is not None:
            self.now = now
        return _ROUTES[type(event)](self, event)

    def _join(self, join: Join) -> list[Action]:
        """The two checks of every state (see the module docstring), then the transition."""
        if self._knows(join.party):
            return []
        if self.draining:
            return [Reject(join.party, 503, SHUTTING_DOWN)]
        return self._fire(self.pipes.get(join.path), join)

    def _tick(self, tick: Tick) -> list[Action]:
        self.now = tick.now
        return self._expire()

    def _worker_gone(self, event: WorkerGone) -> list[Action]:
        lost = sorted(
            p
            for p in (*self._waiting_of, *self._relay_of, *self._watching, *self._parked)
            if (p.worker, p.pid) == (event.worker, event.pid)
        )
        return [action for party in lost for action in self._dispatch(Vanished(party))]

    def _drain(self, drain: Drain) -> list[Action]:
        self.draining = True
        actions = [action for pipe in list(self.pipes.values()) for action in self._fire(pipe, drain)]
        reservations = [(r.relay_id, slot, due) for r in self.relays.values() for slot, due in r.reserved.items()]
        for relay_id, slot, due in reservations:
            actions += self._dispatch(GraceOver(relay_id, slot, due))
        return actions

    def _dispatch(self, event: Join | Leave | Cancel | Query | Stalled | InnerEvent) -> list[Action]:
        """Run ``event`` on the pipe it is addressed to (see the module docstring)."""
        return _ROUTES[type(event)](self, event)

    def _on_path(self, event: Cancel | Query) -> list[Action]:
        return self._fire(self.pipes.get(event.path), event)

    def _on_party(self, event: Leave | Stalled | WaitOver | ParkOver | Vanished) -> list[Action]:
        return self._fire(self._pipe_of(event.party), event)

    def _on_relay(self, event: GraceOver) -> list[Action]:
        return self._fire(self.relays.get(event.relay_id), event)

    def _fire(self, pipe: Waiting | Relay | None, event: Addressed) -> list[Action]:
        return TRANSITIONS[FREE if pipe is None else pipe.state, type(event)](self, pipe, event)

    # -- timers --

    def _expire(self) -> list[Action]:
        actions: list[Action] = []
        while (timer := self._timers.pop_due(self.now)) is not None:
            if not self._timer_live(timer):
                continue  # what it guarded is gone: the table would ignore it
            deadline, kind, what = timer
            event: WaitOver | GraceOver | ParkOver
            if kind is TimerKind.GRACE:
                assert isinstance(what, tuple)
                event = GraceOver(what[0], what[1], deadline)
            else:
                assert isinstance(what, PartyId)
                event = WaitOver(what, deadline) if kind is TimerKind.WAIT else ParkOver(what)
            actions += self._dispatch(event)
        return actions

    def _wait_over(self, waiting: Waiting, over: WaitOver) -> list[Action]:
        party, path = over.party, waiting.path
        if self._wait_deadline.get(party) != over.deadline:
            return []
        actions = self._forget_waiting(party)
        seconds = f"{self.limits.wait_timeout:g}"
        actions.append(Reject(party, 408, f"Nobody else came to '{path}' within {seconds} s."))
        if path not in self.pipes:
            actions.append(TimedOut(path))
        return actions

    def _park_over(self, relay: Relay, over: ParkOver) -> list[Action]:
        if self._parked.pop(over.party, None) is None:
            return []
        del relay.parked[over.party]
        return [Reject(over.party, 410, NO_SLOT.format(path=relay.path))]

    def _grace_over(self, relay: Relay, over: GraceOver) -> list[Action]:
        if relay.reserved.get(over.slot) != over.deadline:
            return []
        del relay.reserved[over.slot]
        return self._slot_gone(relay, over.slot, completed=False) + self._release_if_empty(relay)

    # -- joins --

    def _open(self, pipe: None, join: Join) -> list[Action]:
        """A join on a free path opens a waiting pipe there, unless it cannot start one."""
        party, path = join.party, join.path
        if (join.offset > 0 or join.epoch) and not join.gaps:
            return [gone(party, path, max(join.offset, 0))]
        if join.role is Role.WATCHER:
            return [Reject(party, 404, f"Nothing to watch on '{path}'.")]
        if len(self.pipes) >= self.limits.max_pipes:
            return [Reject(party, 503, "The server is at its limit of pipes; try again later.")]
        waiting = self.pipes[path] = Waiting(path, join.n, key=join.key, stall_ms=join.stall_ms)
        if join.role is Role.SENDER:
            return self._add_sender(waiting, join, connected=None)
        return self._add_receiver(waiting, join)

    def _join_waiting(self, waiting: Waiting, join: Join) -> list[Action]:
        party, path = join.party, waiting.path
        if (join.offset > 0 or join.epoch) and not join.gaps:
            return [gone(party, path, max(join.offset, 0))]
        if not keys_match(waiting.key, join.key):
            if join.role is Role.SENDER and join.key and not waiting.key and waiting.sender is None:
                return self._bind_sender_key(waiting, join)
            return [Reject(party, 403, WRONG_KEY)]
        if join.role is Role.WATCHER:
            if len(waiting.watchers) >= self.limits.max_watchers:
                return [Reject(party, 503, f"'{path}' has its limit of watchers.")]
            waiting.watchers.append(party)
            self._await(party, path)
            return []
        if join.role is Role.SENDER and waiting.sender is not None:
            return [Reject(party, 400, f"Another sender has been connected on '{path}'.")]
        if join.n != waiting.n:
            return [Reject(party, 400, f"The number of receivers should be {waiting.n} but {join.n}.")]
        if join.role is Role.SENDER:
            if join.stall_ms >= 0:
                waiting.stall_ms = join.stall_ms
            return self._add_sender(waiting, join, connected=len(waiting.receivers))
        if len(waiting.receivers) >= waiting.n:
            return [Reject(party, 400, "The number of receivers has reached limits.")]
        return self._add_receiver(waiting, join)

    def _bind_sender_key(self, waiting: Waiting, join: Join) -> list[Action]:
        """A keyed sender meets keyless waiting readers: the pipe becomes private, they go."""
        actions = self._dissolve([*waiting.watchers, *waiting.receivers], 403, WRONG_KEY)
        if waiting.path not in self.pipes:  # everyone left: the sender starts a new pipe
            waiting = self.pipes[waiting.path] = Waiting(waiting.path, join.n)
        waiting.key = join.key
        if join.n != waiting.n:
            return [*actions, Reject(join.party, 400, f"The number of receivers should be {waiting.n} but {join.n}.")]
        if join.stall_ms >= 0:
            waiting.stall_ms = join.stall_ms
        return actions + self._add_sender(waiting, join, connected=len(waiting.receivers))

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
            waiting.resumable.append(party)  # once: a party joins once (see ``handle``)
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
            resumable=dict.fromkeys(waiting.resumable),
            watchers=dict.fromkeys(waiting.watchers),
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
            return [Reject(party, 403, WRONG_KEY)]
        if join.role is Role.WATCHER:
            if len(relay.watchers) >= self.limits.max_watchers:
                return [Reject(party, 503, f"'{path}' has its limit of watchers.")]
            relay.watchers[party] = None
            self._watching[party] = relay.relay_id
            return [WatcherStart(party, relay.relay_id)]
        established = Reject(party, 400, f"Connection on '{path}' has been established already.")
        if join.role is Role.SENDER or (join.offset < 0 and not (join.resumable and relay.reserved)):
            return [established]
        view = self.ring_view(relay.relay_id)
        if view is None or (join.epoch and join.epoch != view.epoch and not join.gaps):
            return [gone(party, path, join.offset)]
        if not relay.reserved:
            if self.limits.reconnect_grace > 0 and relay.resumable.keys() & relay.slots.keys():
                # A reload can arrive before its old connection's drop: wait for that slot.
                relay.parked[party] = join
                self._parked[party] = relay.relay_id
                self._timers.push(self.now + self.limits.reconnect_grace, TimerKind.PARK, party)
                return []
            return [Reject(party, 410, NO_SLOT.format(path=path))]
        return self._take_slot(relay, join)

    # -- leaves --

    def _leave_waiting(self, waiting: Waiting, leave: Leave | Vanished) -> list[Action]:
        return self._forget_waiting(leave.party)

    def _leave_relay(self, relay: Relay, leave: Leave | Vanished) -> list[Action]:
        """A party of ``relay`` left: a parked resume or a watcher is just forgotten; the
        sender may break the transfer; a receiver's slot is reserved or gone."""
        party = leave.party
        if self._relay_of.pop(party, None) is None:
            if self._parked.pop(party, None) is not None:
                del relay.parked[party]
            else:
                del self._watching[party]
                relay.watchers.pop(party, None)
            return []
        completed = isinstance(leave, Leave) and leave.completed
        actions: list[Action] = []
        if party == relay.sender:
            relay.sender = None
            if not completed and (relay.slots or relay.reserved) and not relay.cancelled:
                relay.broken = True
                relay.aborted += len(relay.reserved)  # dropped receivers that can no longer resume
                relay.reserved.clear()
                actions.append(Break(relay.relay_id, tuple(relay.slots)))
                actions += self._turn_parked_away(relay)
                self._free_path(relay)
        else:
            slot = relay.slots.pop(party)
            keep = (
                isinstance(leave, Leave)  # a party whose worker died cannot come back
                and not completed
                and party in relay.resumable
                and self.limits.reconnect_grace > 0
                and not relay.path_freed
                and not self.draining  # no Join is taken now: the slot could not be taken back
            )
            relay.resumable.pop(party, None)
            if keep:
                deadline = self.now + self.limits.reconnect_grace
                relay.reserved[slot] = deadline
                self._timers.push(deadline, TimerKind.GRACE, (relay.relay_id, slot))
                return self._unpark(relay)
            actions += self._slot_gone(relay, slot, completed=completed)
        return actions + self._release_if_empty(relay)

    # -- cancel, status, eviction, drain --

    def _nothing_on(self, pipe: None, event: Cancel | Query) -> list[Action]:
        return [Answer(event.party, 404, f"Nothing is on '{event.path}'.")]

    def _cancel_waiting(self, waiting: Waiting, cancel: Cancel) -> list[Action]:
        if not keys_match(waiting.key, cancel.key):
            return [Answer(cancel.party, 403, WRONG_KEY)]
        return [*self._dissolve(waiting.parties()[::-1], 0, ""), Answer(cancel.party, 204, "")]

    def _cancel_relay(self, relay: Relay, cancel: Cancel) -> list[Action]:
        if not keys_match(relay.key, cancel.key):
            return [Answer(cancel.party, 403, WRONG_KEY)]
        relay.cancelled = True
        actions = self._turn_parked_away(relay, cancelled=True)
        self._free_path(relay)
        for slot in list(relay.reserved):
            del relay.reserved[slot]
            relay.aborted += 1
        parties = [p for p in (relay.sender, *relay.slots, *relay.watchers) if p is not None]
        actions.append(CancelRelay(relay.relay_id, tuple(parties)))
        actions += self._release_if_empty(relay)
        return [*actions, Answer(cancel.party, 204, "")]

    def _query_waiting(self, waiting: Waiting, query: Query) -> list[Action]:
        if not keys_match(waiting.key, query.key):
            return [Answer(query.party, 403, WRONG_KEY)]
        return [StatusReply(query.party, "waiting", len(waiting.receivers), waiting.n, None)]

    def _query_relay(self, relay: Relay, query: Query) -> list[Action]:
        if not keys_match(relay.key, query.key):
            return [Answer(query.party, 403, WRONG_KEY)]
        return [StatusReply(query.party, "established", len(relay.slots), relay.n, relay.relay_id)]

    def _evict(self, relay: Relay, stalled: Stalled) -> list[Action]:
        """The sender reports reader ``slot`` stalled: evict whoever holds it (a reservation too)."""
        if relay.sender != stalled.party:
            return []
        if stalled.slot in relay.reserved:
            del relay.reserved[stalled.slot]
            return self._slot_gone(relay, stalled.slot, completed=False, evicted=True)
        reader = next((p for p, s in relay.slots.items() if s == stalled.slot), None)
        if reader is None:
            return []
        del relay.slots[reader]
        del self._relay_of[reader]
        relay.resumable.pop(reader, None)
        return [Evicted(reader), *self._slot_gone(relay, stalled.slot, completed=False, evicted=True)]

    def _drain_waiting(self, waiting: Waiting, drain: Drain) -> list[Action]:
        return self._dissolve(waiting.parties()[::-1], 503, SHUTTING_DOWN)


#: A handler: ``(rendezvous, the addressed pipe or None, the event) -> actions``.
Handler = Callable[[Rendezvous, Any, Any], list[Action]]

FREE, WAITING, ESTABLISHED, ENDING = PipeState.FREE, PipeState.WAITING, PipeState.ESTABLISHED, PipeState.ENDING
_NO_PATH = Ignored("unreachable: a path names a free, waiting or established pipe, never an ending relay")
_UNKNOWN = Ignored("the party is not here: it left already or never joined")
_HELD_ONLY = Ignored("unreachable: Drain is dispatched to the pipes that hold a path")

#: Every transition: the pipe's state and the event's type give the handler that runs.
TRANSITIONS: dict[tuple[PipeState, type[Addressed]], Handler | Ignored] = {
    (FREE, Join): Rendezvous._open,
    (WAITING, Join): Rendezvous._join_waiting,
    (ESTABLISHED, Join): Rendezvous._join_relay,
    (ENDING, Join): _NO_PATH,
    (FREE, Cancel): Rendezvous._nothing_on,
    (WAITING, Cancel): Rendezvous._cancel_waiting,
    (ESTABLISHED, Cancel): Rendezvous._cancel_relay,
    (ENDING, Cancel): _NO_PATH,
    (FREE, Query): Rendezvous._nothing_on,
    (WAITING, Query): Rendezvous._query_waiting,
    (ESTABLISHED, Query): Rendezvous._query_relay,
    (ENDING, Query): _NO_PATH,
    (FREE, Leave): _UNKNOWN,
    (WAITING, Leave): Rendezvous._leave_waiting,
    (ESTABLISHED, Leave): Rendezvous._leave_relay,
    (ENDING, Leave): Rendezvous._leave_relay,
    (FREE, Vanished): _UNKNOWN,
    (WAITING, Vanished): Rendezvous._leave_waiting,
    (ESTABLISHED, Vanished): Rendezvous._leave_relay,
    (ENDING, Vanished): Rendezvous._leave_relay,
    (FREE, Stalled): _UNKNOWN,
    (WAITING, Stalled): Ignored("a waiting party has no readers to evict"),
    (ESTABLISHED, Stalled): Rendezvous._evict,
    (ENDING, Stalled): Rendezvous._evict,
    (FREE, Drain): _HELD_ONLY,
    (WAITING, Drain): Rendezvous._drain_waiting,
    (ESTABLISHED, Drain): Ignored("a transfer under way runs to its end"),
    (ENDING, Drain): _HELD_ONLY,
    (FREE, WaitOver): Ignored("stale: the party left"),
    (WAITING, WaitOver): Rendezvous._wait_over,
    (ESTABLISHED, WaitOver): Ignored("stale: the party's transfer started"),
    (ENDING, WaitOver): Ignored("stale: the party's transfer started"),
    (FREE, ParkOver): Ignored("stale: the parked party left"),
    (WAITING, ParkOver): Ignored("stale: the party is no longer parked"),
    (ESTABLISHED, ParkOver): Rendezvous._park_over,
    (ENDING, ParkOver): Rendezvous._park_over,
    (FREE, GraceOver): Ignored("stale: the relay was released"),
    (WAITING, GraceOver): Ignored("unreachable: a relay id never names a waiting pipe"),
    (ESTABLISHED, GraceOver): Rendezvous._grace_over,
    (ENDING, GraceOver): Rendezvous._grace_over,
}

#: How ``handle`` finds the pipe an event is addressed to, by the event's type (``Tick``,
#: ``WorkerGone`` and ``Drain`` fan out first; see the module docstring).
_ROUTES: dict[type, Callable[[Rendezvous, Any], list[Action]]] = {
    Join: Rendezvous._join,
    Leave: Rendezvous._on_party,
    Stalled: Rendezvous._on_party,
    Cancel: Rendezvous._on_path,
    Query: Rendezvous._on_path,
    Tick: Rendezvous._tick,
    WorkerGone: Rendezvous._worker_gone,
    Drain: Rendezvous._drain,
    WaitOver: Rendezvous._on_party,
    ParkOver: Rendezvous._on_party,
    Vanished: Rendezvous._on_party,
    GraceOver: Rendezvous._on_relay,
}
