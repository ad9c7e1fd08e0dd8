"""One worker's share of the server: its local parties, the paths it owns, its wake-ups.

``WorkerPipes`` plays two roles at once:

- **participant**: each sender or receiver request on this worker is a ``LocalParty``. It
  sends ``Join``/``Leave`` to the path's owner (maybe this very worker) and reads the
  owner's answers from its inbox.
- **owner**: for the paths that hash to this worker, it feeds ``Join``/``Leave`` frames to the
  pure ``Rendezvous`` and carries out the actions: answer parties, carve the ring out of its
  arena (``shm/arena.py``) and send ``Start``, mark readers detached or the ring broken, and
  free the ring once nobody touches it any more.

Limits are shared out per owner, with no shared counter: each owner admits
``settings.pipes_per_worker`` pipes (``worker_share``: an even split plus 25 %, since paths
do not hash exactly evenly; the server total may reach ``workers ×`` that), and its arena
reserves at most ``max_memory // workers`` bytes of rings as reserved (headers, capacities
as they grew), so ``max_memory`` bounds the total. The rendezvous counts a ring at its smallest
and turns pipes away when even that does not fit; what the arena cannot reserve then gets
the same 503. A ring's slot is freed once the relay is released, every party sent a
``Start`` has left (or died), and no ``users`` byte is set (``arena.py``, "Users"); rings
that wait only for users bytes are looked at again on a short timer.
Timers (``wait_timeout``, ``reconnect_grace``) live in the owner's rendezvous as one heap,
driven by one task that sleeps until the earliest deadline.

Failure rule: when a peer worker dies, this worker (as owner) treats that peer's parties as
gone, and (as participant) fails every local party whose owner was that peer. Either way
each affected party ends with a visible error; no other pipe is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ringpipe.core.config import INITIAL_RING_BYTES, Settings
from ringpipe.core.control_frames import Broken, Frame, Hello, PartyFrame, PipeStatus, RelayInfo, Start
from ringpipe.core.errors import RingMemoryFull
from ringpipe.core.paths import owner_of
from ringpipe.core.rendezvous import (
    SHUTTING_DOWN,
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
    Evicted,
    Finish,
    Headers,
    Join,
    Leave,
    PartyId,
    Query,
    ReceiverAborted,
    ReceiverConnected,
    ReceiverEvicted,
    Reject,
    Release,
    Rendezvous,
    Resume,
    RingView,
    Role,
    Stalled,
    StatusReply,
    Tick,
    TimedOut,
    Waiting,
    WatcherStart,
    WorkerGone,
)
from ringpipe.mesh.control import Mesh
from ringpipe.mesh.owned import OwnedRelay, new_epoch, owner_limits
from ringpipe.mesh.party import Hangup, InboxItem, LocalParty
from ringpipe.mesh.relay import DirectSink, Slot
from ringpipe.ops import logs, metrics, tally
from ringpipe.shm import mapping, segment
from ringpipe.shm.arena import Arena
from ringpipe.shm.wakeup import WakeChannel

__all__ = ["Hangup", "InboxItem", "LocalParty", "WorkerPipes"]

log = logging.getLogger("ringpipe.node")

#: First and longest wait before a released ring's users bytes are looked at again.
FREE_RETRY_S = 0.02
FREE_RETRY_MAX_S = 1.0


class WorkerPipes:
    """The pipes of one worker process: its parties in them, and those whose path it owns."""

    def __init__(self, settings: Settings, *, index: int, supervisor_pid: int, runtime_dir: Path) -> None:
        self.settings = settings
        self.index = index
        self.pid = os.getpid()
        self.supervisor_pid = supervisor_pid
        segment.set_worker_slot(index)
        self.arena = Arena(
            mapping.arena_name(supervisor_pid, self.pid),
            ring_bytes=settings.ring_bytes,
            budget=settings.max_memory // settings.workers,
            on_change=metrics.ring_bytes_changed,
            on_refusal=metrics.ring_refused,
            call_later=lambda delay, callback: asyncio.get_running_loop().call_later(delay, callback),
            keep_s=settings.ring_keep,
        )
        self.first_capacity = min(INITIAL_RING_BYTES, settings.ring_bytes)
        #: A new ring's replay window, and the stall timeout of a pipe that names none (in ms).
        self._window = settings.replay_window
        self._stall_ms = round(settings.stall_timeout * 1000)
        self.rendezvous = Rendezvous(
            owner_limits(settings),
            self._ring_view,
            functools.cache(functools.partial(segment.segment_bytes, self.first_capacity)),
        )
        self.parties: dict[int, LocalParty] = {}
        self._owned: dict[int, OwnedRelay] = {}
        #: Released relays whose rings wait for their last users (see the module docstring).
        self._retiring: dict[int, OwnedRelay] = {}
        #: Each party sent a ``Start`` that has not left, and its ring (``OwnedRelay.attached`` counts them).
        self._attached_to: dict[PartyId, OwnedRelay] = {}
        self._free_timer: asyncio.TimerHandle | None = None
        self._free_wait = FREE_RETRY_S
        self._wakers: dict[tuple[str, int], Callable[[], None]] = {}
        self._watcher_wakers: dict[str, set[Callable[[], None]]] = {}
        self._direct_sinks: dict[str, list[DirectSink]] = {}
        self._timer_task: asyncio.Task[None] | None = None
        self._timer_changed = asyncio.Event()
        self._timer_at: float | None = None
        self._serials = itertools.count(1)
        self.mesh = Mesh(
            index=index,
            runtime_dir=runtime_dir,
            on_frame=self.on_frame,
            on_peer_gone=self.on_peer_gone,
            on_peer_unreachable=self.on_peer_unreachable,
        )
        self.wakes = WakeChannel(runtime_dir, index, self._wake_local)

    # -- participant side --

    def open_party(
        self,
        path: str,
        role: Role,
        n: int,
        receiver_headers: Headers = (),
        *,
        key: str = "",
        offset: int = -1,
        epoch: str = "",
        resumable: bool = False,
        stall_ms: int = -1,
        gaps: bool = False,
        quiet: bool = False,
    ) -> LocalParty:
        """Register a local party and ask the path's owner to let it join (see ``Join``)."""
        party = self._new_party(path, role, n)
        join = Join(party.id, path, role, n, receiver_headers, key, offset, epoch, resumable, stall_ms, gaps, quiet)
        self.mesh.send(party.owner, join)
        return party

    def ask(self, path: str, *, cancel: bool, key: str = "") -> LocalParty:
        """Send ``Cancel`` (DELETE) or ``Query`` (HEAD) for ``path``; the answer arrives in the
        returned party's inbox (``Answer``/``PipeStatus``, or ``Broken``). ``forget`` it after."""
        party = self._new_party(path, Role.WATCHER, 0)
        self.mesh.send(party.owner, Cancel(party.id, path, key) if cancel else Query(party.id, path, key))
        return party

    def forget(self, party: LocalParty) -> None:
        """Drop a party that never joined (an ``ask``): no ``Leave`` is owed."""
        party.left = True
        self.parties.pop(party.id.serial, None)
        party.inbox.close()

    def report_stall(self, party: LocalParty, slot: int) -> None:
        """The producer ``party`` evicted reader ``slot`` (stall): the owner ends that reader."""
        self.mesh.send(party.owner, Stalled(party.id, slot))

    def _new_party(self, path: str, role: Role, n: int) -> LocalParty:
        serial = next(self._serials)
        party = LocalParty(PartyId(self.index, self.pid, serial), path, role, n, owner_of(path, self.settings.workers))
        self.parties[serial] = party
        return party

    def leave(self, party: LocalParty, *, completed: bool) -> None:
        """Tell the owner the party is gone (once); the party stops receiving frames."""
        if not party.left:
            party.left = True
            self.parties.pop(party.id.serial, None)
            party.inbox.close()
            self.mesh.send(party.owner, Leave(party.id, completed))

    # -- wake router (relay.WakeRouter) --

    def register(self, segment: str, slot: int, callback: Callable[[], None]) -> None:
        if slot == Slot.WATCHER:
            self._watcher_wakers.setdefault(segment, set()).add(callback)
        else:
            self._wakers[(segment, slot)] = callback

    def unregister(self, segment: str, slot: int, callback: Callable[[], None] | None = None) -> None:
        if slot == Slot.WATCHER:
            callbacks = self._watcher_wakers.get(segment)
            if callbacks is not None and callback is not None:
                callbacks.discard(callback)
                if not callbacks:
                    del self._watcher_wakers[segment]
        else:
            self._wakers.pop((segment, slot), None)

    def direct_sinks(self, segment: str) -> list[DirectSink]:
        sinks = self._direct_sinks.get(segment)
        if sinks is None:
            sinks = self._direct_sinks[segment] = []
        return sinks

    def drop_direct_sinks(self, segment: str, sinks: list[DirectSink]) -> None:
        if self._direct_sinks.get(segment) is sinks:
            del self._direct_sinks[segment]

    def wake_watchers(self, info: RelayInfo, workers: list[int]) -> None:
        """Wake every watcher of ring ``info`` on each of ``workers``."""
        for worker in workers:
            if worker == self.index:
                self._wake_local(info.segment, Slot.WATCHER)
            elif worker < self.settings.workers:
                self.wakes.send(worker, info.segment, [Slot.WATCHER])

    def wake(self, info: RelayInfo, slot: int) -> None:
        worker = info.producer if slot < 0 else info.readers[slot]
        if worker == self.index:
            self._wake_local(info.segment, slot)
        else:
            self.wakes.send(worker, info.segment, [slot])

    def wake_many(self, info: RelayInfo, slots: list[int]) -> None:
        """Wake reader ``slots``: local ones directly, remote ones one datagram per worker."""
        remote: dict[int, list[int]] | None = None
        readers, name, index, wakers = info.readers, info.segment, self.index, self._wakers
        for slot in slots:
            worker = readers[slot]
            if worker == index:  # ``_wake_local`` for a reader slot, inlined: this runs per token
                callback = wakers.get((name, slot))
                if callback is not None:
                    callback()
            else:
                if remote is None:
                    remote = {}
                remote.setdefault(worker, []).append(slot)
        if remote is not None:
            for worker, batch in remote.items():
                self.wakes.send(worker, name, batch)

    def _wake_local(self, segment: str, slot: int) -> None:
        if slot == Slot.WATCHER:
            for wake in list(self._watcher_wakers.get(segment, ())):
                wake()
            return
        callback = self._wakers.get((segment, slot))
        if callback is not None:
            callback()

    # -- frames in --

    def on_frame(self, sender: int, frame: Frame) -> None:
        """A frame from ``sender``: an event for a path this worker owns, else an owner's
        answer to one of its parties (one table lookup per frame)."""
        handler = _FRAME_HANDLERS.get(type(frame))
        if handler is None:
            self._deliver(frame)  # type: ignore[arg-type]  # every other frame is a PartyFrame
        else:
            handler(self, frame)

    def _on_join(self, join: Join) -> None:
        self._apply(self.rendezvous.handle(join, time.monotonic()))
        if join.role is not Role.SENDER and not join.quiet:
            self._admit_if_waiting(join)

    def _on_leave(self, leave: Leave) -> None:
        self._detached(leave.party)
        self._apply(self.rendezvous.handle(leave, time.monotonic()))

    def _on_event(self, event: Cancel | Query | Stalled) -> None:
        self._apply(self.rendezvous.handle(event, time.monotonic()))

    def _deliver(self, frame: PartyFrame) -> None:
        """An owner's answer to one of this worker's parties: into its inbox, if it is still here."""
        party = self.parties.get(frame.party.serial)
        if party is not None and party.id == frame.party:
            if isinstance(frame, Start):
                metrics.party_started(party.role, party.joined)
            party.inbox.put(frame)  # ``party.deliver``, one call less: a few frames per party

    def _to_party(self, party: PartyId, frame: PartyFrame) -> None:
        """Send the owner's ``frame`` to ``party``. One in this worker gets it in its inbox at
        once (its handler reads it on a later turn; only the parties' inboxes are touched,
        no handler runs), so frames to one party keep the order they are sent in."""
        if party.worker == self.index:
            self._deliver(frame)
        else:
            self.mesh.send(party.worker, frame)

    def _admit_if_waiting(self, join: Join) -> None:
        """Tell a receiver or watcher that now waits in a pipe that it was admitted.

        The rendezvous answers a sender's join with ``Accepted`` itself; a reader that it
        registers on a waiting pipe gets no action, so the shell says ``Accepted`` for it:
        only then may the reader's head go out (SSE, WebSocket), and every refusal comes
        before any head (SPEC 2.4). A reader that started at once hears ``Start``, a refused
        one ``Reject``, a parked resume (established pipe) waits for one of the two. A
        ``quiet`` reader (raw: nothing goes out before its start) is not told: ``_on_join``
        does not call this for it, so its request is not woken for nothing.
        """
        pipe = self.rendezvous.pipes.get(join.path)
        if isinstance(pipe, Waiting) and (join.party in pipe.receivers or join.party in pipe.watchers):
            self._to_party(join.party, Accepted(join.party, pipe.n, None))

    def on_peer_gone(self, worker: int, pid: int) -> None:
        for owned in (*self._owned.values(), *self._retiring.values()):
            owned.ring.clear_user(worker)  # a dead process touches nothing
        for party in [p for p in self._attached_to if p.worker == worker and p.pid == pid]:
            self._detached(party)
        self._apply(self.rendezvous.handle(WorkerGone(worker, pid), time.monotonic()))
        self.on_peer_unreachable(worker)
        self._retry_frees()

    def on_peer_unreachable(self, worker: int) -> None:
        for party in list(self.parties.values()):
            if party.owner == worker:
                party.deliver(Broken(party.id))

    def drain(self) -> None:
        """Shutdown: turn away every party waiting on a path this worker owns."""
        self.mesh.draining = True
        self._apply(self.rendezvous.handle(Drain()))

    # -- owner side: carry out the rendezvous' actions --

    def _apply(self, actions: list[Action]) -> None:
        """Carry out ``actions``; then make the timer task wake by the rendezvous' next
        deadline, and have the pipes gauge recounted."""
        for action in actions:
            try:
                _ACTION_HANDLERS[type(action)](self, action)
            except Exception:
                log.exception("failed to carry out %r", action)
        deadline = self.rendezvous.next_deadline()
        if deadline is not None:
            if self._timer_task is None:
                self._timer_task = asyncio.get_running_loop().create_task(self._run_timers())
            elif self._timer_at is None or deadline < self._timer_at:
                self._timer_changed.set()
        metrics.pipes_changed(self.rendezvous)

    async def _run_timers(self) -> None:
        """Feed ``Tick`` to the rendezvous at each deadline it reports (one task per owner)."""
        while True:
            self._timer_changed.clear()
            self._timer_at = self.rendezvous.next_deadline()
            timeout = None if self._timer_at is None else max(0.0, self._timer_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), timeout)
                continue
            self._timer_at = None
            self._apply(self.rendezvous.handle(Tick(time.monotonic())))

    def _ring_view(self, relay_id: int) -> RingView | None:
        owned = self._owned.get(relay_id)
        if owned is None:
            return None
        return RingView(owned.ring.oldest_held(), owned.ring.write_seq, owned.info.epoch)

    def _tell(self, action: Accepted | ReceiverConnected | ReceiverAborted | ReceiverEvicted | Finish) -> None:
        self._to_party(action.party, action)

    def _answer(self, action: Reject | Answer | Cancelled | Evicted) -> None:
        if isinstance(action, Reject) and action.status == 503 and action.message != SHUTTING_DOWN:
            # A limit binds (pipes, watchers, memory): the operator's concern, so one warning each.
            log.warning(
                "refused 503: %s",
                action.message,
                extra={"event": "refused", "status": 503, "pipes": len(self.rendezvous.pipes)},
            )
        self._to_party(action.party, action)

    def _start_late(self, action: WatcherStart | Resume) -> None:
        owned = self._owned.get(action.relay_id)
        slot = action.slot if isinstance(action, Resume) else Slot.WATCHER
        if owned is None:
            self._to_party(action.party, Reject(action.party, 410, "The pipe is gone."))
        else:
            self._start(action.party, owned, slot)

    def _timed_out(self, action: TimedOut) -> None:
        metrics.transfer_ended("timeout")

    def _status(self, action: StatusReply) -> None:
        owned = self._owned.get(action.relay_id) if action.relay_id is not None else None
        offset, epoch = (owned.ring.write_seq, owned.info.epoch) if owned is not None else (0, "")
        status = PipeStatus(action.party, action.state, action.connected, action.n, offset, epoch)
        self._to_party(action.party, status)

    def _cancel_relay(self, action: CancelRelay) -> None:
        owned = self._owned.get(action.relay_id)
        if owned is not None:
            owned.ring.cancel()
            self.wake(owned.info, Slot.WRITER)
            self.wake_many(owned.info, list(range(owned.ring.n_readers)))
        for party in action.parties:
            self._to_party(party, Cancelled(party))

    def _detach(self, action: Detach) -> None:
        owned = self._owned.get(action.relay_id)
        if owned is not None:
            owned.ring.set_reader_status(action.slot, segment.DETACHED)
            self.wake(owned.info, Slot.WRITER)

    def _break(self, action: Break) -> None:
        owned = self._owned.get(action.relay_id)
        if owned is not None:
            owned.ring.break_ring()
            for slot in range(owned.ring.n_readers):
                self.wake(owned.info, slot)
        for party in action.parties:
            self._to_party(party, Broken(party))

    def _establish(self, action: Establish) -> None:
        # A producer in this worker grows its ring as it needs; one elsewhere cannot reserve
        # in this arena, so its ring starts whole.
        local = action.sender.worker == self.index
        try:
            ring = self.arena.create_ring(
                action.relay_id,
                n_readers=len(action.receivers),
                capacity=self.first_capacity if local else self.settings.ring_bytes,
                window=self._window,
            )
        except RingMemoryFull as full:
            log.warning("transfer refused: %s", full.reason, extra={"event": "refused", "path": action.path})
            for party in (action.sender, *action.receivers, *action.watchers):
                self._to_party(party, Reject(party, full.http_status, full.message))
            return  # their Leaves dissolve the relay in the rendezvous; it has no ring to release
        stall_ms = action.stall_ms if action.stall_ms >= 0 else self._stall_ms
        info = RelayInfo(
            segment=ring.name,
            capacity=ring.capacity,
            owner=self.index,
            producer=action.sender.worker,
            readers=tuple(p.worker for p in action.receivers),
            epoch=new_epoch(),
            stall_ms=stall_ms,
        )
        owned = OwnedRelay(action.relay_id, ring, info, action.path, time.monotonic(), action.receiver_headers)
        self._owned[action.relay_id] = owned
        metrics.relay_established(len(action.receivers))
        self._start(action.sender, owned, Slot.WRITER)
        for slot, party in enumerate(action.receivers):
            self._start(party, owned, slot)
        for party in action.watchers:
            self._start(party, owned, Slot.WATCHER)

    def _start(self, party: PartyId, owned: OwnedRelay, slot: int) -> None:
        """Send ``party`` its ``Start``; from now on it may map the ring until it leaves."""
        self._to_party(party, Start(party, owned.info, slot, owned.receiver_headers))
        if self._attached_to.get(party) is not owned:
            owned.attached += 1
            self._attached_to[party] = owned

    def _detached(self, party: PartyId) -> None:
        """``party`` left (or died): it no longer keeps its ring's slot."""
        owned = self._attached_to.pop(party, None)
        if owned is not None:
            owned.attached -= 1
            if owned.relay_id in self._retiring:
                self._free_if_unused(owned)

    def _free_if_unused(self, owned: OwnedRelay) -> None:
        """Free a released ring's slot if nobody may touch it any more, else look again later."""
        if owned.attached:
            return  # a Leave (or the worker's death) brings us back
        if owned.ring.has_users():
            self._schedule_frees()
            return
        del self._retiring[owned.relay_id]
        self.arena.free(owned.ring)

    def _schedule_frees(self) -> None:
        if self._free_timer is None:
            self._free_timer = asyncio.get_running_loop().call_later(self._free_wait, self._retry_frees)
            self._free_wait = min(self._free_wait * 2, FREE_RETRY_MAX_S)

    def _retry_frees(self) -> None:
        self._free_timer = None
        for owned in list(self._retiring.values()):
            self._free_if_unused(owned)
        if self._free_timer is None:  # nothing waits on users bytes: next time, start short
            self._free_wait = FREE_RETRY_S

    def _release(self, action: Release) -> None:
        owned = self._owned.pop(action.relay_id, None)
        if owned is None:
            return
        relayed = owned.ring.write_seq
        framings = metrics.framing_mix(owned.ring)
        self._retiring[action.relay_id] = owned
        self._free_if_unused(owned)
        if action.cancelled:
            ending = "cancelled"
        elif action.broken or action.completed == 0:
            ending = "aborted"
        else:
            ending = "done"
        producer, readers = owned.info.producer, owned.info.readers
        metrics.transfer_ended(ending, across_workers=any(worker != producer for worker in readers))
        logs.info_fields(
            log,
            "transfer ended",
            {
                "event": "transfer",
                "path": owned.path,
                "n": len(owned.info.readers),
                "framings": framings,
                "bytes": relayed,
                "duration_s": round(time.monotonic() - owned.started, 6),
                "ending": ending,
                "receivers_completed": action.completed,
                "receivers_aborted": action.aborted,
                "receivers_evicted": action.evicted,
                "owner_worker": self.index,
                "sender_worker": producer,
                "receiver_workers": list(readers),
                "epoch": owned.info.epoch,
            },
        )

    def close(self) -> None:
        """Worker exit: unlink the arena (readers elsewhere keep their mappings until they end)."""
        if self._timer_task is not None:
            self._timer_task.cancel()
        if self._free_timer is not None:
            self._free_timer.cancel()
            self._free_timer = None
        self.wakes.close()
        self.arena.close()
        tally.final_flush()
        self._owned.clear()
        self._retiring.clear()


#: What the owner does with each frame that is not an answer to a party (``on_frame``).
_FRAME_HANDLERS: dict[type[Frame], Callable[[WorkerPipes, Any], None]] = {
    Join: WorkerPipes._on_join,
    Leave: WorkerPipes._on_leave,
    Cancel: WorkerPipes._on_event,
    Query: WorkerPipes._on_event,
    Stalled: WorkerPipes._on_event,
    Hello: lambda pipes, hello: None,
}
#: How the owner carries out each of the rendezvous' actions (``_apply``; every ``Action``).
_ACTION_HANDLERS: dict[type[Action], Callable[[WorkerPipes, Any], None]] = {
    Reject: WorkerPipes._answer,
    Answer: WorkerPipes._answer,
    Cancelled: WorkerPipes._answer,
    Evicted: WorkerPipes._answer,
    Accepted: WorkerPipes._tell,
    ReceiverConnected: WorkerPipes._tell,
    ReceiverAborted: WorkerPipes._tell,
    ReceiverEvicted: WorkerPipes._tell,
    Finish: WorkerPipes._tell,
    Establish: WorkerPipes._establish,
    WatcherStart: WorkerPipes._start_late,
    Resume: WorkerPipes._start_late,
    TimedOut: WorkerPipes._timed_out,
    StatusReply: WorkerPipes._status,
    CancelRelay: WorkerPipes._cancel_relay,
    Detach: WorkerPipes._detach,
    Break: WorkerPipes._break,
    Release: WorkerPipes._release,
}
