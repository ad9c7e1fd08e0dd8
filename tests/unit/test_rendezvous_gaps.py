"""The rendezvous rows for readers that take gaps (``Join.gaps``: SSE and NDJSON, SPEC 2.4).

A resume point that is no longer held, or that belongs to an older pipe on the path (another
epoch), refuses a raw reader with 410; a reader that takes gaps is never refused for it: it
takes the reserved slot (and reports the gap itself) or, on a free or waiting path, joins
like a fresh receiver. Refusals that are not about the resume point stay as they are.
"""

from __future__ import annotations

from ringpipe.core.rendezvous import (
    Accepted,
    Establish,
    Join,
    Leave,
    Limits,
    PartyId,
    Reject,
    Relay,
    Rendezvous,
    Resume,
    RingView,
    Role,
    Tick,
)

SENDER, RECEIVER = Role.SENDER, Role.RECEIVER
S, S2 = PartyId(0, 100, 1), PartyId(0, 100, 2)
R1, R2, R3 = (PartyId(1, 200, i) for i in range(1, 4))
PATH = "/p"


def dropped_reader(oldest: int = 400, head: int = 1000) -> Rendezvous:
    """An established n=1 pipe whose resumable reader dropped: its slot is reserved."""
    rv = Rendezvous(Limits(reconnect_grace=10), lambda relay_id: RingView(oldest, head, "e1"))
    rv.handle(Join(R1, PATH, RECEIVER, 1, resumable=True), now=0)
    assert isinstance(rv.handle(Join(S, PATH, SENDER, 1), now=0)[-1], Establish)
    assert rv.handle(Leave(R1, completed=False), now=1) == []
    relay = rv.pipes[PATH]
    assert isinstance(relay, Relay) and relay.reserved
    return rv


def status_of(actions: list[object]) -> int | None:
    return actions[0].status if actions and isinstance(actions[0], Reject) else None


def test_an_offset_out_of_the_window_takes_the_slot_only_for_a_reader_that_takes_gaps() -> None:
    rv = dropped_reader()
    assert status_of(rv.handle(Join(R2, PATH, RECEIVER, 1, offset=50, epoch="e1", resumable=True))) == 410
    assert status_of(rv.handle(Join(R2, PATH, RECEIVER, 1, offset=5000, resumable=True))) == 410  # never reached
    assert rv.handle(Join(R3, PATH, RECEIVER, 1, offset=50, epoch="e1", resumable=True, gaps=True)) == [
        Resume(R3, 1, 0)
    ]


def test_an_older_pipes_epoch_takes_the_slot_only_for_a_reader_that_takes_gaps() -> None:
    rv = dropped_reader(oldest=0)
    assert status_of(rv.handle(Join(R2, PATH, RECEIVER, 1, offset=4, epoch="e0", resumable=True))) == 410
    assert rv.handle(Join(R3, PATH, RECEIVER, 1, offset=4, epoch="e0", resumable=True, gaps=True)) == [Resume(R3, 1, 0)]


def test_a_resume_that_takes_gaps_still_needs_a_slot() -> None:
    """Nothing reserved and nobody resumable connected: the pipe is someone else's (410 as
    for every resume without a slot); the gap rule does not make room on a full pipe."""
    rv = dropped_reader()
    assert rv.handle(Join(R2, PATH, RECEIVER, 1, offset=900, epoch="e1", resumable=False)) == [Resume(R2, 1, 0)]
    assert status_of(rv.handle(Join(R3, PATH, RECEIVER, 1, offset=4, epoch="e0", resumable=True, gaps=True))) == 410


def test_a_parked_resume_that_takes_gaps_gets_the_slot_when_the_drop_is_seen() -> None:
    """The resume comes before the old connection's drop (a browser reconnects at once)."""
    rv = Rendezvous(Limits(reconnect_grace=10), lambda relay_id: RingView(400, 1000, "e1"))
    rv.handle(Join(R1, PATH, RECEIVER, 1, resumable=True), now=0)
    rv.handle(Join(S, PATH, SENDER, 1), now=0)
    assert rv.handle(Join(R2, PATH, RECEIVER, 1, offset=4, epoch="e0", resumable=True, gaps=True), now=1) == []
    assert rv.handle(Leave(R1, completed=False), now=2) == [Resume(R2, 1, 0)]
    assert rv.handle(Tick(30)) == []


def test_on_a_free_or_waiting_path_a_resume_that_takes_gaps_joins_as_a_fresh_receiver() -> None:
    rv = Rendezvous(Limits(), lambda relay_id: RingView(0, 0, "e2"))
    assert status_of(rv.handle(Join(R1, PATH, RECEIVER, 1, offset=10, epoch="e1"))) == 410
    assert rv.handle(Join(R2, PATH, RECEIVER, 1, offset=10, epoch="e1", resumable=True, gaps=True)) == []
    actions = rv.handle(Join(S, PATH, SENDER, 1))
    assert isinstance(actions[0], Accepted) and isinstance(actions[-1], Establish)
    assert actions[-1].receivers == (R2,)
    # A waiting pipe (a sender there, no receiver yet) takes it as well.
    assert rv.handle(Join(S2, "/q", SENDER, 1))[0] == Accepted(S2, 1, None)
    actions = rv.handle(Join(R3, "/q", RECEIVER, 1, offset=7, resumable=True, gaps=True))
    assert isinstance(actions[-1], Establish) and actions[-1].receivers == (R3,)
