"""ringpipe's exception vocabulary: AnyIO's words for streams, h11's status hints for HTTP.

Each class says exactly when it is raised. ``SupervisorHalt`` is a ``BaseException`` on
purpose (gunicorn's ``HaltServer``): application code that catches ``Exception`` must not be
able to swallow a shutdown.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ENDINGS",
    "ControlProtocolError",
    "Gap",
    "PeerGone",
    "RendezvousRejected",
    "RingClosed",
    "RingMemoryFull",
    "RingpipeError",
    "SupervisorHalt",
    "WouldBlock",
]


class RingpipeError(Exception):
    """Base class of every error ringpipe raises on purpose."""


class WouldBlock(RingpipeError):
    """A ``*_nowait`` call could not proceed: the ring is full (writer) or empty (reader).

    The caller should wait (``await wait_space()`` / ``await wait_published()``) and retry.
    """


class RingClosed(RingpipeError):
    """We closed this end already; writing after ``close()`` is a bug in the caller."""


#: How a transfer can end for a reader (SPEC 2.2); every framing tells them apart.
#: ``done``: the producer finished; ``aborted``: it vanished (or its worker died);
#: ``cancelled``: ``DELETE`` on the path; ``lagged``: this reader was evicted (stall, 2.5)
#: or, as a watcher, fell out of the replay window.
ENDINGS: Final = ("done", "aborted", "cancelled", "lagged")


class PeerGone(RingpipeError):
    """The transfer ended other than cleanly for this reader; ``ending`` says how.

    Readers that see it must end their response *visibly broken* (raw: no final chunk), so
    that a client never mistakes a truncated body for a complete one (SPEC 1.3, item 11),
    and say ``ending`` in framings that can (SSE, NDJSON, WebSocket close code).
    """

    def __init__(self, reason: str = "producer vanished", *, ending: str = "aborted") -> None:
        super().__init__(reason)
        self.ending = ending


class Gap(RingpipeError):
    """Bytes ``[lost_from, lost_to)`` of the pipe are no longer held for this reader.

    ``Consumer.views()`` raises it for a watcher in *continue* mode (SSE/NDJSON, SPEC 2.4)
    that fell out of the replay window: its cursor has already jumped to ``lost_to`` (the
    oldest byte held), so the caller reports the gap (``event: gap``) and calls ``views()``
    again. A raw watcher gets ``PeerGone(ending="lagged")`` instead.
    """

    def __init__(self, lost_from: int, lost_to: int) -> None:
        super().__init__(f"bytes {lost_from}..{lost_to} of the pipe are no longer held")
        self.lost_from = lost_from
        self.lost_to = lost_to


class RendezvousRejected(RingpipeError):
    """A party may not join a path; ``http_status`` and ``message`` form the HTTP answer."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(http_status={self.http_status}, message={self.message!r})"


class RingMemoryFull(RendezvousRejected):
    """No ring could be reserved: this worker's share of ``--max-memory`` is spent
    (``reason`` "memory_limit"), or ``/dev/shm`` is full ("shm_full"). The pipe's parties
    get 503 with ``message``; nothing was reserved."""

    MEMORY_LIMIT: Final = "The server is at its memory limit; try again later."
    SHM_FULL: Final = "The server's shared memory (/dev/shm) is full; try again later."

    def __init__(self, reason: str) -> None:
        super().__init__(503, self.SHM_FULL if reason == "shm_full" else self.MEMORY_LIMIT)
        self.reason = reason


class ControlProtocolError(RingpipeError):
    """A peer worker sent bytes that are not a valid control frame; drop that link."""


class SupervisorHalt(BaseException):
    """Stop the supervisor with ``exit_status`` (e.g. workers fail at boot in a loop)."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status
