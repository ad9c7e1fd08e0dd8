"""The arena: slot and budget arithmetic (pure, hypothesis), ring growth (pure), and the real
``/dev/shm`` arena: what it reserves, what it gives back, and a growing ring against a model."""

from __future__ import annotations

import errno
import os
import random
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ringpipe.core.arena import Budget, SlotTable
from ringpipe.core.errors import RingMemoryFull, WouldBlock
from ringpipe.core.ring import gate, grown
from ringpipe.shm import arena as arena_module
from ringpipe.shm import mapping, segment
from ringpipe.shm.arena import Arena
from ringpipe.shm.layout import data_offset, segment_bytes
from tests.support.rings import ManualTimers, arena_mappings, held, read_nowait, scratch_arena

PAGE = 4096
HEADER = data_offset(1)  # 704 bytes: the data starts in the header's page


def cost(capacity: int, n_readers: int = 1) -> int:
    """What a ring of ``capacity`` reserves: its header and data, in whole pages."""
    return segment_bytes(capacity, n_readers)


# -- SlotTable and Budget against plain models -----------------------------------------------


class SlotTableModel(RuleBasedStateMachine):
    @initialize(slot_bytes=st.sampled_from([4096, 8192, 1 << 20]))
    def setup(self, slot_bytes: int) -> None:
        self.table = SlotTable(slot_bytes)
        self.live: set[int] = set()
        self.high_water = 0

    @rule()
    def take(self) -> None:
        slot = self.table.take()
        lowest_free = min(set(range(self.high_water + 1)) - self.live)
        assert slot == lowest_free  # lowest first: live rings stay packed
        self.live.add(slot)
        self.high_water = max(self.high_water, slot + 1)

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 1000))
    def give(self, pick: int) -> None:
        slot = sorted(self.live)[pick % len(self.live)]
        self.table.give(slot)
        self.live.remove(slot)
        with pytest.raises(ValueError, match="not live"):
            self.table.give(slot)  # a double free is refused

    @invariant()
    def slots_never_overlap_and_fit_the_file(self) -> None:
        size = self.table.slot_bytes
        ranges = sorted((self.table.offset(s), self.table.offset(s) + size) for s in self.live)
        assert all(end <= start for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False))
        assert all(end <= self.table.extent for _, end in ranges)
        assert self.table.live == len(self.live)
        assert self.table.extent == self.high_water * size


TestSlotTable = SlotTableModel.TestCase
TestSlotTable.settings = settings(max_examples=100, stateful_step_count=60, deadline=None, database=None)


@given(limit=st.integers(0, 10_000), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=60))
def test_budget_takes_only_what_fits_and_gives_back_what_it_took(limit: int, ops: list[tuple[bool, int]]) -> None:
    budget = Budget(limit)
    held: list[int] = []
    for taking, size in ops:
        if taking:
            before = budget.reserved
            fits = before + size <= limit
            assert budget.take(size) is fits
            assert budget.reserved == before + (size if fits else 0)
            if fits:
                held.append(size)
        elif held:
            budget.give(held.pop())
        assert 0 <= budget.reserved <= limit
        assert budget.reserved == sum(held)
    with pytest.raises(ValueError):
        budget.give(budget.reserved + 1)


# -- growth arithmetic ---------------------------------------------------------------------------

powers = st.integers(12, 20).map(lambda e: 1 << e)


@given(data=st.data(), capacity=powers, max_exp=st.integers(12, 21), size=st.integers(1, 3 << 20))
def test_grown_is_the_smallest_doubling_with_room(data: st.DataObject, capacity: int, max_exp: int, size: int) -> None:
    max_capacity = max(capacity, 1 << max_exp)
    write_seq = data.draw(st.integers(0, 3 * max_capacity))
    used = data.draw(st.integers(0, min(capacity, write_seq)))
    target = grown(write_seq=write_seq, gate=write_seq - used, capacity=capacity, max_capacity=max_capacity, size=size)
    assert target & (target - 1) == 0 and capacity <= target <= max_capacity
    if write_seq > capacity:  # a byte has wrapped: offsets are fixed for good
        assert target == capacity
    elif target < max_capacity:
        assert target - used >= size  # room for the whole write
        assert target == capacity or target // 2 - used < size  # and no bigger than needed


def test_grown_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        grown(write_seq=10, gate=0, capacity=8, max_capacity=16, size=1)  # 10 bytes held in 8
    with pytest.raises(ValueError):
        grown(write_seq=0, gate=0, capacity=32, max_capacity=16, size=1)


# -- the real arena --------------------------------------------------------------------------------


@pytest.fixture
def arena() -> Iterator[Arena]:
    with scratch_arena() as made:
        yield made


def test_a_ring_reserves_its_header_and_capacity_and_gives_them_back(arena: Arena) -> None:
    ring = arena.create_ring(7, n_readers=1, capacity=PAGE, window=0)
    assert (arena.reserved, held(arena)) == (cost(PAGE), cost(PAGE)) == (2 * PAGE, 2 * PAGE)
    assert ring.capacity == PAGE and ring.max_capacity == 1 << 16 and ring.relay_id == 7
    second = arena.create_ring(8, n_readers=1, capacity=1 << 16, window=0)  # a remote producer's: whole
    assert held(arena) == cost(PAGE) + cost(1 << 16)
    arena.free(ring)
    assert (arena.reserved, held(arena)) == (cost(1 << 16), cost(1 << 16))
    third = arena.create_ring(9, n_readers=1, capacity=PAGE, window=0)
    assert third.region.offset == 0  # the lowest slot is reused
    arena.free(second)
    arena.free(third)
    assert (arena.reserved, held(arena), arena.live, mapping.mapped()) == (0, 0, 0, 0)


def test_the_budget_refuses_a_ring_and_reserves_nothing(arena: Arena) -> None:
    refusals: list[str] = []
    arena.on_refusal = refusals.append
    arena.budget.limit = 2 * cost(1 << 16)
    rings = [arena.create_ring(i, n_readers=1, capacity=1 << 16, window=0) for i in (1, 2)]
    with pytest.raises(RingMemoryFull) as refused:
        arena.create_ring(3, n_readers=1, capacity=PAGE, window=0)
    assert refused.value.http_status == 503 and "memory limit" in refused.value.message
    assert refusals == ["memory_limit"] and arena.live == 2
    for ring in rings:
        arena.free(ring)
    assert held(arena) == 0


def test_a_full_dev_shm_is_a_refusal_not_a_sigbus(arena: Arena, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from posix_fallocate (a full tmpfs) refuses the ring, or its growth, cleanly."""
    ring = arena.create_ring(1, n_readers=1, capacity=PAGE, window=0)
    writer = segment.RingSegment.attach(ring.name)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(arena_module.os, "posix_fallocate", full)
    with pytest.raises(RingMemoryFull) as refused:
        arena.create_ring(2, n_readers=1, capacity=PAGE, window=0)
    assert "/dev/shm" in refused.value.message and arena.live == 1
    assert writer.write_nowait(b"x" * 10_000) == PAGE  # no growth: the ring stays one page
    assert ring.capacity == PAGE and arena.reserved == cost(PAGE)
    writer.close()
    arena.free(ring)


def test_users_bytes_follow_party_handles_per_process(arena: Arena) -> None:
    ring = arena.create_ring(1, n_readers=2, capacity=PAGE, window=0)
    assert not ring.has_users()  # the owner's own handle does not count
    first, second = segment.RingSegment.attach(ring.name), segment.RingSegment.attach(ring.name)
    assert ring.has_users() and mapping.mapped() == 1  # one mapping for the process
    first.close()
    assert ring.has_users()
    second.close()
    second.close()  # idempotent
    assert not ring.has_users()
    other = segment.RingSegment.attach(ring.name)
    ring.clear_user(0)  # the owner forgets a dead worker's byte
    assert not ring.has_users()
    other.close()
    arena.free(ring)
    with pytest.raises(FileNotFoundError):
        segment.RingSegment.attach(ring.name)  # freed: the slot holds no ring


def test_an_attach_to_a_reused_slot_is_refused(arena: Arena) -> None:
    old = arena.create_ring(1, n_readers=1, capacity=PAGE, window=0)
    name = old.name
    arena.free(old)
    new = arena.create_ring(2, n_readers=1, capacity=PAGE, window=0)
    assert new.region.offset == 0 and new.name != name
    with pytest.raises(FileNotFoundError):
        segment.RingSegment.attach(name)
    arena.free(new)


def test_a_refused_growth_shrinks_a_window_the_ring_cannot_hold(arena: Arena) -> None:
    """The budget allows no growth: a ring whose replay window is bigger than itself would
    leave its writer no room, so the window becomes half the ring and the writer goes on."""
    ring = arena.create_ring(1, n_readers=1, capacity=PAGE, window=1 << 15)
    arena.budget.limit = arena.reserved
    writer, reader = segment.RingSegment.attach(ring.name), segment.RingSegment.attach(ring.name)
    data = random.Random(1).randbytes(3 * PAGE)
    got = bytearray()
    written = 0
    while len(got) < len(data):
        try:
            written += writer.write_nowait(data[written : written + 1000])
        except WouldBlock:
            pass
        got += read_nowait(reader, 0, 4096)
    assert got == data and ring.capacity == PAGE and ring.window == PAGE // 2
    for handle in (writer, reader):
        handle.close()
    arena.free(ring)


def test_rings_share_a_mapping_per_chunk_and_its_last_free_unmaps_it(arena: Arena) -> None:
    """The owner maps a chunk of slots once; each ring is its own bytes in it, freeing one
    gives its pages back, and freeing a chunk's last ring unmaps the chunk."""
    arena.chunk_slots = 2
    rings = [arena.create_ring(i + 1, n_readers=1, capacity=PAGE, window=0) for i in range(5)]
    assert arena_mappings(arena) == 3 and held(arena) == 5 * (cost(PAGE))
    assert [r.region.offset for r in rings] == [i * arena.slots.slot_bytes for i in range(5)]
    assert [r.relay_id for r in rings] == [1, 2, 3, 4, 5]
    writers = [segment.RingSegment.attach(r.name) for r in rings]
    for i, writer in enumerate(writers):
        assert writer.write_nowait(bytes([i + 1]) * 3000) == 3000
    for i, writer in enumerate(writers):
        assert read_nowait(writer, 0, PAGE) == bytes([i + 1]) * 3000
        writer.close()
    arena.free(rings[4])
    assert (arena_mappings(arena), held(arena)) == (2, 4 * (cost(PAGE)))
    arena.free(rings[2])
    assert (arena_mappings(arena), held(arena)) == (2, 3 * (cost(PAGE)))  # ring 4 keeps chunk 1
    arena.free(rings[3])
    assert (arena_mappings(arena), held(arena)) == (1, 2 * (cost(PAGE)))
    again = arena.create_ring(9, n_readers=1, capacity=PAGE, window=0)
    assert again.region.offset == 2 * arena.slots.slot_bytes and arena_mappings(arena) == 2
    with pytest.raises(WouldBlock):
        read_nowait(again, 0, PAGE)  # a fresh ring in a reused slot: nothing published
    assert again.write_seq == 0 and again.state == 0 and again.relay_id == 9
    for ring in (*rings[:2], again):
        arena.free(ring)
    assert (arena.reserved, held(arena), arena_mappings(arena), mapping.mapped()) == (0, 0, 0, 0)


def test_with_a_timer_a_freed_slot_keeps_its_pages_for_the_next_ring_then_gives_them_back(arena: Arena) -> None:
    """Pipes one at a time take the same slot, its pages and the chunk's mapping; a second
    after the last one ended its pages go back, and a second after that the chunk unmaps."""
    timers = ManualTimers()
    timers.drive(arena)
    arena.chunk_slots = 2
    for relay_id in (1, 2, 3):
        ring = arena.create_ring(relay_id, n_readers=1, capacity=PAGE, window=0)
        assert ring.region.offset == 0 and ring.write_seq == 0 and ring.relay_id == relay_id
        writer = segment.RingSegment.attach(ring.name)
        assert writer.write_nowait(bytes([relay_id]) * 3000) == 3000
        assert read_nowait(writer, 0, PAGE) == bytes([relay_id]) * 3000
        writer.close()
        arena.free(ring)
        assert (arena.live, arena.reserved, held(arena), arena_mappings(arena)) == (0, cost(PAGE), cost(PAGE), 1)
    timers.advance(arena_module.KEEP_FREED_S)
    assert (arena.reserved, held(arena), arena_mappings(arena)) == (0, 0, 1)
    timers.advance(arena_module.UNMAP_DELAY_S)
    assert (held(arena), arena_mappings(arena), mapping.mapped()) == (0, 0, 0)


def test_a_freed_slot_cannot_be_attached_as_its_old_ring(arena: Arena) -> None:
    """A kept slot's header is zeroed at once: a late attach of the old ring is refused, as
    it is when the slot is a hole."""
    ManualTimers().drive(arena)
    ring = arena.create_ring(1, n_readers=2, capacity=PAGE, window=0)
    name = ring.name
    arena.free(ring)
    with pytest.raises(FileNotFoundError):
        segment.RingSegment.attach(name)
    again = arena.create_ring(2, n_readers=1, capacity=PAGE, window=0)
    with pytest.raises(FileNotFoundError):
        segment.RingSegment.attach(name)
    handle = segment.RingSegment.attach(again.name)
    assert handle.relay_id == 2
    handle.close()
    arena.free(again)


def test_a_ring_in_a_kept_slot_grows_into_its_pages_and_the_rest_goes_back(arena: Arena) -> None:
    """A ring that grew to 32 KiB leaves its pages to the next ring: that one grows into them
    without a new reservation, and what it has not used a second later goes back; its bytes
    stay intact throughout."""
    timers = ManualTimers()
    timers.drive(arena)
    big = arena.create_ring(1, n_readers=1, capacity=PAGE, window=0)
    writer = segment.RingSegment.attach(big.name)
    assert writer.write_nowait(b"x" * (30 << 10)) == 30 << 10  # grows to 32 KiB
    writer.close()
    assert arena.reserved == cost(32 << 10)
    arena.free(big)
    ring = arena.create_ring(2, n_readers=1, capacity=PAGE, window=0)
    assert (arena.reserved, held(arena)) == (cost(32 << 10), cost(32 << 10))  # the kept pages are its own
    writer = segment.RingSegment.attach(ring.name)
    reader = segment.RingSegment.attach(ring.name)
    data = bytes(range(256)) * 40  # 10 KiB: the ring grows to 16 KiB, within the kept pages
    assert writer.write_nowait(data) == len(data)
    assert (arena.reserved, held(arena)) == (cost(32 << 10), cost(32 << 10))
    timers.advance(arena_module.KEEP_FREED_S)  # the 16 KiB above its capacity go back
    assert (arena.reserved, held(arena)) == (cost(16 << 10), cost(16 << 10))
    assert read_nowait(reader, 0, 1 << 16) == data
    more = bytes(range(255, -1, -1)) * 100  # 25 KiB: it grows again, reserving anew
    assert writer.write_nowait(more) == len(more)
    assert (arena.reserved, held(arena)) == (cost(32 << 10), cost(32 << 10))
    assert read_nowait(reader, 0, 1 << 16) == more
    writer.close()
    reader.close()
    arena.free(ring)
    timers.advance(2 * arena_module.KEEP_FREED_S)
    assert (arena.reserved, held(arena)) == (0, 0)


def test_kept_pages_go_back_before_any_reservation_is_refused(arena: Arena) -> None:
    """The budget counts kept pages, but a ring or a growth that needs them gets them: the
    kept pages go back first, and only a budget still short refuses."""
    ManualTimers().drive(arena)
    arena.budget.limit = 3 * cost(PAGE)
    rings = [arena.create_ring(i, n_readers=1, capacity=PAGE, window=0) for i in (1, 2, 3)]
    for ring in rings[:2]:
        arena.free(ring)
    assert arena.reserved == 3 * cost(PAGE)  # two kept, one live
    big = arena.create_ring(4, n_readers=1, capacity=2 * PAGE, window=0)  # one kept slot is not enough
    assert (arena.live, arena.reserved, held(arena)) == (2, cost(PAGE) + cost(2 * PAGE), cost(PAGE) + cost(2 * PAGE))
    arena.free(big)
    writer = segment.RingSegment.attach(rings[2].name)
    assert writer.write_nowait(b"y" * (3 * PAGE)) == 3 * PAGE  # grows to 16 KiB: the kept pages go back
    assert (arena.live, arena.reserved, held(arena)) == (1, cost(4 * PAGE), cost(4 * PAGE))
    writer.close()
    with pytest.raises(RingMemoryFull):
        arena.create_ring(5, n_readers=1, capacity=4 * PAGE, window=0)  # nothing kept to give back
    arena.free(rings[2])


class ArenaChunksModel(RuleBasedStateMachine):
    """Rings come and go in an arena of small chunks: the file holds exactly the live rings'
    headers and capacities, each ring keeps its own header, and the process maps exactly
    the chunks that hold a live ring."""

    @initialize(chunk_slots=st.integers(1, 4))
    def setup(self, chunk_slots: int) -> None:
        self.arena = Arena(
            f"ringpipe-test-{os.getpid()}-{uuid.uuid4().hex[:8]}-arena", ring_bytes=1 << 14, budget=1 << 20
        )
        self.arena.chunk_slots = chunk_slots
        self.live: dict[int, tuple[segment.RingSegment, int]] = {}
        self.next_relay = 1

    def teardown(self) -> None:
        arena = getattr(self, "arena", None)
        if arena is None:
            return
        try:
            for ring, _size in self.live.values():
                arena.free(ring)
            if os.path.exists(arena.path):  # made at the first ring
                assert os.stat(arena.path).st_blocks == 0
            assert arena_mappings(arena) == 0 and mapping.mapped() == 0
        finally:
            arena.close()  # a failing example must not leave its file in /dev/shm

    @precondition(lambda self: len(self.live) < 12)
    @rule(capacity=st.sampled_from([PAGE, 2 * PAGE, 1 << 14]), n_readers=st.integers(1, 3))
    def create(self, capacity: int, n_readers: int) -> None:
        ring = self.arena.create_ring(self.next_relay, n_readers=n_readers, capacity=capacity, window=0)
        self.live[self.next_relay] = (ring, cost(capacity, n_readers))
        self.next_relay += 1

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 100))
    def free(self, pick: int) -> None:
        relay = sorted(self.live)[pick % len(self.live)]
        ring, _size = self.live.pop(relay)
        self.arena.free(ring)

    @invariant()
    def the_file_holds_the_live_rings_and_the_process_maps_their_chunks(self) -> None:
        reserved = sum(size for _ring, size in self.live.values())
        assert self.arena.reserved == reserved
        if os.path.exists(self.arena.path):
            assert os.stat(self.arena.path).st_blocks * 512 == reserved
        slot_bytes, chunk_slots = self.arena.slots.slot_bytes, self.arena.chunk_slots
        chunks = {ring.region.offset // slot_bytes // chunk_slots for ring, _size in self.live.values()}
        assert arena_mappings(self.arena) == len(chunks)
        assert all(ring.relay_id == relay for relay, (ring, _size) in self.live.items())


TestArenaChunks = ArenaChunksModel.TestCase
TestArenaChunks.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- a growing ring against a model: bytes, capacity, reservation -------------------------------


class GrowingRingModel(RuleBasedStateMachine):
    """A producer in its owner's process: the ring starts at one page and grows through the
    arena as writes need room; readers read through another handle. Every reader gets the
    exact stream, the capacity only grows and never after a wrap, and the arena holds exactly
    the header and the capacity."""

    @initialize(
        n_readers=st.integers(1, 3),
        window=st.sampled_from([0, 1024, 8192]),
        budget_pages=st.integers(2, 40),
        first=st.sampled_from([2048, PAGE]),
    )
    def setup(self, n_readers: int, window: int, budget_pages: int, first: int) -> None:
        self.arena = Arena(
            f"ringpipe-test-{os.getpid()}-{uuid.uuid4().hex[:8]}-arena", ring_bytes=1 << 16, budget=1 << 20
        )
        self.owner = self.arena.create_ring(1, n_readers=n_readers, capacity=first, window=window)
        self.arena.budget.limit = cost(budget_pages * PAGE, n_readers)  # the header page and budget_pages more
        self.n_readers = n_readers
        self.writer = segment.RingSegment.attach(self.owner.name)
        self.reader = segment.RingSegment.attach(self.owner.name)
        self.history = bytearray()
        self.read_seqs = [0] * n_readers
        self.capacity = first
        self.wrapped = False

    def teardown(self) -> None:
        arena = getattr(self, "arena", None)
        if arena is None:
            return
        self.writer.close()
        self.reader.close()
        arena.free(self.owner)
        assert os.stat(arena.path).st_blocks == 0
        arena.close()

    @rule(size=st.one_of(st.integers(1, 64), st.integers(1000, 20_000)), seed=st.integers(0, 2**16))
    def write(self, size: int, seed: int) -> None:
        data = random.Random(seed).randbytes(size)
        ring = self.owner
        room = ring.capacity - (len(self.history) - gate(len(self.history), self.read_seqs, ring.window))
        try:
            written = self.writer.write_nowait(data)
        except WouldBlock:
            # full, and it could not grow: wrapped already, at its largest, or the budget
            # cannot pay for a doubling
            doubling = cost(2 * ring.capacity, self.n_readers) - cost(ring.capacity, self.n_readers)
            grow_blocked = self.wrapped or ring.capacity == ring.max_capacity or self._budget_left() < doubling
            assert room == 0 and grow_blocked
            return
        assert written == min(size, ring.capacity - (len(self.history) - self._gate_now()))
        self.history += data[:written]

    def _gate_now(self) -> int:
        return gate(len(self.history), self.read_seqs, self.owner.window)

    def _budget_left(self) -> int:
        return self.arena.budget.limit - self.arena.budget.reserved

    @rule(pick=st.integers(0, 2), limit=st.one_of(st.integers(1, 100), st.integers(1000, 30_000)))
    def read(self, pick: int, limit: int) -> None:
        slot = pick % len(self.read_seqs)
        start = self.read_seqs[slot]
        if start == len(self.history):
            with pytest.raises(WouldBlock):
                read_nowait(self.reader, slot, limit)
            return
        out = read_nowait(self.reader, slot, limit)
        assert out == self.history[start : start + min(limit, len(self.history) - start)]
        self.read_seqs[slot] = start + len(out)

    @invariant()
    def capacity_grows_only_before_the_first_wrap(self) -> None:
        capacity = self.owner.capacity
        assert capacity & (capacity - 1) == 0 and self.capacity <= capacity <= self.owner.max_capacity
        if self.wrapped:
            assert capacity == self.capacity
        self.capacity = capacity
        self.wrapped = self.wrapped or len(self.history) > capacity

    @invariant()
    def the_arena_holds_the_header_and_the_capacity(self) -> None:
        reserved = cost(self.owner.capacity, self.n_readers)
        assert self.arena.reserved == reserved <= self.arena.budget.limit
        assert os.stat(self.arena.path).st_blocks * 512 == reserved

    @invariant()
    def readers_stay_within_one_lap(self) -> None:
        for seq in self.read_seqs:
            assert 0 <= len(self.history) - seq <= self.owner.capacity


TestGrowingRing = GrowingRingModel.TestCase
TestGrowingRing.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_a_token_streams_first_ring_and_header_share_one_page(arena: Arena) -> None:
    """A first ring of 2 KiB and a one-reader header fit one page; doubling within reserved
    pages reserves nothing, a doubling past them reserves only the pages it adds."""
    ring = arena.create_ring(1, n_readers=1, capacity=1024, window=8192)
    writer = segment.RingSegment.attach(ring.name)
    assert arena.reserved == held(arena) == PAGE
    assert writer.write_nowait(b"t" * 1500) == 1500  # 1 KiB -> 2 KiB: still in the header's page
    assert (ring.capacity, arena.reserved, held(arena)) == (2048, PAGE, PAGE)
    assert writer.write_nowait(b"t" * 1500) == 1500  # 2 KiB -> 4 KiB: one more page
    assert (ring.capacity, arena.reserved, held(arena)) == (4096, 2 * PAGE, 2 * PAGE)
    assert read_nowait(ring, 0, 10_000) == b"t" * 3000
    writer.close()
    arena.free(ring)
    assert (arena.reserved, held(arena)) == (0, 0)
