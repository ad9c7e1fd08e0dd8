"""The rendezvous rows of the pipe lifecycle: cancel, status, wait timeouts, read keys,
limits, watchers, resume with reconnect grace, stall eviction (table in ``rendezvous/machine.py``).

Time is a plain number passed in (``handle(event, now)`` and ``Tick(now)``): no clock.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringpipe.core.rendezvous import (
    Accepted,
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
    Join,
    Leave,
    Limits,
    PartyId,
    Query,
    ReceiverAborted,
    ReceiverEvicted,
    Reject,
    Relay,
    Release,
    Rendezvous,
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

SENDER, RECEIVER, WATCHER = Role.SENDER, Role.RECEIVER, Role.WATCHER
S = PartyId(0, 100, 1)
R1, R2, R3 = (PartyId(1, 200, i) for i in range(1, 4))
W1, W2 = PartyId(2, 300, 1), PartyId(2, 300, 2)
Q = PartyId(3, 400, 1)
PATH = "/p"
KEY, OTHER = "a" * 64, "b" * 64


def held(oldest: int = 0, head: int = 1000, epoch: str = "e1") -> RingView:
    return RingView(oldest, head, epoch)


def rendezvous(view: RingView | None = None, **limits: float) -> Rendezvous:
    return Rendezvous(Limits(**limits), lambda relay_id: view)  # type: ignore[arg-type]


def relay_of(rv: Rendezvous, n: int = 1, *, resumable: bool = False, key: str = "") -> Relay:
    for r in (R1, R2, R3)[:n]:
        rv.handle(Join(r, PATH, RECEIVER, n, key=key, resumable=resumable))
    actions = rv.handle(Join(S, PATH, SENDER, n, key=key))
    assert isinstance(actions[-1], Establish)
    relay = rv.pipes[PATH]
    assert isinstance(relay, Relay)
    return relay


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_waiting_tells_every_party_and_frees_the_path() -> None:
    rv = rendezvous()
    rv.handle(Join(R1, PATH, RECEIVER, 2))
    rv.handle(Join(S, PATH, SENDER, 2))
    rv.handle(Join(W1, PATH, WATCHER, 1))
    actions = rv.handle(Cancel(Q, PATH))
    assert set(actions) == {Cancelled(W1), Cancelled(R1), Cancelled(S), Answer(Q, 204, "")}
    assert actions[-1] == Answer(Q, 204, "")
    assert PATH not in rv.pipes and not rv._waiting_of


def test_cancel_established_marks_the_relay_and_no_break_follows() -> None:
    rv = rendezvous()
    relay = relay_of(rv, 2)
    rv.handle(Join(W1, PATH, WATCHER, 1))
    actions = rv.handle(Cancel(Q, PATH))
    assert actions == [CancelRelay(1, (S, R1, R2, W1)), Answer(Q, 204, "")]
    assert relay.cancelled and PATH not in rv.pipes
    assert rv.handle(Leave(S, completed=False)) == []  # no Break, no log to a cancelled sender
    assert rv.handle(Leave(R1, completed=False)) == [Detach(1, 0)]
    assert rv.handle(Leave(R2, completed=False)) == [Detach(1, 1), Release(1, 0, 2, False, True, 0)]


def test_cancel_and_query_on_a_free_path_are_404() -> None:
    rv = rendezvous()
    assert rv.handle(Cancel(Q, PATH)) == [Answer(Q, 404, "Nothing is on '/p'.")]
    assert rv.handle(Query(Q, PATH))[0].status == 404  # type: ignore[union-attr]


# -- status ---------------------------------------------------------------------------------


def test_query_reports_waiting_then_established_and_registers_nobody() -> None:
    rv = rendezvous()
    rv.handle(Join(R1, PATH, RECEIVER, 2))
    assert rv.handle(Query(Q, PATH)) == [StatusReply(Q, "waiting", 1, 2, None)]
    rv.handle(Join(R2, PATH, RECEIVER, 2))
    rv.handle(Join(S, PATH, SENDER, 2))
    assert rv.handle(Query(Q, PATH)) == [StatusReply(Q, "established", 2, 2, 1)]
    assert Q not in rv._waiting_of and Q not in rv._relay_of


# -- wait timeout ---------------------------------------------------------------------------


def test_waiting_parties_time_out_with_408_and_the_heap_skips_stale_entries() -> None:
    rv = rendezvous(wait_timeout=10)
    rv.handle(Join(R1, PATH, RECEIVER, 2), now=0)
    rv.handle(Join(S, PATH, SENDER, 2), now=5)
    rv.handle(Join(R2, "/other", RECEIVER, 1), now=1)
    rv.handle(Leave(R2, completed=False), now=2)  # its timer becomes stale
    assert rv.next_deadline() == 10
    assert rv.handle(Tick(9.9)) == []
    [reject] = rv.handle(Tick(10))
    assert isinstance(reject, Reject) and reject.party == R1 and reject.status == 408
    [reject, timed_out] = rv.handle(Tick(15))
    assert isinstance(reject, Reject) and reject.party == S and reject.status == 408
    assert timed_out == TimedOut(PATH)  # the pipe's last party: it never started
    assert rv.pipes == {} and rv.next_deadline() is None


def test_the_timer_heap_stays_proportional_to_what_waits() -> None:
    rv = rendezvous(wait_timeout=300)
    for i in range(5000):
        party = PartyId(1, 1, i)
        rv.handle(Join(party, f"/p{i}", RECEIVER, 1), now=i / 1000)
        rv.handle(Leave(party, completed=False))
    assert len(rv._timers) <= 1025
    rv.handle(Join(R1, PATH, RECEIVER, 1), now=10)
    assert rv.next_deadline() is not None
    assert rv.handle(Tick(310))[0].status == 408  # type: ignore[union-attr]


def test_established_parties_do_not_time_out() -> None:
    rv = rendezvous(wait_timeout=1)
    relay_of(rv)
    assert rv.handle(Tick(100)) == []


# -- read keys ------------------------------------------------------------------------------


def test_a_keyed_sender_binds_the_pipe() -> None:
    rv = rendezvous(held())
    rv.handle(Join(S, PATH, SENDER, 1, key=KEY))
    assert rv.handle(Join(R1, PATH, RECEIVER, 1))[0].status == 403  # type: ignore[union-attr]
    assert rv.handle(Join(R1, PATH, RECEIVER, 1, key=OTHER))[0].status == 403  # type: ignore[union-attr]
    assert rv.handle(Query(Q, PATH))[0] == Answer(Q, 403, rv.handle(Cancel(Q, PATH))[0].message)  # type: ignore[union-attr]
    assert isinstance(rv.handle(Join(R1, PATH, RECEIVER, 1, key=KEY))[-1], Establish)
    assert rv.handle(Join(W1, PATH, WATCHER, 1))[0].status == 403  # type: ignore[union-attr]
    assert rv.handle(Join(W1, PATH, WATCHER, 1, key=KEY)) == [WatcherStart(W1, 1)]


def test_a_keyed_sender_turns_keyless_waiting_readers_away() -> None:
    rv = rendezvous()
    rv.handle(Join(R1, PATH, RECEIVER, 1))
    rv.handle(Join(W1, PATH, WATCHER, 1))
    actions = rv.handle(Join(S, PATH, SENDER, 1, key=KEY))
    assert [type(a) for a in actions] == [Reject, Reject, Accepted]
    assert {a.party for a in actions[:2]} == {R1, W1}  # type: ignore[union-attr]
    assert rv.pipes[PATH].key == KEY


def test_a_reader_arriving_first_with_a_key_binds_the_pipe() -> None:
    rv = rendezvous()
    rv.handle(Join(R1, PATH, RECEIVER, 1, key=KEY))
    assert rv.handle(Join(S, PATH, SENDER, 1))[0].status == 403  # type: ignore[union-attr]
    assert isinstance(rv.handle(Join(S, PATH, SENDER, 1, key=KEY))[-1], Establish)


# -- limits ---------------------------------------------------------------------------------


def test_max_pipes_refuses_new_paths_only() -> None:
    rv = rendezvous(max_pipes=1)
    rv.handle(Join(R1, PATH, RECEIVER, 1))
    assert rv.handle(Join(R2, "/q", RECEIVER, 1))[0].status == 503  # type: ignore[union-attr]
    assert isinstance(rv.handle(Join(S, PATH, SENDER, 1))[-1], Establish)


def test_memory_budget_refuses_a_transfer_that_would_not_fit() -> None:
    rv = Rendezvous(Limits(max_memory=150), ring_cost=lambda n: 100 + n)
    relay_of(rv)
    rv.handle(Join(R2, "/q", RECEIVER, 1))
    actions = rv.handle(Join(Q, "/q", SENDER, 1))
    assert [type(a) for a in actions] == [Accepted, Reject, Reject]
    assert all(a.status == 503 for a in actions[1:]) and "/q" not in rv.pipes  # type: ignore[union-attr]
    assert rv.memory == 101
    rv.handle(Leave(R1, completed=True))
    rv.handle(Leave(S, completed=True))
    assert rv.memory == 0


# -- watchers -------------------------------------------------------------------------------


def test_watchers_wait_start_with_the_others_and_need_no_slot() -> None:
    rv = rendezvous(max_watchers=1)
    assert rv.handle(Join(W1, PATH, WATCHER, 1))[0].status == 404  # type: ignore[union-attr]
    rv.handle(Join(R1, PATH, RECEIVER, 1))
    assert rv.handle(Join(W1, PATH, WATCHER, 5)) == []  # any n: a watcher has no slot
    assert rv.handle(Join(W2, PATH, WATCHER, 1))[0].status == 503  # type: ignore[union-attr]
    establish = rv.handle(Join(S, PATH, SENDER, 1))[-1]
    assert isinstance(establish, Establish) and establish.watchers == (W1,)
    assert rv.handle(Join(W2, PATH, WATCHER, 1))[0].status == 503  # type: ignore[union-attr]
    assert rv.handle(Leave(W1, completed=False)) == []
    assert rv.handle(Join(W2, PATH, WATCHER, 1)) == [WatcherStart(W2, 1)]
    rv.handle(Leave(R1, completed=True))
    assert isinstance(rv.handle(Leave(S, completed=True))[-1], Release)  # watchers keep nothing alive
    assert rv.handle(Leave(W2, completed=False)) == []


def test_watchers_left_alone_on_a_waiting_pipe_are_turned_away() -> None:
    rv = rendezvous()
    rv.handle(Join(R1, PATH, RECEIVER, 1))
    rv.handle(Join(W1, PATH, WATCHER, 1))
    [reject] = rv.handle(Leave(R1, completed=False))
    assert isinstance(reject, Reject) and reject.party == W1 and reject.status == 404
    assert rv.pipes == {} and rv._waiting_of == {}


# -- resume and reconnect grace -------------------------------------------------------------


def test_a_resumable_receiver_keeps_its_slot_through_the_grace_and_takes_it_back() -> None:
    rv = rendezvous(held(100, 900, "e1"), reconnect_grace=10)
    relay = relay_of(rv, 2, resumable=True)
    assert rv.handle(Leave(R1, completed=False), now=1) == []  # nothing detached, nobody told
    assert relay.reserved == {0: 11}
    assert rv.handle(Join(R3, PATH, RECEIVER, 2, offset=50, resumable=True))[0].status == 410  # not held
    assert rv.handle(Join(R3, PATH, RECEIVER, 2, offset=500, epoch="e0"))[0].status == 410  # other pipe
    assert rv.handle(Join(R3, PATH, RECEIVER, 2, offset=500, epoch="e1", resumable=True)) == [Resume(R3, 1, 0)]
    assert relay.slots[R3] == 0 and not relay.reserved
    assert rv.handle(Tick(20)) == []  # the stale grace timer does nothing
    # No slot is reserved, but resumable R3 is connected: R1 waits for its drop, then 410.
    assert rv.handle(Join(R1, PATH, RECEIVER, 2, offset=500), now=20) == []
    assert rv.handle(Tick(30))[0].status == 410  # type: ignore[union-attr]


def test_a_resume_that_arrives_before_the_drop_waits_for_the_slot() -> None:
    """A browser reload: the new request can reach the owner before the old connection's
    drop; it is parked until that slot is reserved (or the grace runs out: 410)."""
    rv = rendezvous(held(0, 900), reconnect_grace=10)
    relay_of(rv, 1, resumable=True)
    assert rv.handle(Join(R2, PATH, RECEIVER, 1, offset=300, resumable=True), now=0) == []
    assert rv.handle(Join(R3, PATH, RECEIVER, 1, offset=300), now=0) == []
    assert rv.handle(Leave(R1, completed=False), now=1) == [Resume(R2, 1, 0)]
    [reject] = rv.handle(Tick(10))
    assert isinstance(reject, Reject) and reject.party == R3 and reject.status == 410
    assert rv.handle(Leave(R2, completed=True)) == [Finish(S, all_aborted=False)]


def test_parked_resumes_are_turned_away_when_the_pipe_ends() -> None:
    rv = rendezvous(held(), reconnect_grace=10)
    relay_of(rv, 1, resumable=True)
    rv.handle(Join(R2, PATH, RECEIVER, 1, offset=5))
    actions = rv.handle(Leave(S, completed=False))
    assert Break(1, (R1,)) in actions and any(isinstance(a, Reject) and a.party == R2 for a in actions)
    assert rv._parked == {}


def test_a_reloaded_page_takes_a_reserved_slot_without_an_offset() -> None:
    rv = rendezvous(held(100, 900), reconnect_grace=10)
    relay_of(rv, 1, resumable=True)
    assert rv.handle(Join(R2, PATH, RECEIVER, 1, resumable=True))[0].status == 400  # nothing reserved
    rv.handle(Leave(R1, completed=False))
    assert rv.handle(Join(R2, PATH, RECEIVER, 1))[0].status == 400  # a plain receiver: established
    assert rv.handle(Join(R2, PATH, RECEIVER, 1, resumable=True)) == [Resume(R2, 1, 0)]


def test_grace_expiry_is_a_plain_abort() -> None:
    rv = rendezvous(held(), reconnect_grace=10)
    relay_of(rv, 1, resumable=True)
    assert rv.handle(Leave(R1, completed=False), now=0) == []
    assert rv.handle(Tick(10)) == [Detach(1, 0), ReceiverAborted(S), Finish(S, all_aborted=True)]
    assert PATH not in rv.pipes
    assert rv.handle(Leave(S, completed=False)) == [Release(1, 0, 1, False, False, 0)]


def test_plain_receivers_and_fresh_joins_keep_piping_semantics() -> None:
    rv = rendezvous(held(), reconnect_grace=10)
    relay_of(rv, 2)
    assert rv.handle(Leave(R1, completed=False)) == [Detach(1, 0), ReceiverAborted(S)]
    assert rv.handle(Join(R3, PATH, RECEIVER, 2))[0].status == 400  # established already
    assert rv.handle(Join(R3, "/free", RECEIVER, 1, offset=10))[0].status == 410


def test_a_reserved_slot_holds_the_relay_after_the_sender_finished() -> None:
    rv = rendezvous(held(), reconnect_grace=5)
    relay_of(rv, 1, resumable=True)
    rv.handle(Leave(R1, completed=False), now=0)
    assert rv.handle(Leave(S, completed=True)) == []
    assert rv.handle(Join(R2, PATH, RECEIVER, 1, offset=10)) == [Resume(R2, 1, 0)]
    assert rv.handle(Leave(R2, completed=True)) == [Release(1, 1, 0, False, False, 0)]


def test_a_drain_ends_every_grace_at_once() -> None:
    """A draining server refuses every Join (503), so no dropped reader could take its slot
    back: Drain ends each reservation as its grace would, and a reader that drops during the
    drain gets none, so the drain is not held up for ``reconnect_grace``."""
    rv = rendezvous(held(), reconnect_grace=30)
    relay_of(rv, 2, resumable=True)
    assert rv.handle(Leave(R1, completed=False), now=0) == []
    assert rv.handle(Drain(), now=1) == [Detach(1, 0), ReceiverAborted(S)]
    assert rv.handle(Join(R3, PATH, RECEIVER, 2, offset=10, resumable=True))[0].status == 503  # type: ignore[union-attr]
    last = [Detach(1, 1), ReceiverAborted(S), Finish(S, all_aborted=True)]
    assert rv.handle(Leave(R2, completed=False), now=2) == last  # nothing reserved while draining
    assert rv.handle(Tick(40)) == []  # the grace timer is stale
    assert rv.handle(Leave(S, completed=False)) == [Release(1, 0, 2, False, False, 0)]


def test_a_drain_releases_an_ending_relay_held_only_by_a_reservation() -> None:
    rv = rendezvous(held(), reconnect_grace=30)
    relay_of(rv, 1, resumable=True)
    rv.handle(Leave(R1, completed=False), now=0)
    assert rv.handle(Leave(S, completed=True)) == []  # held for R1's grace
    assert rv.handle(Drain(), now=1) == [Detach(1, 0), Release(1, 0, 1, False, False, 0)]
    assert rv.relays == {}


def test_sender_vanishing_clears_reservations() -> None:
    rv = rendezvous(held(), reconnect_grace=5)
    relay_of(rv, 1, resumable=True)
    rv.handle(Leave(R1, completed=False), now=0)
    # The dropped receiver can no longer resume: it counts as aborted (the counts add up to n).
    assert rv.handle(Leave(S, completed=False)) == [Break(1, ()), Release(1, 0, 1, True, False, 0)]


# -- stall eviction -------------------------------------------------------------------------


def test_a_stalled_reader_is_evicted_once_and_the_others_go_on() -> None:
    rv = rendezvous()
    relay_of(rv, 3)
    assert rv.handle(Stalled(S, 1)) == [Evicted(R2), ReceiverEvicted(S)]
    assert rv.handle(Stalled(S, 1)) == []
    assert rv.handle(Leave(R2, completed=False)) == []  # counted once
    assert rv.handle(Stalled(R1, 0)) == []  # only the producer may report a stall
    rv.handle(Leave(R1, completed=True))
    assert rv.handle(Leave(R3, completed=True)) == [Finish(S, all_aborted=False)]
    assert rv.handle(Leave(S, completed=True)) == [Release(1, 2, 0, False, False, 1)]


# -- random sequences -----------------------------------------------------------------------

PARTIES = [PartyId(w, pid, serial) for w in (0, 1) for pid in (10, 11) for serial in (0, 1, 2)]
PATHS = ["/a", "/b"]
_keys = st.sampled_from(["", "", "", KEY])
_joins = st.builds(
    Join,
    st.sampled_from(PARTIES),
    st.sampled_from(PATHS),
    st.sampled_from(list(Role)),
    st.sampled_from([1, 1, 2, 2, 3]),
    st.just(()),
    _keys,
    st.sampled_from([-1, -1, -1, 0, 5, 2000]),
    st.sampled_from(["", "e1", "e2"]),
    st.booleans(),
    gaps=st.booleans(),
)
_events: st.SearchStrategy[Event] = st.one_of(
    _joins,
    _joins,
    _joins,
    st.builds(Leave, st.sampled_from(PARTIES), st.booleans()),
    st.builds(Cancel, st.sampled_from(PARTIES), st.sampled_from(PATHS), _keys),
    st.builds(Query, st.sampled_from(PARTIES), st.sampled_from(PATHS), _keys),
    st.builds(Stalled, st.sampled_from(PARTIES), st.integers(0, 3)),
    st.builds(Tick, st.floats(0, 40)),
    st.builds(WorkerGone, st.sampled_from([0, 1]), st.sampled_from([10, 11])),
    st.just(Drain()),
)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_events, min_size=8, max_size=60), st.booleans())
def test_random_lifecycle_sequences_keep_the_invariants(events: list[Event], last_completed: bool) -> None:
    """Any sequence with cancels, queries, stalls, clocks, keys, watchers and resumes:
    handle() never raises; each Establish gets exactly one Release, whose counts add up to
    the receivers; memory returns to 0; and after everybody left and time passed, nothing
    is left."""
    rv = Rendezvous(
        Limits(wait_timeout=5, reconnect_grace=3, max_pipes=3, max_watchers=2, max_memory=300),
        lambda relay_id: RingView(0, 1000, "e1"),
        lambda n: 100,
    )
    established: dict[int, Establish] = {}
    released: Counter[int] = Counter()
    clock = 0.0

    def feed(event: Event) -> None:
        nonlocal clock
        if isinstance(event, Tick):
            clock = max(clock, event.now)
            event = Tick(clock)
        for action in rv.handle(event, now=clock):
            if isinstance(action, Establish):
                established[action.relay_id] = action
            elif isinstance(action, Release):
                assert action.relay_id in established and released[action.relay_id] == 0
                released[action.relay_id] += 1
                counted = action.completed + action.aborted + action.evicted
                assert counted == len(established[action.relay_id].receivers), action
        assert not set(rv._waiting_of) & set(rv._relay_of)
        assert not set(rv._watching) & set(rv._relay_of)
        assert not set(rv._parked) & (set(rv._relay_of) | set(rv._waiting_of) | set(rv._watching))
        for party, relay_id in rv._parked.items():
            assert party in rv.relays[relay_id].parked
        for relay in rv.relays.values():
            assert not set(relay.slots.values()) & set(relay.reserved), "a slot held twice"
        assert rv.memory == 100 * len(rv.relays)

    for event in events:
        feed(event)
    for party in PARTIES:
        feed(Leave(party, last_completed))
    feed(Tick(clock + 100))
    assert set(released) == set(established)
    assert rv.pipes == {} and rv.relays == {} and rv.memory == 0
    assert rv._waiting_of == {} and rv._relay_of == {} and rv._watching == {} and rv._parked == {}
