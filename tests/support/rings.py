"""Ring helpers for tests that read a ring without a relay."""

from __future__ import annotations

from ringpipe.shm.segment import RingSegment


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
