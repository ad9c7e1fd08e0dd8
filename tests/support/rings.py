"""Ring helpers for tests that read a ring without a relay, and a scratch arena for tests of
the arena itself."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

from ringpipe.shm.arena import Arena
from ringpipe.shm.segment import RingSegment

__all__ = ["ManualTimers", "arena_mappings", "held", "read_nowait", "scratch_arena"]


@contextlib.contextmanager
def scratch_arena() -> Iterator[Arena]:
    """An arena of 64 KiB rings and a 1 MiB budget, named for this test process; on exit it is
    closed, its file gone, and the changes it reported sum to what it still reserved."""
    changes: list[int] = []
    made = Arena(f"ringpipe-test-{os.getpid()}-{uuid.uuid4().hex[:8]}-arena", ring_bytes=1 << 16, budget=1 << 20)
    made.on_change = changes.append
    try:
        yield made
    finally:
        made.close()
        assert not os.path.exists(made.path)
        assert sum(changes) == made.reserved


class ManualTimers:
    """A clock and ``call_later`` for an arena that move only when the test says: ``advance``
    runs every callback that fell due, in order (those they schedule too)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, int, Callable[[], None]]] = []
        self._made = 0

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self._made += 1
        self.due.append((self.now + delay, self._made, callback))

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while True:
            ready = sorted(d for d in self.due if d[0] <= until)
            if not ready:
                break
            self.due.remove(ready[0])
            self.now = max(self.now, ready[0][0])
            ready[0][2]()
        self.now = until

    def drive(self, arena: Arena) -> None:
        """Make ``arena`` use these timers."""
        arena.call_later = self.call_later
        arena.clock = self.clock


def held(arena: Arena) -> int:
    """Bytes the arena file really holds (blocks, not size)."""
    return os.stat(arena.path).st_blocks * 512


def arena_mappings(arena: Arena) -> int:
    """Mappings of the arena's file in this process (``/proc/self/maps``)."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(arena.path))


def read_nowait(ring: RingSegment, slot: int, limit: int) -> bytes:
    """Copy out up to ``limit`` published bytes for reader ``slot`` and commit them;
    ``b""`` means clean EOF (``peek``, copy, release, ``commit_read``).

    Raises:
        WouldBlock: nothing new yet.
        PeerGone: the producer vanished (or its worker died).
    """
    views, next_seq = ring.peek(slot, limit)
    out = b"".join(views)
    for view in views:
        view.release()
    ring.commit_read(slot, next_seq)
    return out
