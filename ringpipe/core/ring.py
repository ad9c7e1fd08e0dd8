"""Single-producer, multi-consumer byte-ring arithmetic. Pure: no buffer, no clock, no I/O.

Theory of operation
-------------------
One writer and up to 256 readers share a ring of ``capacity`` bytes (a power of two).
Positions are *sequences*: the number of bytes ever written (``write_seq``) or ever read by
one reader (``read_seq``). Sequences only grow and never wrap (Python ints, and 2**63 bytes
is three centuries at 1 GB/s); a byte's place in the data area is ``seq & (capacity - 1)``.
Because "full" is ``write_seq - slowest_read_seq == capacity`` and "empty" is
``write_seq == read_seq``, neither needs a spare slot or a flag (LMAX Disruptor, bslatkin's
``Position``).

Invariants (the hypothesis model in ``tests/unit/test_ring_model.py`` checks them):

- For every attached reader *i*: ``0 <= write_seq - read_seq[i] <= capacity``.
- The writer never plans over a byte the slowest attached reader has not read: a write plan
  covers at most ``capacity - (write_seq - slowest_read_seq)`` bytes.
- A plan is one span, or two when the range crosses the end of the data area; its spans'
  lengths add up to ``next_seq - seq``.
- A detached reader stops gating the writer (the caller leaves it out of ``slowest``).
- Replay window: the writer is also gated by ``write_seq - window`` (``gate``), so the
  newest ``window`` bytes stay in the ring after every reader has read them. Every byte at
  or after the gate is intact; a reader without a cursor in the header (a watcher, or a
  receiver catching up after a resume) copies bytes out, then re-computes the gate, and
  trusts the copy only if its start is still at or after it (``held``): the writer only
  ever overwrites bytes before the gate it planned with, and gates only grow.

Growth (``grown``): a ring may start small and double while nothing has wrapped yet, that is
while ``write_seq <= capacity``. Then every byte written so far sits at ``offset == seq``, and
``seq & (2 * capacity - 1) == seq`` too, so doubling moves no byte and changes no offset any
reader could hold: the writer publishes the larger capacity before any byte that needs it,
and readers load the capacity after ``write_seq``. Once a byte has wrapped, the capacity is
fixed for the ring's life. A ring grows only when the writer is short of room, so a stream
whose readers keep up and that keeps no replay window never grows.

The binding (``shm/segment.py``) copies the payload first, then publishes ``next_seq`` with one
aligned 8-byte store, so a reader never sees a sequence ahead of the bytes behind it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ringpipe.core.errors import WouldBlock

__all__ = ["Plan", "Span", "gate", "grown", "held", "plan_read", "plan_write", "slowest"]


class Span(NamedTuple):
    """``length`` bytes starting ``offset`` bytes into the data area.

    Named tuples rather than frozen dataclasses: the relay plans a read or a write per
    socket operation, and building a frozen dataclass costs several times more.
    """

    offset: int
    length: int


class Plan(NamedTuple):
    """Where to copy, and the sequence to publish once the copy is done."""

    spans: tuple[Span, ...]
    seq: int
    next_seq: int

    @property
    def size(self) -> int:
        return self.next_seq - self.seq


#: ``tuple.__new__``: a span or plan built without running the named tuple's Python-level
#: ``__new__`` (the relay plans a read and a write per token).
_new = tuple.__new__


def _spans(seq: int, size: int, capacity: int) -> tuple[Span, ...]:
    start = seq & (capacity - 1)
    first = capacity - start
    if size <= first:
        return (_new(Span, (start, size)),)
    return (_new(Span, (start, first)), _new(Span, (0, size - first)))


def _check_capacity(capacity: int) -> None:
    if capacity <= 0 or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two, got {capacity}")


def plan_write(*, write_seq: int, slowest_read_seq: int, capacity: int, size: int) -> Plan:
    """Plan a write of up to ``size`` bytes; fewer when the ring has less room.

    Args:
        write_seq: bytes written so far.
        slowest_read_seq: the smallest ``read_seq`` among attached readers (``write_seq``
            itself when none is attached: then nobody gates the writer).
        capacity: ring size in bytes, a power of two.
        size: bytes the caller wants to write; must be positive.

    Raises:
        WouldBlock: the ring is full; wait until the slowest reader advances, then retry.
        ValueError: the arguments break an invariant (a bug in the caller).
    """
    if capacity <= 0 or capacity & (capacity - 1):
        _check_capacity(capacity)
    used = write_seq - slowest_read_seq
    if size <= 0 or not 0 <= used <= capacity:
        raise ValueError(f"bad write request: size={size}, used={used}, capacity={capacity}")
    room = capacity - used
    if room == 0:
        raise WouldBlock("ring full")
    take = size if size <= room else room
    return _new(Plan, (_spans(write_seq, take, capacity), write_seq, write_seq + take))


def plan_read(*, read_seq: int, write_seq: int, capacity: int, limit: int) -> Plan:
    """Plan a read of up to ``limit`` published bytes, in order, from ``read_seq``.

    Raises:
        WouldBlock: nothing new is published; wait for the writer, then retry.
        ValueError: the arguments break an invariant (a bug in the caller).
    """
    if capacity <= 0 or capacity & (capacity - 1):
        _check_capacity(capacity)
    ready = write_seq - read_seq
    if limit <= 0 or not 0 <= ready <= capacity:
        raise ValueError(f"bad read request: limit={limit}, ready={ready}, capacity={capacity}")
    if ready == 0:
        raise WouldBlock("nothing published")
    take = limit if limit <= ready else ready
    return _new(Plan, (_spans(read_seq, take, capacity), read_seq, read_seq + take))


def slowest(write_seq: int, read_seqs: Iterable[int]) -> int:
    """The sequence that gates the writer: the minimum over attached readers, else ``write_seq``."""
    return min(read_seqs, default=write_seq)


def gate(write_seq: int, read_seqs: Iterable[int], window: int) -> int:
    """The writer's gate with a replay window: the slowest attached reader, but never later
    than ``write_seq - window`` (and never before 0). The writer may overwrite only bytes
    before it; every byte from it up to ``write_seq`` is held."""
    return min(slowest(write_seq, read_seqs), max(0, write_seq - window))


def held(pos: int, gate_after_copy: int) -> bool:
    """Whether bytes copied from ``pos`` are intact, given the gate computed *after* the copy."""
    return pos >= gate_after_copy


def grown(*, write_seq: int, gate: int, capacity: int, max_capacity: int, size: int) -> int:
    """The capacity to grow to before writing ``size`` bytes: the smallest doubling of
    ``capacity`` (at most ``max_capacity``) with room for all of them; ``capacity`` itself when
    they fit already or when the ring has wrapped (``write_seq > capacity``: see the module
    docstring). ``gate`` is the writer's gate (``gate(...)``) at ``write_seq``.

    Raises:
        ValueError: the arguments break an invariant (a bug in the caller).
    """
    _check_capacity(capacity)
    _check_capacity(max_capacity)
    used = write_seq - gate
    if size <= 0 or capacity > max_capacity or not 0 <= used <= capacity:
        raise ValueError(f"bad growth request: size={size}, used={used}, capacity={capacity}/{max_capacity}")
    if write_seq > capacity:
        return capacity
    target = capacity
    while target < max_capacity and target - used < size:
        target *= 2
    return target
