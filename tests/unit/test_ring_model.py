"""Stateful models of the ring: the pure arithmetic against a bytes model, then the shm binding.

The model is the full history of bytes written. Reader *i* must receive exactly
``history[read_seq:next_seq]`` on every read, whatever the interleaving of writes, reads and
detaches, and the writer must never plan over a byte an attached reader still needs.
"""

from __future__ import annotations

import glob
import os
import random
import sys
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ringpipe.core.errors import WouldBlock
from ringpipe.core.ring import plan_read, plan_write, slowest
from ringpipe.shm import segment
from tests.support.rings import read_nowait

# -- the pure arithmetic against a bytearray ------------------------------------------------


class RingArithmeticModel(RuleBasedStateMachine):
    """One writer and 1-4 readers over a ``capacity``-byte bytearray, driven by ``plan_*`` only."""

    @initialize(capacity=st.sampled_from([8, 16, 32, 64]), n_readers=st.integers(1, 4))
    def setup(self, capacity: int, n_readers: int) -> None:
        self.capacity = capacity
        self.area = bytearray(capacity)
        self.write_seq = 0
        self.read_seqs = [0] * n_readers
        self.attached = [True] * n_readers
        self.history = bytearray()

    def _attached(self) -> list[int]:
        return [i for i, on in enumerate(self.attached) if on]

    def _gate(self) -> int:
        return slowest(self.write_seq, [self.read_seqs[i] for i in self._attached()])

    @rule(data=st.binary(min_size=1, max_size=80))
    def write(self, data: bytes) -> None:
        room = self.capacity - (self.write_seq - self._gate())
        kwargs = {
            "write_seq": self.write_seq,
            "slowest_read_seq": self._gate(),
            "capacity": self.capacity,
            "size": len(data),
        }
        if room == 0:
            with pytest.raises(WouldBlock):
                plan_write(**kwargs)
            return
        plan = plan_write(**kwargs)
        assert plan.seq == self.write_seq
        assert plan.size == min(len(data), room)  # never more than the slowest attached reader allows
        assert sum(span.length for span in plan.spans) == plan.size
        done = 0
        for span in plan.spans:
            self.area[span.offset : span.offset + span.length] = data[done : done + span.length]
            done += span.length
        self.history += data[:done]
        self.write_seq = plan.next_seq

    @precondition(lambda self: any(self.attached))
    @rule(pick=st.integers(0, 3), limit=st.integers(1, 80))
    def read(self, pick: int, limit: int) -> None:
        attached = self._attached()
        i = attached[pick % len(attached)]
        kwargs = {"read_seq": self.read_seqs[i], "write_seq": self.write_seq, "capacity": self.capacity, "limit": limit}
        if self.read_seqs[i] == self.write_seq:
            with pytest.raises(WouldBlock):
                plan_read(**kwargs)
            return
        plan = plan_read(**kwargs)
        assert plan.seq == self.read_seqs[i]
        assert plan.size == min(limit, self.write_seq - self.read_seqs[i])
        out = b"".join(bytes(self.area[s.offset : s.offset + s.length]) for s in plan.spans)
        assert out == self.history[plan.seq : plan.next_seq]
        self.read_seqs[i] = plan.next_seq

    @precondition(lambda self: any(self.attached))
    @rule(pick=st.integers(0, 3))
    def detach(self, pick: int) -> None:
        attached = self._attached()
        self.attached[attached[pick % len(attached)]] = False

    @invariant()
    def readers_within_one_lap(self) -> None:
        for i in self._attached():
            assert 0 <= self.write_seq - self.read_seqs[i] <= self.capacity

    @invariant()
    def area_holds_the_last_lap(self) -> None:
        assert len(self.history) == self.write_seq
        for seq in range(max(0, self.write_seq - self.capacity), self.write_seq):
            assert self.area[seq & (self.capacity - 1)] == self.history[seq]

    @invariant()
    def nobody_gates_when_all_detached(self) -> None:
        if not any(self.attached):
            plan = plan_write(
                write_seq=self.write_seq,
                slowest_read_seq=slowest(self.write_seq, []),
                capacity=self.capacity,
                size=self.capacity,
            )
            assert plan.size == self.capacity


TestRingArithmeticModel = RingArithmeticModel.TestCase
TestRingArithmeticModel.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- the shared-memory binding against the same model -------------------------------------

SHM_CAPACITY = 4096
SHM_PREFIX = f"ringpipe-test-{os.getpid()}-"


class ShmRingModel(RuleBasedStateMachine):
    """``segment.RingSegment``: the writer's mapping writes, a second mapping (attach) reads."""

    @initialize(n_readers=st.integers(1, 3))
    def setup(self, n_readers: int) -> None:
        self.name = SHM_PREFIX + uuid.uuid4().hex
        self.writer = segment.RingSegment.create(self.name, SHM_CAPACITY, n_readers)
        self.reader = segment.RingSegment.attach(self.name)
        assert (self.reader.capacity, self.reader.n_readers) == (SHM_CAPACITY, n_readers)
        self.read_seqs = [0] * n_readers
        self.attached = [True] * n_readers
        self.history = bytearray()
        self.finished = False

    def teardown(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is None:
            return
        try:
            if hasattr(self, "reader"):
                self.reader.close()
            writer.close()
        finally:
            writer.unlink()

    def _attached(self) -> list[int]:
        return [i for i, on in enumerate(self.attached) if on]

    @precondition(lambda self: not self.finished)
    @rule(size=st.one_of(st.integers(1, 100), st.integers(1000, 6000)), seed=st.integers(0, 2**16))
    def write(self, size: int, seed: int) -> None:
        data = random.Random(seed).randbytes(size)
        gate = min((self.read_seqs[i] for i in self._attached()), default=len(self.history))
        room = SHM_CAPACITY - (len(self.history) - gate)
        if room == 0:
            with pytest.raises(WouldBlock):
                self.writer.write_nowait(data)
            return
        written = self.writer.write_nowait(data)
        assert written == min(size, room)
        self.history += data[:written]

    @precondition(lambda self: any(self.attached))
    @rule(pick=st.integers(0, 2), limit=st.one_of(st.integers(1, 100), st.integers(1000, 6000)))
    def read(self, pick: int, limit: int) -> None:
        attached = self._attached()
        slot = attached[pick % len(attached)]
        start = self.read_seqs[slot]
        if start == len(self.history):
            if self.finished:
                assert read_nowait(self.reader, slot, limit) == b""
            else:
                with pytest.raises(WouldBlock):
                    read_nowait(self.reader, slot, limit)
            return
        out = read_nowait(self.reader, slot, limit)
        assert out == self.history[start : start + min(limit, len(self.history) - start)]
        self.read_seqs[slot] = start + len(out)

    @precondition(lambda self: any(self.attached))
    @rule(pick=st.integers(0, 2))
    def detach(self, pick: int) -> None:
        attached = self._attached()
        slot = attached[pick % len(attached)]
        self.reader.set_reader_status(slot, segment.DETACHED)
        self.attached[slot] = False
        assert self.writer.reader_status(slot) == segment.DETACHED

    @precondition(lambda self: not self.finished and len(self.history) >= SHM_CAPACITY)
    @rule()
    def finish(self) -> None:
        self.writer.finish_writing()
        self.finished = True
        assert self.reader.state == segment.EOF

    @rule(sleepers=st.sets(st.integers(0, 2)), writer_sleeps=st.booleans())
    def wake_flags(self, sleepers: set[int], writer_sleeps: bool) -> None:
        """Sleep flags set through one mapping are taken, exactly once, through the other."""
        flagged = sorted(s for s in sleepers if s < self.reader.n_readers)
        for slot in flagged:
            self.reader.set_reader_waiting(slot)
        if writer_sleeps:
            self.writer.set_writer_waiting()
        assert self.writer.take_sleeping_readers() == flagged
        assert self.writer.take_sleeping_readers() == []
        assert self.reader.take_writer_waiting() is writer_sleeps
        assert self.reader.take_writer_waiting() is False

    @invariant()
    def cursors_match_the_model(self) -> None:
        assert self.writer.write_seq == self.reader.write_seq == len(self.history)
        assert self.writer.attached_readers() == len(self._attached())
        for i in self._attached():
            assert self.writer.read_seq(i) == self.read_seqs[i]
            assert 0 <= len(self.history) - self.read_seqs[i] <= SHM_CAPACITY


needs_dev_shm = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /dev/shm")


@needs_dev_shm
def test_shm_ring_matches_the_model_and_leaves_no_segment() -> None:
    """The real segment delivers each reader the exact byte stream, and every segment is unlinked."""
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        ShmRingModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert glob.glob(f"/dev/shm/{SHM_PREFIX}*") == []


@needs_dev_shm
def test_shm_ring_many_laps_with_a_detach() -> None:
    """Over many laps, with odd chunk sizes and one reader leaving, every reader gets its exact stream."""
    name = SHM_PREFIX + uuid.uuid4().hex
    writer = segment.RingSegment.create(name, SHM_CAPACITY, 3)
    reader = segment.RingSegment.attach(name)
    try:
        payload = random.Random(7).randbytes(12 * SHM_CAPACITY + 123)
        got: list[bytearray] = [bytearray() for _ in range(3)]
        limits = [1000, 4096, 777]
        pos = 0
        rounds = 0
        while pos < len(payload) or any(len(got[s]) < len(payload) for s in (0, 1)):
            rounds += 1
            if pos < len(payload):
                try:
                    pos += writer.write_nowait(payload[pos : pos + 3001])
                except WouldBlock:
                    pass
                if pos == len(payload):
                    writer.finish_writing()
            for slot in (0, 1, 2) if rounds < 5 else (0, 1):
                try:
                    got[slot] += read_nowait(reader, slot, limits[slot])
                except WouldBlock:
                    pass
            if rounds == 5:
                reader.set_reader_status(2, segment.DETACHED)
            assert rounds < 10_000
        assert got[0] == got[1] == payload
        assert got[2] == payload[: len(got[2])] and 0 < len(got[2]) < len(payload)
        assert read_nowait(reader, 0, 10) == b""
    finally:
        reader.close()
        writer.close()
        writer.unlink()
    assert glob.glob(f"/dev/shm/{name}") == []
