"""Worked examples of the pure ring arithmetic (``ringpipe.ring``)."""

from __future__ import annotations

import itertools

import pytest

from ringpipe.core.errors import RingpipeError, WouldBlock
from ringpipe.core.ring import Plan, Span, plan_read, plan_write, slowest

CAP = 8


# -- empty and full -------------------------------------------------------------------------


def test_read_of_empty_ring_would_block() -> None:
    """A reader that has caught up with the writer waits instead of reading stale bytes."""
    with pytest.raises(WouldBlock):
        plan_read(read_seq=0, write_seq=0, capacity=CAP, limit=4)
    with pytest.raises(WouldBlock):
        plan_read(read_seq=21, write_seq=21, capacity=CAP, limit=1)


def test_write_to_exactly_full_ring_would_block() -> None:
    """The writer never overwrites a byte the slowest reader has not read yet."""
    with pytest.raises(WouldBlock):
        plan_write(write_seq=CAP, slowest_read_seq=0, capacity=CAP, size=1)
    with pytest.raises(WouldBlock):
        plan_write(write_seq=29, slowest_read_seq=29 - CAP, capacity=CAP, size=100)


def test_would_block_is_a_ringpipe_error() -> None:
    """Callers may catch every deliberate ringpipe failure through one base class."""
    assert issubclass(WouldBlock, RingpipeError)


def test_full_ring_reads_everything() -> None:
    """A full ring (no spare slot) hands a reader all ``capacity`` bytes."""
    plan = plan_read(read_seq=3, write_seq=3 + CAP, capacity=CAP, limit=100)
    assert plan == Plan((Span(3, 5), Span(0, 3)), 3, 3 + CAP)


def test_empty_ring_takes_a_full_write() -> None:
    """With the reader caught up, the writer may fill the whole ring in one plan."""
    plan = plan_write(write_seq=5, slowest_read_seq=5, capacity=CAP, size=CAP)
    assert plan == Plan((Span(5, 3), Span(0, 5)), 5, 5 + CAP)


# -- partial plans --------------------------------------------------------------------------


def test_partial_write_when_little_room() -> None:
    """A write larger than the free room is cut to the room, never refused outright."""
    plan = plan_write(write_seq=6, slowest_read_seq=0, capacity=CAP, size=5)
    assert plan == Plan((Span(6, 2),), 6, 8)
    assert plan.size == 2


def test_write_smaller_than_room_is_taken_whole() -> None:
    """A write that fits is planned in full."""
    plan = plan_write(write_seq=2, slowest_read_seq=1, capacity=CAP, size=3)
    assert plan == Plan((Span(2, 3),), 2, 5)


def test_partial_read_honours_limit() -> None:
    """A reader never gets more than it asked for."""
    plan = plan_read(read_seq=1, write_seq=7, capacity=CAP, limit=2)
    assert plan == Plan((Span(1, 2),), 1, 3)


def test_read_takes_only_published_bytes() -> None:
    """A reader never gets bytes past ``write_seq``, whatever its limit."""
    plan = plan_read(read_seq=1, write_seq=4, capacity=CAP, limit=100)
    assert plan == Plan((Span(1, 3),), 1, 4)


# -- the wrap -------------------------------------------------------------------------------


def test_write_across_the_end_splits_into_two_spans() -> None:
    """A write that crosses the end of the data area continues at offset 0."""
    plan = plan_write(write_seq=6, slowest_read_seq=4, capacity=CAP, size=4)
    assert plan.spans == (Span(6, 2), Span(0, 2))
    assert (plan.seq, plan.next_seq) == (6, 10)


def test_read_across_the_end_splits_into_two_spans() -> None:
    """A read that crosses the end of the data area continues at offset 0."""
    plan = plan_read(read_seq=14, write_seq=19, capacity=CAP, limit=10)
    assert plan.spans == (Span(6, 2), Span(0, 3))
    assert (plan.seq, plan.next_seq) == (14, 19)


def test_range_ending_exactly_at_the_end_is_one_span() -> None:
    """A range that stops at the end of the data area has no empty second span."""
    assert plan_write(write_seq=4, slowest_read_seq=4, capacity=CAP, size=4).spans == (Span(4, 4),)
    assert plan_read(read_seq=12, write_seq=16, capacity=CAP, limit=4).spans == (Span(4, 4),)


def test_range_starting_at_a_lap_boundary_is_one_span() -> None:
    """Sequence ``k * capacity`` maps to offset 0."""
    assert plan_write(write_seq=16, slowest_read_seq=16, capacity=CAP, size=8).spans == (Span(0, 8),)


def test_sequences_beyond_64_bits_still_map_into_the_ring() -> None:
    """Sequences are Python ints: they never wrap, and only their low bits pick the offset."""
    seq = (1 << 70) + 6
    plan = plan_write(write_seq=seq, slowest_read_seq=seq - 2, capacity=CAP, size=10)
    assert plan == Plan((Span(6, 2), Span(0, 4)), seq, seq + 6)


def _check_spans(plan: Plan, capacity: int) -> None:
    assert 1 <= len(plan.spans) <= 2
    assert sum(span.length for span in plan.spans) == plan.size == plan.next_seq - plan.seq
    assert plan.spans[0].offset == plan.seq % capacity
    if len(plan.spans) == 2:
        assert plan.spans[0].offset + plan.spans[0].length == capacity
        assert plan.spans[1].offset == 0
    for span in plan.spans:
        assert span.length > 0
        assert 0 <= span.offset and span.offset + span.length <= capacity


@pytest.mark.parametrize("capacity", [1, 2, 8])
def test_spans_add_up_to_the_planned_size(capacity: int) -> None:
    """Every plan is one or two in-bounds, non-empty spans covering exactly ``next_seq - seq`` bytes."""
    for seq, used, size in itertools.product(range(3 * capacity), range(capacity + 1), range(1, 2 * capacity + 2)):
        if used < capacity:
            plan = plan_write(write_seq=seq + used, slowest_read_seq=seq, capacity=capacity, size=size)
            assert plan.seq == seq + used and plan.size == min(size, capacity - used)
            _check_spans(plan, capacity)
        if used > 0:
            plan = plan_read(read_seq=seq, write_seq=seq + used, capacity=capacity, limit=size)
            assert plan.seq == seq and plan.size == min(size, used)
            _check_spans(plan, capacity)


# -- invariant-breaking arguments -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"write_seq": 0, "slowest_read_seq": 0, "capacity": CAP, "size": 0},
        {"write_seq": 0, "slowest_read_seq": 0, "capacity": CAP, "size": -1},
        {"write_seq": 3, "slowest_read_seq": 4, "capacity": CAP, "size": 1},  # reader ahead of writer
        {"write_seq": CAP + 1, "slowest_read_seq": 0, "capacity": CAP, "size": 1},  # overrun already
        {"write_seq": 0, "slowest_read_seq": 0, "capacity": 0, "size": 1},
        {"write_seq": 0, "slowest_read_seq": 0, "capacity": 6, "size": 1},
        {"write_seq": 0, "slowest_read_seq": 0, "capacity": -8, "size": 1},
    ],
)
def test_plan_write_rejects_invariant_breaking_args(kwargs: dict[str, int]) -> None:
    """A caller bug surfaces as ValueError, never as a plan that corrupts the ring."""
    with pytest.raises(ValueError):
        plan_write(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"read_seq": 0, "write_seq": 1, "capacity": CAP, "limit": 0},
        {"read_seq": 0, "write_seq": 1, "capacity": CAP, "limit": -5},
        {"read_seq": 5, "write_seq": 4, "capacity": CAP, "limit": 1},  # reader ahead of writer
        {"read_seq": 0, "write_seq": CAP + 1, "capacity": CAP, "limit": 1},  # reader was overrun
        {"read_seq": 0, "write_seq": 1, "capacity": 12, "limit": 1},
        {"read_seq": 0, "write_seq": 0, "capacity": 0, "limit": 1},
    ],
)
def test_plan_read_rejects_invariant_breaking_args(kwargs: dict[str, int]) -> None:
    """A caller bug surfaces as ValueError, never as a plan that reads overwritten bytes."""
    with pytest.raises(ValueError):
        plan_read(**kwargs)


def test_bad_args_are_value_error_not_would_block() -> None:
    """An invariant break is not mistaken for "retry later": it is checked before emptiness/fullness."""
    with pytest.raises(ValueError) as info:
        plan_read(read_seq=0, write_seq=0, capacity=CAP, limit=0)
    assert not isinstance(info.value, WouldBlock)
    with pytest.raises(ValueError) as info:
        plan_write(write_seq=CAP, slowest_read_seq=0, capacity=CAP, size=0)
    assert not isinstance(info.value, WouldBlock)


# -- slowest --------------------------------------------------------------------------------


def test_slowest_with_no_readers_is_write_seq() -> None:
    """With every reader detached, nobody gates the writer: it sees an empty ring."""
    assert slowest(42, []) == 42
    plan = plan_write(write_seq=42, slowest_read_seq=slowest(42, []), capacity=CAP, size=100)
    assert plan.size == CAP


def test_slowest_is_the_minimum_attached_read_seq() -> None:
    """The writer is gated by the reader furthest behind, given as any iterable."""
    assert slowest(10, [7, 3, 9]) == 3
    assert slowest(10, iter([10, 8])) == 8
    assert slowest(10, (s for s in [5])) == 5
