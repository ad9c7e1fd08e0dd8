"""The owner-side rendezvous, walked row by row through the table in ``rendezvous/machine.py``.

Each test names the (state, event) row it covers. Parties are ``PartyId(worker, pid,
serial)``; the sender lives on worker 0, receivers on worker 1 unless a test needs otherwise.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringpipe.core.rendezvous import (
    SHUTTING_DOWN,
    Accepted,
    Action,
    Break,
    Detach,
    Drain,
    Establish,
    Event,
    Finish,
    Join,
    Leave,
    PartyId,
    ReceiverAborted,
    ReceiverConnected,
    Reject,
    Relay,
    Release,
    Rendezvous,
    Role,
    Waiting,
    WorkerGone,
)

SENDER, RECEIVER = Role.SENDER, Role.RECEIVER
S = PartyId(0, 100, 1)
S2 = PartyId(0, 100, 2)
R1, R2, R3, R4 = (PartyId(1, 200, i) for i in range(1, 5))
PATH = "/p"
HEADERS = (("content-type", "text/plain"), ("x-piping", "a"))


def send(party: PartyId = S, n: int = 1, path: str = PATH, headers: tuple[tuple[str, str], ...] = ()) -> Join:
    return Join(party, path, SENDER, n, headers)


def recv(party: PartyId, n: int = 1, path: str = PATH) -> Join:
    return Join(party, path, RECEIVER, n)


def established(n: int, *, path: str = PATH) -> tuple[Rendezvous, tuple[PartyId, ...]]:
    """A rendezvous with relay 1 on ``path``: sender ``S`` and receivers R1.. in slots 0.."""
    rv = Rendezvous()
    receivers = (R1, R2, R3, R4)[:n]
    for r in receivers:
        rv.handle(recv(r, n, path))
    actions = rv.handle(send(S, n, path))
    assert actions[-1] == Establish(1, path, S, receivers, ())
    return rv, receivers


def assert_free(rv: Rendezvous, path: str = PATH) -> None:
    assert path not in rv.pipes


def assert_established(rv: Rendezvous, path: str = PATH) -> None:
    assert isinstance(rv.pipes.get(path), Relay)


# -- free --------------------------------------------------------------------------------


def test_free_join_sender_is_accepted_with_no_count() -> None:
    """free + Join(sender) -> waiting; the sender's log starts with no 'connected' count."""
    rv = Rendezvous()
    assert rv.handle(send(S, 2)) == [Accepted(S, 2, None)]
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting)
    assert (waiting.sender, waiting.n, waiting.receivers) == (S, 2, [])


def test_free_join_receiver_waits_silently() -> None:
    """free + Join(receiver) -> waiting with no action: a receiver gets no response until the transfer."""
    rv = Rendezvous()
    assert rv.handle(recv(R1, 2)) == []
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting)
    assert (waiting.sender, waiting.n, waiting.receivers) == (None, 2, [R1])


# -- waiting: arrival orders ------------------------------------------------------------------


def test_n1_sender_first() -> None:
    """Sender then receiver: the sender hears of the receiver, then the relay is established."""
    rv = Rendezvous()
    assert rv.handle(send(S, 1, headers=HEADERS)) == [Accepted(S, 1, None)]
    assert rv.handle(recv(R1)) == [ReceiverConnected(S), Establish(1, PATH, S, (R1,), HEADERS)]
    assert_established(rv)


def test_n1_receiver_first() -> None:
    """Receiver then sender: the sender is told one receiver is already connected, then establish."""
    rv = Rendezvous()
    assert rv.handle(recv(R1)) == []
    assert rv.handle(send(S, 1, headers=HEADERS)) == [Accepted(S, 1, 1), Establish(1, PATH, S, (R1,), HEADERS)]
    assert_established(rv)


def test_n3_sender_first() -> None:
    """n=3, sender first: one ReceiverConnected per receiver; establish on the third, slots in arrival order."""
    rv = Rendezvous()
    assert rv.handle(send(S, 3)) == [Accepted(S, 3, None)]
    assert rv.handle(recv(R2, 3)) == [ReceiverConnected(S)]
    assert rv.handle(recv(R1, 3)) == [ReceiverConnected(S)]
    assert isinstance(rv.pipes[PATH], Waiting)
    assert rv.handle(recv(R3, 3)) == [ReceiverConnected(S), Establish(1, PATH, S, (R2, R1, R3), ())]
    assert_established(rv)


def test_n3_receivers_first() -> None:
    """n=3, all receivers first: no action until the sender, who is told 3 are connected."""
    rv = Rendezvous()
    for r in (R1, R2, R3):
        assert rv.handle(recv(r, 3)) == []
    assert rv.handle(send(S, 3)) == [Accepted(S, 3, 3), Establish(1, PATH, S, (R1, R2, R3), ())]


def test_n3_sender_in_the_middle() -> None:
    """n=3, sender after one receiver: connected=1, then a ReceiverConnected for each later receiver."""
    rv = Rendezvous()
    assert rv.handle(recv(R1, 3)) == []
    assert rv.handle(send(S, 3)) == [Accepted(S, 3, 1)]
    assert rv.handle(recv(R2, 3)) == [ReceiverConnected(S)]
    assert rv.handle(recv(R3, 3)) == [ReceiverConnected(S), Establish(1, PATH, S, (R1, R2, R3), ())]


def test_relay_ids_are_fresh_per_establish() -> None:
    """Each Establish gets a new relay id, so two transfers never share a ring name."""
    rv = Rendezvous()
    rv.handle(send(S, 1, "/a"))
    assert rv.handle(recv(R1, 1, "/a"))[-1].relay_id == 1  # type: ignore[union-attr]
    rv.handle(send(S2, 1, "/b"))
    assert rv.handle(recv(R2, 1, "/b"))[-1].relay_id == 2  # type: ignore[union-attr]


def test_paths_are_independent() -> None:
    """A party waiting on one path does not affect another path."""
    rv = Rendezvous()
    assert rv.handle(send(S, 1, "/a")) == [Accepted(S, 1, None)]
    assert rv.handle(send(S2, 2, "/b")) == [Accepted(S2, 2, None)]
    assert rv.handle(recv(R1, 2, "/b")) == [ReceiverConnected(S2)]
    assert isinstance(rv.pipes["/a"], Waiting)


# -- waiting: rejections ------------------------------------------------------------------


def test_second_sender_is_rejected() -> None:
    """waiting + Join(sender) with a sender present -> 400 'Another sender ...'; the first stays."""
    rv = Rendezvous()
    rv.handle(send(S, 1))
    assert rv.handle(send(S2, 1)) == [Reject(S2, 400, "Another sender has been connected on '/p'.")]
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting) and waiting.sender == S
    assert rv.handle(recv(R1)) == [ReceiverConnected(S), Establish(1, PATH, S, (R1,), ())]


def test_second_sender_check_comes_before_n_check() -> None:
    """A duplicate sender with a different n is told about the sender, not about n."""
    rv = Rendezvous()
    rv.handle(send(S, 1))
    assert rv.handle(send(S2, 5)) == [Reject(S2, 400, "Another sender has been connected on '/p'.")]


def test_receiver_with_other_n_is_rejected() -> None:
    """waiting + Join(receiver), n disagrees -> 400 with the expected and the given n."""
    rv = Rendezvous()
    rv.handle(send(S, 2))
    assert rv.handle(recv(R1, 3)) == [Reject(R1, 400, "The number of receivers should be 2 but 3.")]
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting) and waiting.receivers == []


def test_sender_with_other_n_is_rejected() -> None:
    """waiting + Join(sender), n disagrees with the receivers already there -> 400, the receivers stay."""
    rv = Rendezvous()
    rv.handle(recv(R1, 2))
    assert rv.handle(send(S, 1)) == [Reject(S, 400, "The number of receivers should be 2 but 1.")]
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting) and (waiting.sender, waiting.receivers) == (None, [R1])


def test_receiver_beyond_n_is_rejected() -> None:
    """waiting + Join(receiver) with every slot taken (no sender yet) -> 400 '... reached limits.'"""
    rv = Rendezvous()
    rv.handle(recv(R1, 2))
    rv.handle(recv(R2, 2))
    assert rv.handle(recv(R3, 2)) == [Reject(R3, 400, "The number of receivers has reached limits.")]
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting) and waiting.receivers == [R1, R2]


@pytest.mark.parametrize("role", [SENDER, RECEIVER])
def test_join_on_established_path_is_rejected(role: Role) -> None:
    """established + Join(any) -> 400 '... established already.'; the relay is untouched."""
    rv, _ = established(1)
    newcomer = PartyId(2, 300, 1)
    assert rv.handle(Join(newcomer, PATH, role, 1)) == [
        Reject(newcomer, 400, "Connection on '/p' has been established already.")
    ]
    assert rv.relays[1].slots == {R1: 0}


def test_rejected_party_is_forgotten() -> None:
    """A rejected party holds nothing: its Leave is a no-op and the pipe is unchanged."""
    rv = Rendezvous()
    rv.handle(send(S, 1))
    rv.handle(send(S2, 1))
    assert rv.handle(Leave(S2, completed=False)) == []
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting) and waiting.sender == S
    assert rv.parties_on(0) == [S]


# -- waiting: leaves ----------------------------------------------------------------------


def test_waiting_receiver_leave_frees_its_slot() -> None:
    """waiting + Leave(receiver) -> the slot is free for another receiver."""
    rv = Rendezvous()
    rv.handle(recv(R1, 2))
    rv.handle(recv(R2, 2))
    assert rv.handle(recv(R3, 2)) == [Reject(R3, 400, "The number of receivers has reached limits.")]
    assert rv.handle(Leave(R1, completed=False)) == []
    assert rv.handle(recv(R3, 2)) == []
    assert rv.handle(send(S, 2)) == [Accepted(S, 2, 2), Establish(1, PATH, S, (R2, R3), ())]


def test_waiting_sender_leave_lets_another_sender_in() -> None:
    """waiting + Leave(sender) -> a new sender may join and is told how many receivers wait."""
    rv = Rendezvous()
    rv.handle(send(S, 2, headers=HEADERS))
    rv.handle(recv(R1, 2))
    assert rv.handle(Leave(S, completed=False)) == []
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting) and (waiting.sender, waiting.receiver_headers) == (None, ())
    assert rv.handle(send(S2, 2)) == [Accepted(S2, 2, 1)]
    assert rv.handle(recv(R2, 2)) == [ReceiverConnected(S2), Establish(1, PATH, S2, (R1, R2), ())]


def test_last_waiting_party_leaving_frees_the_path() -> None:
    """waiting + Leave(last party) -> free: the next Join may pick any n."""
    rv = Rendezvous()
    rv.handle(send(S, 2))
    rv.handle(recv(R1, 2))
    rv.handle(Leave(R1, completed=False))
    assert PATH in rv.pipes
    rv.handle(Leave(S, completed=False))
    assert_free(rv)
    assert rv.handle(send(S2, 5)) == [Accepted(S2, 5, None)]


# -- established: receivers leave ------------------------------------------------------------


def test_last_receiver_completed_finishes_the_sender() -> None:
    """established + Leave(last receiver, completed) -> Finish(sender, all_aborted=False); path free."""
    rv, _ = established(1)
    assert rv.handle(Leave(R1, completed=True)) == [Finish(S, all_aborted=False)]
    assert_free(rv)
    assert rv.handle(Leave(S, completed=True)) == [Release(1, completed=1, aborted=0, broken=False)]
    assert rv.relays == {}


def test_receiver_aborted_detaches_and_tells_the_sender() -> None:
    """established + Leave(receiver, aborted) -> Detach(its slot) + ReceiverAborted; the relay goes on."""
    rv, _ = established(3)
    assert rv.handle(Leave(R2, completed=False)) == [Detach(1, 1), ReceiverAborted(S)]
    assert_established(rv)
    assert rv.handle(Leave(R1, completed=True)) == []
    assert rv.handle(Leave(R3, completed=True)) == [Finish(S, all_aborted=False)]
    assert_free(rv)
    assert rv.handle(Leave(S, completed=True)) == [Release(1, completed=2, aborted=1, broken=False)]


def test_last_receiver_aborted_finishes_with_all_aborted() -> None:
    """Every receiver aborted -> the last one also brings Finish(all_aborted=True) and frees the path."""
    rv, _ = established(2)
    assert rv.handle(Leave(R1, completed=False)) == [Detach(1, 0), ReceiverAborted(S)]
    assert rv.handle(Leave(R2, completed=False)) == [Detach(1, 1), ReceiverAborted(S), Finish(S, all_aborted=True)]
    assert_free(rv)
    assert rv.handle(Leave(S, completed=False)) == [Release(1, completed=0, aborted=2, broken=False)]


def test_last_receiver_aborted_after_one_completed_is_not_all_aborted() -> None:
    """all_aborted is false as soon as one receiver got the whole body."""
    rv, _ = established(2)
    assert rv.handle(Leave(R1, completed=True)) == []
    assert rv.handle(Leave(R2, completed=False)) == [Detach(1, 1), ReceiverAborted(S), Finish(S, all_aborted=False)]


def test_freed_path_takes_a_new_transfer_while_the_old_relay_lives() -> None:
    """After Finish the path is free: a new Join starts a new waiting pipe; the old Release leaves it alone."""
    rv, _ = established(1)
    rv.handle(Leave(R1, completed=True))
    assert 1 in rv.relays
    assert rv.handle(send(S2, 2)) == [Accepted(S2, 2, None)]
    assert isinstance(rv.pipes[PATH], Waiting)
    assert rv.handle(Leave(S, completed=True)) == [Release(1, completed=1, aborted=0, broken=False)]
    waiting = rv.pipes[PATH]
    assert isinstance(waiting, Waiting) and waiting.sender == S2
    assert rv.handle(recv(R2, 2)) == [ReceiverConnected(S2)]
    assert rv.handle(recv(R3, 2)) == [ReceiverConnected(S2), Establish(2, PATH, S2, (R2, R3), ())]


# -- established: the sender leaves ----------------------------------------------------------


def test_sender_aborted_mid_body_breaks_remaining_receivers() -> None:
    """established + Leave(sender, aborted) -> Break(relay, receivers left) and the path is free."""
    rv, _ = established(3)
    rv.handle(Leave(R2, completed=False))
    assert rv.handle(Leave(S, completed=False)) == [Break(1, (R1, R3))]
    assert_free(rv)
    assert rv.handle(send(S2, 1)) == [Accepted(S2, 1, None)]  # a new transfer may start


def test_broken_relay_is_released_once_its_receivers_leave() -> None:
    """After a Break, receivers only detach (no ReceiverAborted, no Finish); the last brings Release(broken)."""
    rv, _ = established(2)
    assert rv.handle(Leave(S, completed=False)) == [Break(1, (R1, R2))]
    assert rv.handle(Leave(R1, completed=False)) == [Detach(1, 0)]
    assert rv.handle(Leave(R2, completed=False)) == [Detach(1, 1), Release(1, completed=0, aborted=2, broken=True)]
    assert rv.relays == {}


def test_sender_completed_keeps_path_until_receivers_are_done() -> None:
    """established + Leave(sender, completed) -> no action; readers drain, the last releases the ring."""
    rv, _ = established(2)
    assert rv.handle(Leave(S, completed=True)) == []
    assert_established(rv)
    assert rv.handle(Leave(R1, completed=True)) == []
    assert rv.handle(Leave(R2, completed=False)) == [Detach(1, 1), Release(1, completed=1, aborted=1, broken=False)]
    assert_free(rv)


def test_sender_aborting_after_all_receivers_left_is_not_a_break() -> None:
    """A sender that aborts once every receiver is gone breaks nobody: Release(broken=False)."""
    rv, _ = established(1)
    rv.handle(Leave(R1, completed=False))
    assert rv.handle(Leave(S, completed=False)) == [Release(1, completed=0, aborted=1, broken=False)]


def test_release_comes_once_and_later_leaves_are_ignored() -> None:
    """Exactly one Release per Establish; repeated Leaves afterwards yield nothing."""
    rv, _ = established(1)
    actions = rv.handle(Leave(R1, completed=True)) + rv.handle(Leave(S, completed=True))
    assert [a for a in actions if isinstance(a, Release)] == [Release(1, 1, 0, False)]
    assert rv.handle(Leave(S, completed=True)) == []
    assert rv.handle(Leave(R1, completed=False)) == []
    assert rv.relays == {} and rv.pipes == {}


# -- WorkerGone -----------------------------------------------------------------------------


def test_worker_gone_aborts_its_receivers_only() -> None:
    """WorkerGone(w, pid) acts as Leave(aborted) for that process's parties; a newer pid on slot w stays."""
    old, new = PartyId(1, 200, 1), PartyId(1, 201, 1)
    rv = Rendezvous()
    rv.handle(recv(old, 2))
    rv.handle(recv(new, 2))
    rv.handle(send(S, 2))
    assert rv.handle(WorkerGone(1, 200)) == [Detach(1, 0), ReceiverAborted(S)]
    assert rv.relays[1].slots == {new: 1}
    assert rv.parties_on(1) == [new]


def test_worker_gone_forgets_its_waiting_parties() -> None:
    """A dead worker's waiting parties are forgotten; paths left empty become free."""
    rv = Rendezvous()
    rv.handle(recv(R1, 1, "/a"))
    rv.handle(send(S, 2, "/b"))
    rv.handle(recv(R2, 2, "/b"))
    assert rv.handle(WorkerGone(1, 200)) == []
    assert_free(rv, "/a")
    waiting = rv.pipes["/b"]
    assert isinstance(waiting, Waiting) and waiting.receivers == [] and waiting.sender == S


def test_worker_gone_with_the_sender_breaks_the_relay() -> None:
    """The producer's worker dying mid-body breaks the relay for every receiver on other workers."""
    rv, _ = established(2)
    assert rv.handle(WorkerGone(0, 100)) == [Break(1, (R1, R2))]
    assert_free(rv)
    assert rv.handle(WorkerGone(1, 200)) == [Detach(1, 0), Detach(1, 1), Release(1, 0, 2, True)]


def test_worker_gone_with_every_party_releases_once() -> None:
    """All parties on one dead worker: one Release, counting every receiver as aborted."""
    s, r1, r2 = PartyId(3, 9, 1), PartyId(3, 9, 2), PartyId(3, 9, 3)
    rv = Rendezvous()
    rv.handle(send(s, 2))
    rv.handle(recv(r1, 2))
    rv.handle(recv(r2, 2))
    actions = rv.handle(WorkerGone(3, 9))
    assert actions == [Break(1, (r1, r2)), Detach(1, 0), Detach(1, 1), Release(1, completed=0, aborted=2, broken=True)]
    assert rv.pipes == {} and rv.relays == {}


def test_worker_gone_for_unknown_or_dead_worker_is_a_no_op() -> None:
    """A WorkerGone with nobody on it, or repeated, yields nothing."""
    rv, _ = established(1)
    assert rv.handle(WorkerGone(7, 1)) == []
    assert rv.handle(WorkerGone(1, 999)) == []
    rv.handle(WorkerGone(1, 200))
    assert rv.handle(WorkerGone(1, 200)) == []


# -- Drain ----------------------------------------------------------------------------------


def test_drain_turns_waiting_parties_away_with_503() -> None:
    """Drain -> Reject(503) for every waiting party; those paths are free."""
    rv = Rendezvous()
    rv.handle(send(S, 2, "/a"))
    rv.handle(recv(R1, 2, "/a"))
    rv.handle(recv(R2, 1, "/b"))
    actions = rv.handle(Drain())
    assert sorted(actions, key=lambda a: a.party) == [  # type: ignore[union-attr]
        Reject(S, 503, SHUTTING_DOWN),
        Reject(R1, 503, SHUTTING_DOWN),
        Reject(R2, 503, SHUTTING_DOWN),
    ]
    assert SHUTTING_DOWN == "The server is shutting down."
    assert rv.pipes == {}


def test_drain_refuses_new_joins_and_spares_relays() -> None:
    """After Drain every Join gets 503; running relays finish normally."""
    rv, _ = established(1)
    assert rv.handle(Drain()) == []
    assert rv.handle(send(S2, 1, "/new")) == [Reject(S2, 503, SHUTTING_DOWN)]
    assert rv.handle(recv(R2, 1, "/new")) == [Reject(R2, 503, SHUTTING_DOWN)]
    assert rv.handle(Join(R3, PATH, RECEIVER, 1)) == [Reject(R3, 503, SHUTTING_DOWN)]
    assert rv.handle(Leave(R1, completed=True)) == [Finish(S, all_aborted=False)]
    assert rv.handle(Leave(S, completed=True)) == [Release(1, 1, 0, False)]
    assert rv.handle(Drain()) == []


# -- stale and duplicate events -----------------------------------------------------------


def test_stale_and_duplicate_events_yield_nothing() -> None:
    """Unknown leaves, repeated joins and repeated drains are no-ops, never errors."""
    rv = Rendezvous()
    assert rv.handle(Leave(R1, completed=True)) == []
    assert rv.handle(WorkerGone(0, 1)) == []
    rv.handle(send(S, 2))
    assert rv.handle(send(S, 2)) == []  # the same party again
    assert rv.handle(recv(S, 2)) == []  # ... even in another role
    rv.handle(recv(R1, 2))
    assert rv.handle(recv(R1, 2)) == []
    assert rv.handle(recv(R1, 2, "/elsewhere")) == []
    assert "/elsewhere" not in rv.pipes
    rv.handle(recv(R2, 2))
    assert rv.handle(recv(R2, 2)) == []  # in a relay now
    assert rv.handle(send(S, 2)) == []
    assert rv.relays[1].slots == {R1: 0, R2: 1}


# -- random event sequences ---------------------------------------------------------------

PARTIES = [PartyId(w, pid, serial) for w in (0, 1) for pid in (10, 11) for serial in (0, 1)]
PATHS = ["/a", "/b"]

_joins = st.builds(
    Join,
    st.sampled_from(PARTIES),
    st.sampled_from(PATHS),
    st.sampled_from(list(Role)),
    st.sampled_from([1, 1, 1, 2, 2, 3]),  # mostly agreeing n, so relays do get established
)
_events: st.SearchStrategy[Event] = st.one_of(
    _joins,
    _joins,
    st.builds(Leave, st.sampled_from(PARTIES), st.booleans()),
    st.builds(WorkerGone, st.sampled_from([0, 1]), st.sampled_from([10, 11])),
)
_drain_or_not = st.sampled_from([False] * 60 + [True])


def _check_state(rv: Rendezvous) -> None:
    assert not set(rv._waiting_of) & set(rv._relay_of), "a party is both waiting and relaying"
    for path, pipe in rv.pipes.items():
        assert pipe.path == path
        if isinstance(pipe, Waiting):
            assert pipe.parties(), f"empty Waiting left on {path}"
            assert all(rv._waiting_of[p] == path for p in pipe.parties())
            assert len(pipe.receivers) <= pipe.n
        else:
            assert rv.relays.get(pipe.relay_id) is pipe, "pipes holds a released relay"
            assert not pipe.path_freed
    for party, relay_id in rv._relay_of.items():
        relay = rv.relays[relay_id]
        assert party == relay.sender or party in relay.slots


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_events, _drain_or_not), min_size=8, max_size=50), st.booleans())
def test_random_event_sequences_keep_the_invariants(steps: list[tuple[Event, bool]], last_completed: bool) -> None:
    """Any event sequence: handle() never raises, no party is in two places, and each Establish gets one Release."""
    rv = Rendezvous()
    established_: dict[int, Establish] = {}
    released: Counter[int] = Counter()
    all_actions: list[Action] = []

    def feed(event: Event) -> None:
        actions = rv.handle(event)
        all_actions.extend(actions)
        for action in actions:
            if isinstance(action, Establish):
                assert action.relay_id not in established_
                assert len(action.receivers) == len(set(action.receivers))
                established_[action.relay_id] = action
            elif isinstance(action, Release):
                assert action.relay_id in established_, "Release without Establish"
                released[action.relay_id] += 1
                assert released[action.relay_id] == 1, "second Release"
                assert action.completed + action.aborted == len(established_[action.relay_id].receivers)
            elif isinstance(action, Break | Detach):
                assert action.relay_id in established_ and action.relay_id not in released
        _check_state(rv)

    for event, drain in steps:
        feed(Drain() if drain else event)
    for party in PARTIES:  # everybody leaves
        feed(Leave(party, last_completed))

    assert set(released) == set(established_), "an Establish without its Release"
    assert rv.pipes == {} and rv.relays == {}
    assert rv._waiting_of == {} and rv._relay_of == {}
    breaks = {a.relay_id for a in all_actions if isinstance(a, Break)}
    releases = [a for a in all_actions if isinstance(a, Release)]
    assert {r.relay_id for r in releases if r.broken} == breaks
