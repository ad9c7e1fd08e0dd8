"""The rendezvous's transition table, walked pair by pair (as h11's ``test_state`` walks its own).

Every (pipe state, event type) pair is either handled or explicitly ignored; each pair the
dispatch can reach is reached from a real pipe in that state and runs the table's entry; an
ignored pair changes nothing; and the pairs the table calls unreachable cannot be reached.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringpipe.core.rendezvous import (
    Break,
    Cancel,
    Drain,
    Event,
    Join,
    Leave,
    Limits,
    PartyId,
    PipeState,
    Query,
    RingView,
    Role,
    Stalled,
    Tick,
    WorkerGone,
)
from ringpipe.core.rendezvous.events import GraceOver, ParkOver, Vanished, WaitOver
from ringpipe.core.rendezvous.machine import _ROUTES, TRANSITIONS, Addressed, Ignored, Rendezvous
from ringpipe.core.rendezvous.timers import TimerKind

FREE, WAITING, ESTABLISHED, ENDING = PipeState.FREE, PipeState.WAITING, PipeState.ESTABLISHED, PipeState.ENDING
S = PartyId(0, 100, 1)
R1, R2, R3 = (PartyId(1, 200, i) for i in range(1, 4))
PATH = "/p"
ADDRESSED: tuple[type[Addressed], ...] = typing.get_args(Addressed)

#: The pairs the dispatch cannot produce, and why (checked in ``test_unreachable_pairs_are_unreachable``).
UNREACHABLE = {
    (ENDING, Join): "an ending relay has left pipes",
    (ENDING, Cancel): "an ending relay has left pipes",
    (ENDING, Query): "an ending relay has left pipes",
    (FREE, Drain): "Drain goes to the pipes in pipes",
    (ENDING, Drain): "Drain goes to the pipes in pipes",
    (WAITING, GraceOver): "a relay id names a relay",
}


def _rendezvous() -> Rendezvous:
    return Rendezvous(Limits(wait_timeout=5, reconnect_grace=3), lambda relay_id: RingView(0, 1000, "e1"))


def _free() -> Rendezvous:
    return _rendezvous()


def _waiting() -> Rendezvous:
    """Receiver R1 waits on PATH since t=0 (its wait is over at t=5)."""
    rv = _rendezvous()
    rv.handle(Join(R1, PATH, Role.RECEIVER, 1), now=0)
    return rv


def _established() -> Rendezvous:
    """Relay 1 on PATH: sender S, R2 in slot 1, slot 0 reserved until t=3 for R1, who dropped."""
    rv = _rendezvous()
    for r in (R1, R2):
        rv.handle(Join(r, PATH, Role.RECEIVER, 2, resumable=True), now=0)
    rv.handle(Join(S, PATH, Role.SENDER, 2), now=0)
    rv.handle(Leave(R1, completed=False), now=0)
    assert rv.relays[1].reserved == {0: 3.0}
    return rv


def _ending() -> Rendezvous:
    """Relay 1 broke (its sender S vanished mid-body): R1 and R2 still read the ring, PATH is free."""
    rv = _rendezvous()
    for r in (R1, R2):
        rv.handle(Join(r, PATH, Role.RECEIVER, 2), now=0)
    rv.handle(Join(S, PATH, Role.SENDER, 2), now=0)
    assert rv.handle(Leave(S, completed=False), now=0) == [Break(1, (R1, R2))]
    return rv


SCENARIOS: dict[PipeState, Callable[[], Rendezvous]] = {
    FREE: _free,
    WAITING: _waiting,
    ESTABLISHED: _established,
    ENDING: _ending,
}

#: The event of each type addressed to the pipe of each scenario (R3 and S2 are strangers).
EVENTS: dict[PipeState, dict[type[Addressed], Addressed]] = {
    FREE: {
        Join: Join(R3, PATH, Role.RECEIVER, 1),
        Leave: Leave(R3, completed=True),
        Vanished: Vanished(R3),
        Cancel: Cancel(R3, PATH),
        Query: Query(R3, PATH),
        Stalled: Stalled(R3, 0),
        WaitOver: WaitOver(R3, 5.0),
        ParkOver: ParkOver(R3),
        GraceOver: GraceOver(1, 0, 3.0),
    },
    WAITING: {
        Join: Join(S, PATH, Role.SENDER, 1),
        Leave: Leave(R1, completed=False),
        Vanished: Vanished(R1),
        Cancel: Cancel(R3, PATH),
        Query: Query(R3, PATH),
        Stalled: Stalled(R1, 0),
        Drain: Drain(),
        WaitOver: WaitOver(R1, 5.0),
        ParkOver: ParkOver(R1),
    },
    ESTABLISHED: {
        Join: Join(R3, PATH, Role.RECEIVER, 2, offset=10),
        Leave: Leave(R2, completed=True),
        Vanished: Vanished(R2),
        Cancel: Cancel(R3, PATH),
        Query: Query(R3, PATH),
        Stalled: Stalled(S, 1),
        Drain: Drain(),
        WaitOver: WaitOver(S, 5.0),
        ParkOver: ParkOver(R2),
        GraceOver: GraceOver(1, 0, 3.0),
    },
    ENDING: {
        Leave: Leave(R1, completed=True),
        Vanished: Vanished(R1),
        Stalled: Stalled(R1, 0),
        WaitOver: WaitOver(R1, 5.0),
        ParkOver: ParkOver(R1),
        GraceOver: GraceOver(1, 0, 3.0),
    },
}

PAIRS = [(state, kind) for state in PipeState for kind in ADDRESSED]


def _snapshot(rv: Rendezvous) -> dict[str, Any]:
    state = {k: v for k, v in vars(rv).items() if k not in {"ring_view", "ring_cost", "_timers"}}
    return copy.deepcopy({**state, "timers": (len(rv._timers), rv.next_deadline())})


def _feed(rv: Rendezvous, event: Addressed) -> list[Any]:
    """Public events go through ``handle``; the machine's own ones straight to the dispatch."""
    if isinstance(event, WaitOver | GraceOver | ParkOver | Vanished):
        return rv._dispatch(event)
    return rv.handle(event)


def test_the_table_is_total() -> None:
    """Every pair has exactly one entry: a ``Rendezvous`` method, or ``Ignored`` with a reason."""
    assert set(TRANSITIONS) == set(PAIRS)
    for pair, entry in TRANSITIONS.items():
        if isinstance(entry, Ignored):
            assert entry.why, pair
        else:
            assert getattr(Rendezvous, entry.__name__) is entry, pair


def test_every_event_is_dispatched_or_fanned_out() -> None:
    """Only Tick and WorkerGone reach no table row directly: they become WaitOver/GraceOver/
    ParkOver and Vanished events, one per timer due or party lost."""
    assert set(typing.get_args(Event)) - set(ADDRESSED) == {Tick, WorkerGone}


def test_every_event_has_a_route_and_an_ignored_pair_answers_nothing() -> None:
    """``handle`` finds each event's pipe by its type: every public and inner event has a
    route; an ``Ignored`` entry, called as the dispatch calls it, yields no action."""
    assert set(_ROUTES) == set(typing.get_args(Event)) | set(ADDRESSED)
    for entry in TRANSITIONS.values():
        if isinstance(entry, Ignored):
            assert entry(_rendezvous(), None, Leave(S, True)) == []


def test_tick_and_worker_gone_fan_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Tick dispatches one event per live timer due, earliest first (one kind per
    ``TimerKind``; a stale timer, whose party or slot moved on, is dropped); a WorkerGone
    one ``Vanished`` per party of that worker."""
    seen: list[Addressed] = []
    dispatch = Rendezvous._dispatch

    def spy(rv: Rendezvous, event: Any) -> list[Any]:
        seen.append(event)
        return dispatch(rv, event)

    monkeypatch.setattr(Rendezvous, "_dispatch", spy)
    rv = _established()  # R1's grace is over at t=3; the waits of R1, R2 and S are stale
    seen.clear()
    rv.handle(Tick(10))
    assert seen == [GraceOver(1, 0, 3.0)]

    rv = _rendezvous()
    rv.handle(Join(R1, PATH, Role.RECEIVER, 1, resumable=True), now=0)
    rv.handle(Join(S, PATH, Role.SENDER, 1), now=0)
    rv.handle(Join(R3, PATH, Role.RECEIVER, 1, offset=10), now=1)  # R1's drop not seen yet: parked until t=4
    rv.handle(Join(R2, "/q", Role.RECEIVER, 1), now=1)  # waits until t=6
    seen.clear()
    rv.handle(Tick(10))
    assert seen == [ParkOver(R3), WaitOver(R2, 6.0)]
    assert len(TimerKind) == 3

    rv = _ending()
    seen.clear()
    rv.handle(WorkerGone(1, 200))
    assert seen == [Vanished(R1), Vanished(R2)]


def test_every_scenario_is_in_its_state() -> None:
    assert _free().pipes == {}
    assert _waiting().pipes[PATH].state is WAITING
    assert _established().pipes[PATH].state is ESTABLISHED
    ending = _ending()
    assert ending.relays[1].state is ENDING and ending.pipes == {}


def _pair_id(pair: object) -> str:
    return pair.name if isinstance(pair, PipeState) else getattr(pair, "__name__", str(pair))


@pytest.mark.parametrize(("state", "kind"), [p for p in PAIRS if p not in UNREACHABLE], ids=_pair_id)
def test_each_reachable_pair_runs_its_entry(
    state: PipeState, kind: type[Addressed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event reaches the pipe in ``state`` and runs ``TRANSITIONS[state, kind]``; an
    ignored pair yields no action and leaves the state as it was."""
    rv = SCENARIOS[state]()
    event = EVENTS[state][kind]
    entry = TRANSITIONS[state, kind]
    ran: list[tuple[PipeState, type[Addressed]]] = []

    def spy(machine: Rendezvous, pipe: Any, event: Any) -> list[Any]:
        ran.append((state, kind))
        return [] if isinstance(entry, Ignored) else entry(machine, pipe, event)

    for other in PAIRS:
        monkeypatch.setitem(TRANSITIONS, other, _refuse(other) if other != (state, kind) else spy)
    if kind is Drain:  # its second fan-out, one GraceOver per reservation: the test below
        for relay in rv.relays.values():
            relay.reserved.clear()
    before = _snapshot(rv)
    if kind is Drain:
        before["draining"] = True  # the one machine-wide effect, before any pipe sees it
    actions = _feed(rv, event)
    assert ran == [(state, kind)]
    if isinstance(entry, Ignored):
        assert actions == [] and _snapshot(rv) == before


def test_drain_ends_each_grace_reservation_through_its_grace_over_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the pipes on paths, Drain sends every reserved slot of every relay (established or
    ending) through ``TRANSITIONS[state, GraceOver]``, due now: a draining server refuses the
    Join that would take the slot back."""
    rv = SCENARIOS[ESTABLISHED]()
    reserved = [(r.relay_id, slot) for r in rv.relays.values() for slot in r.reserved]
    assert reserved, "the scenario holds a reservation"
    ran: list[tuple[int, int]] = []
    for state in (ESTABLISHED, ENDING):
        entry = TRANSITIONS[state, GraceOver]
        assert not isinstance(entry, Ignored)

        def spy(machine: Rendezvous, pipe: Any, event: Any, entry: Any = entry) -> list[Any]:
            ran.append((event.relay_id, event.slot))
            return entry(machine, pipe, event)  # type: ignore[no-any-return]

        monkeypatch.setitem(TRANSITIONS, (state, GraceOver), spy)
    _feed(rv, Drain())
    assert ran == reserved
    assert all(not r.reserved for r in rv.relays.values())


def _refuse(pair: tuple[PipeState, type[Addressed]]) -> Callable[..., list[Any]]:
    def wrong(*args: object) -> list[Any]:
        raise AssertionError(f"dispatched to {pair}")

    return wrong


@pytest.mark.parametrize("state", list(SCENARIOS), ids=_pair_id)
def test_unreachable_pairs_are_unreachable(state: PipeState) -> None:
    """Path events and Drain only see pipes in ``pipes``, which holds no ending relay; a
    relay id never names a waiting pipe. So a Join on an ending relay's path opens a new pipe."""
    rv = SCENARIOS[state]()
    assert all(pipe.state in {WAITING, ESTABLISHED} for pipe in rv.pipes.values())
    assert all(relay.state in {ESTABLISHED, ENDING} for relay in rv.relays.values())
    if state is ENDING:
        rv.handle(Join(R3, PATH, Role.RECEIVER, 1))
        assert rv.pipes[PATH].state is WAITING and rv.relays[1].state is ENDING


# -- the invariants of machine's docstring, under random events ----------------------------

PARTIES = [PartyId(w, pid, serial) for w in (0, 1) for pid in (10, 11) for serial in (0, 1, 2)]
_joins = st.builds(
    Join,
    st.sampled_from(PARTIES),
    st.sampled_from(["/a", "/b"]),
    st.sampled_from(list(Role)),
    st.sampled_from([1, 1, 2]),
    st.just(()),
    st.just(""),
    st.sampled_from([-1, -1, 0, 5]),
    st.just(""),
    st.booleans(),
)
_events: st.SearchStrategy[Event] = st.one_of(
    _joins,
    _joins,
    st.builds(Leave, st.sampled_from(PARTIES), st.booleans()),
    st.builds(Cancel, st.sampled_from(PARTIES), st.sampled_from(["/a", "/b"])),
    st.builds(Stalled, st.sampled_from(PARTIES), st.integers(0, 2)),
    st.builds(Tick, st.floats(0, 20)),
    st.builds(WorkerGone, st.sampled_from([0, 1]), st.sampled_from([10, 11])),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_events, min_size=8, max_size=60))
def test_random_events_keep_the_state_invariants(events: list[Event]) -> None:
    """``pipes`` holds waiting pipes and established relays only; the party indexes name live
    relays; only an established relay has reserved slots or parked resumes."""
    rv = _rendezvous()
    clock = 0.0
    for event in events:
        if isinstance(event, Tick):
            clock = max(clock, event.now)
            event = Tick(clock)
        rv.handle(event, now=clock)
        assert all(pipe.state in {WAITING, ESTABLISHED} for pipe in rv.pipes.values())
        for index in (rv._relay_of, rv._watching, rv._parked):
            assert set(index.values()) <= set(rv.relays)
        for relay in rv.relays.values():
            if relay.reserved or relay.parked:
                assert relay.state is ESTABLISHED
