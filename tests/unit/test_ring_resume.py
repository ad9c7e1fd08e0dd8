"""Resume and watchers against the real ring (shared memory) and ``relay.Consumer``: a model.

A hypothesis state machine drives one writer, 1-2 receivers and a watcher over a small
ring with a replay window. The "network" between a receiver's server side and its client
loses whatever is in flight when the client drops. A dropped client comes back at the
offset it really received: the resume must be accepted whenever that offset is within
the window, and then every client ends with exactly the producer's bytes, no loss and no
duplicate, however drops, resumes, writes and reads interleave. A watcher (continue
mode) gets runs of the producer's bytes at the offsets it is told, with reported gaps.

``Consumer.views()`` is driven without an event loop: when bytes are there it returns
without suspending; when it would sleep, it finds no running loop and we call that
"blocked".
"""

from __future__ import annotations

import uuid
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ringpipe.core.control_frames import RelayInfo
from ringpipe.core.errors import Gap, PeerGone, WouldBlock
from ringpipe.mesh.relay import Consumer, Slot
from ringpipe.shm import segment
from tests.support.fakes import NullRouter

BLOCKED = object()


def now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to its first suspension: its value, or BLOCKED if it would sleep."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    except RuntimeError as exc:  # asyncio.get_running_loop(): it was about to sleep
        assert "no running event loop" in str(exc)
        return BLOCKED
    coro.close()  # pragma: no cover - it suspended on something else
    raise AssertionError("views() suspended without sleeping")


class Client:
    def __init__(self, slot: int, consumer: Consumer) -> None:
        self.slot = slot
        self.consumer: Consumer | None = consumer
        self.received = bytearray()
        self.in_flight = bytearray()
        self.refused = False


class ResumeModel(RuleBasedStateMachine):
    @initialize(
        capacity=st.sampled_from([512, 1024, 2048]),
        n_readers=st.integers(1, 2),
        window_share=st.sampled_from([2, 4]),
    )
    def setup(self, capacity: int, n_readers: int, window_share: int) -> None:
        self.name = f"ringpipe-test-{uuid.uuid4().hex[:12]}"
        self.window = capacity // window_share
        self.ring = segment.RingSegment.create(self.name, capacity, n_readers, self.window)
        self.info = RelayInfo(self.name, capacity, 0, 0, tuple([0] * n_readers), "e")
        self.history = bytearray()
        self.finished = False
        self.clients = [Client(i, self._consumer(i, None)) for i in range(n_readers)]
        self.watcher = self._consumer(Slot.WATCHER, None, continue_gaps=True)
        self.watched: list[tuple[int, bytes]] = []
        self.gaps = 0

    def _consumer(self, slot: int, start: int | None, *, continue_gaps: bool = False) -> Consumer:
        ring = segment.RingSegment.attach(self.name)
        return Consumer(NullRouter(), ring, self.info, slot, start=start, continue_gaps=continue_gaps)

    def teardown(self) -> None:
        for client in getattr(self, "clients", []):
            if client.consumer is not None:
                client.consumer.close()
        if hasattr(self, "watcher"):
            self.watcher.close()
            self.ring.unlink()
            self.ring.close()

    # -- the producer --

    @precondition(lambda self: not self.finished)
    @rule(size=st.integers(1, 300), seed=st.integers(0, 255))
    def write(self, size: int, seed: int) -> None:
        data = bytes((seed + len(self.history) + i) % 251 for i in range(size))
        try:
            written = self.ring.write_nowait(data)
        except WouldBlock:
            return
        self.history += data[:written]

    def finish(self) -> None:
        self.ring.finish_writing()
        self.finished = True

    # -- receivers and their network --

    @rule(pick=st.integers(0, 1))
    def send(self, pick: int) -> None:
        """The server side of a receiver sends what the ring has (and commits it)."""
        self._send(pick)

    def _send(self, pick: int) -> bool | None:
        """True if it sent bytes, False at the end, None when it would block."""
        client = self.clients[pick % len(self.clients)]
        if client.consumer is None:
            return None
        consumer = client.consumer
        try:
            got = now(consumer.views())
        except PeerGone as gone:
            # A receiver catching up behind its slot's cursor reads the replay window; a
            # writer that ran past its position meanwhile cuts it (lagged), never corrupts.
            assert gone.ending == "lagged" and consumer.offset < self.ring.oldest_held()
            assert consumer.offset < self.ring.write_seq - self.window
            event("catch-up overtaken by the writer: lagged")
            self.drop(client.slot)
            client.refused = True
            self.ring.set_reader_status(client.slot, segment.DETACHED)
            return None
        if got is BLOCKED:
            return None
        views, next_seq = got
        chunk = b"".join(bytes(v) for v in views)
        for view in views:
            view.release()
        client.in_flight += chunk
        consumer.commit(next_seq, len(chunk))
        return bool(chunk)

    @rule(pick=st.integers(0, 1), size=st.integers(1, 400))
    def deliver(self, pick: int, size: int) -> None:
        client = self.clients[pick % len(self.clients)]
        client.received += client.in_flight[:size]
        del client.in_flight[:size]

    @rule(pick=st.integers(0, 1))
    def drop(self, pick: int) -> None:
        """The client goes away: what was in flight is lost; the slot keeps gating (grace)."""
        client = self.clients[pick % len(self.clients)]
        if client.consumer is not None:
            client.consumer.close()
            client.consumer = None
            client.in_flight.clear()

    @rule(pick=st.integers(0, 1), size=st.integers(0, 400))
    def drop_with_bytes_in_flight(self, pick: int, size: int) -> None:
        """Send, deliver part of it, then drop: the client is behind its slot's cursor."""
        self.send(pick)
        self.deliver(pick, size)
        self.drop(pick)

    @rule(pick=st.integers(0, 1))
    def resume(self, pick: int) -> None:
        """The client comes back at the offset it has; the owner admits it if still held."""
        client = self.clients[pick % len(self.clients)]
        if client.consumer is not None or client.refused:
            return
        offset = len(client.received)
        oldest, head = self.ring.oldest_held(), self.ring.write_seq
        if offset < oldest:
            assert offset < head - self.window, "an offset inside the window was refused"
            client.refused = True
            self.ring.set_reader_status(client.slot, segment.DETACHED)
            event("resume refused: out of the window")
            return
        event("resume behind the cursor" if offset < self.ring.read_seq(client.slot) else "resume at the cursor")
        client.consumer = self._consumer(client.slot, offset)

    # -- the watcher --

    @rule()
    def watch(self) -> None:
        try:
            got = now(self.watcher.views())
        except Gap as gap:
            assert gap.lost_to > gap.lost_from and self.watcher.offset == gap.lost_to
            self.gaps += 1
            return
        if got is BLOCKED:
            return
        views, next_seq = got
        chunk = b"".join(bytes(v) for v in views)
        for view in views:
            view.release()
        self.watched.append((self.watcher.offset, chunk))
        self.watcher.commit(next_seq, len(chunk))

    # -- what must hold --

    @invariant()
    def clients_have_a_prefix_of_the_pipe(self) -> None:
        for client in getattr(self, "clients", []):
            assert client.received == self.history[: len(client.received)], "lost or duplicated bytes"
            if not client.refused:  # a slot still held (connected or in its grace) gates the writer
                assert self.ring.write_seq - self.ring.read_seq(client.slot) <= self.ring.capacity

    @invariant()
    def the_watcher_sees_the_pipe_at_its_offsets(self) -> None:
        for offset, chunk in getattr(self, "watched", []):
            assert chunk == self.history[offset : offset + len(chunk)]

    @precondition(lambda self: len(self.history) >= self.ring.capacity + self.window)
    @rule()
    def everyone_catches_up(self) -> None:
        """Finish the pipe and run every connected client to the end: exactly the upload."""
        if not self.finished:
            self.finish()
        for client in self.clients:
            if client.consumer is None and not client.refused:
                self.resume(client.slot)
            while client.consumer is not None:
                sent = self._send(client.slot)
                assert sent is not None or client.refused, "a reader blocked on a finished pipe"
                self.deliver(client.slot, 1 << 20)
                if not sent:
                    break
            if not client.refused:
                assert client.received == self.history
                event("a client got the whole pipe after drops")


@pytest.mark.slow(19)
def test_drops_and_resumes_within_the_window_lose_and_duplicate_nothing() -> None:
    """The property test: 500 examples of up to 80 steps each."""
    ResumeModel.TestCase.settings = settings(
        max_examples=500,
        stateful_step_count=80,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    ResumeModel.TestCase().runTest()
