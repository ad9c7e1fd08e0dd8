"""The byte layout of a ring's header, its state words, and how big a ring is.

Layout (every header field is one aligned little-endian uint64; 64-byte lines so the writer
and each reader write to their own cache line)::

    line 0       magic "RPRING03" | capacity | n_readers | data_offset | created_ns
                 | max_capacity | relay_id
    line 1       write_seq | state (``RingState``) | writer_waiting | replay_window
                 | watchers_waiting | stamp_seq | stamp_ns
    line 2+i     read_seq[i] | status[i] (``ReaderStatus``) | reader_waiting[i] | framing[i]
    line 2+n..   256 bytes: watcher_waiting[w], one byte per worker slot w
                 256 bytes: users[w], one byte per worker slot w
    data_offset  max_capacity bytes of data, right after the header (64-byte aligned, so the
                 data starts in the header's last page); only the first ``capacity`` are
                 reserved, and only those are ever touched

Reserved pages (``segment_bytes``): the header and the first ``capacity`` data bytes,
rounded up to whole pages. The data shares the header's last page: for one reader the header
is 704 bytes, so a first ring of 2 KiB and its header fit one page, and a token stream's
first 3.3 KiB live in the header's page instead of a page of their own.

The metrics words (``metrics.py`` reads and writes them; no relay decision depends on them):
``created_ns`` is the owner's CLOCK_MONOTONIC when the pipe was established (system-wide on
Linux, so comparable in every worker: time to first byte); ``stamp_seq``/``stamp_ns`` is the
producer's latest latency sample, "the bytes before ``stamp_seq`` were in the ring at
``stamp_ns``" (``stamp_ns`` is stored first, so a reader that loads ``stamp_seq`` first never
pairs a new sequence with an old time); ``framing[i]`` is what reader *i* is served as (for
the transfer's log line).

Nothing here touches shared memory but ``write_header`` (``init_header``), which writes a
fresh header into pages its caller has reserved, and ``ring_views``, which reads one.
"""

from __future__ import annotations

import enum
import mmap
import time
from typing import Final

__all__ = [
    "ATTACHED",
    "BROKEN",
    "CANCELLED",
    "DETACHED",
    "DONE",
    "EOF",
    "EVICTED",
    "MAX_HEADER_BYTES",
    "OPEN",
    "RELEASED_VIEW",
    "STAMP_SEQ_WORD",
    "WATCHER_WORKERS",
    "ReaderStatus",
    "RingState",
    "check_shape",
    "data_offset",
    "init_header",
    "page_round",
    "ring_views",
    "segment_bytes",
    "views_at",
    "write_header",
]

MAGIC: Final = int.from_bytes(b"RPRING03", "little")


class RingState(enum.IntEnum):
    """The ring's ``state`` word: how the transfer stands, as readers see it."""

    OPEN = 0
    EOF = 1  # the producer finished: readers end cleanly once they have read everything
    BROKEN = 2  # the producer vanished (or its worker died): readers end aborted
    CANCELLED = 3  # DELETE: readers end with the cancelled ending


class ReaderStatus(enum.IntEnum):
    """A reader slot's ``status`` word; only ``ATTACHED`` gates the writer."""

    ATTACHED = 0
    DETACHED = 1  # left before the end (or dropped for good)
    DONE = 2  # read to the end
    EVICTED = 3  # stalled the writer for ``stall_timeout``: ends with the lagged ending


OPEN, EOF, BROKEN, CANCELLED = RingState
ATTACHED, DETACHED, DONE, EVICTED = ReaderStatus
#: Worker slots with a watcher-waiting byte and a users byte (config caps workers at 256).
WATCHER_WORKERS: Final = 256
PAGE: Final = mmap.PAGESIZE

LINE = 8  # uint64 words per 64-byte line
W_MAGIC, W_CAPACITY, W_READERS, W_DATA = 0, 1, 2, 3
W_CREATED_NS, W_MAX_CAPACITY, W_RELAY = 4, 5, 6
W_WRITE_SEQ, W_STATE, W_WRITER_WAITING, W_WINDOW, W_WATCHERS = 8, 9, 10, 11, 12
W_STAMP_SEQ, W_STAMP_NS = 13, 14
R_FRAMING = 3  # word of a reader's line
#: The header word (``words[STAMP_SEQ_WORD]``) holding the latency stamp's sequence: a reader's
#: meter loads it after every chunk it sends, without a method call.
STAMP_SEQ_WORD: Final = W_STAMP_SEQ
NO_USERS: Final = bytes(WATCHER_WORKERS)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _header_bytes(n_readers: int) -> int:
    return _round_up(64 * (2 + n_readers) + 2 * WATCHER_WORKERS, 64)


_HEADER_BYTES: Final = tuple(_header_bytes(n) for n in range(257))


def data_offset(n_readers: int) -> int:
    """Bytes of a ring's header (64-byte aligned, not page-aligned) for ``n_readers`` reader
    slots: where its data starts."""
    return _HEADER_BYTES[n_readers] if 0 <= n_readers <= 256 else _header_bytes(n_readers)


#: The largest header (256 readers): an arena slot fits it plus the largest ring.
MAX_HEADER_BYTES: Final = data_offset(256)


def page_round(size: int) -> int:
    """``size`` rounded up to whole pages: what reserving (or mapping) ``size`` bytes holds."""
    return _round_up(size, PAGE)


def segment_bytes(capacity: int, n_readers: int) -> int:
    """The bytes a ring of ``capacity`` reserves, and what it costs against ``--max-memory``:
    the pages under its header and its first ``capacity`` data bytes (the header's last page
    holds the start of the data)."""
    return page_round(data_offset(n_readers) + capacity)


def check_shape(*, capacity: int, max_capacity: int, n_readers: int, window: int) -> None:
    """Raise ``ValueError`` for a ring shape that breaks an invariant: capacities powers of
    two, capacity <= max_capacity, 1 <= n_readers <= 256, window <= max_capacity / 2."""
    if capacity <= 0 or capacity & (capacity - 1) or max_capacity <= 0 or max_capacity & (max_capacity - 1):
        raise ValueError(f"ring capacity must be a power of two, got {capacity}/{max_capacity}")
    if capacity > max_capacity or not 1 <= n_readers <= 256 or not 0 <= window <= max_capacity // 2:
        raise ValueError(f"bad ring shape: capacity={capacity}/{max_capacity}, n_readers={n_readers}, window={window}")


def write_header(
    words: memoryview, *, capacity: int, max_capacity: int, n_readers: int, window: int, relay_id: int
) -> None:
    """Write a fresh ring's header into ``words`` (its uint64 view, on reserved, zeroed pages)
    for a shape ``check_shape`` passed."""
    words[W_CAPACITY] = capacity
    words[W_MAX_CAPACITY] = max_capacity
    words[W_READERS] = n_readers
    words[W_DATA] = data_offset(n_readers)
    words[W_WINDOW] = window
    words[W_RELAY] = relay_id
    words[W_CREATED_NS] = time.monotonic_ns()
    words[W_MAGIC] = MAGIC  # last: a half-built header never looks valid


def init_header(
    words: memoryview, *, capacity: int, max_capacity: int, n_readers: int, window: int, relay_id: int
) -> None:
    """``check_shape``, then ``write_header``.

    Raises:
        ValueError: a shape that breaks an invariant (``check_shape``).
    """
    check_shape(capacity=capacity, max_capacity=max_capacity, n_readers=n_readers, window=window)
    write_header(
        words, capacity=capacity, max_capacity=max_capacity, n_readers=n_readers, window=window, relay_id=relay_id
    )


#: What a closed ring handle's ``words`` becomes: any use raises ``ValueError``, as the
#: released view it had before views were shared did.
RELEASED_VIEW: Final = memoryview(b"")
RELEASED_VIEW.release()


def views_at(buf: memoryview, base: int, *, n_readers: int, max_capacity: int) -> tuple[memoryview, ...]:
    """``(header words, data, watch flags, users)`` of the ring of that shape at ``buf[base:]``:
    made once per mapping and shared by its handles (each view costs ~0.2 KiB, and the
    owner's worker holds up to three handles per pipe)."""
    data_at = base + data_offset(n_readers)
    flags_at = base + 64 * (2 + n_readers)
    users_at = flags_at + WATCHER_WORKERS
    return (
        buf[base:data_at].cast("Q"),
        buf[data_at : data_at + max_capacity],
        buf[flags_at:users_at],
        buf[users_at : users_at + WATCHER_WORKERS],
    )


def ring_views(mm: mmap.mmap) -> tuple[memoryview, ...]:
    """``views_at`` a mapped ring, its shape read from its header. A header without the magic
    gets ``(words,)`` of its first line only, for its caller to see that and give up."""
    with memoryview(mm) as buf:
        head = buf[:64].cast("Q")
        if head[W_MAGIC] != MAGIC:
            return (head,)
        n_readers, capacity = int(head[W_READERS]), int(head[W_MAX_CAPACITY])
        head.release()
        return views_at(buf, 0, n_readers=n_readers, max_capacity=capacity)
