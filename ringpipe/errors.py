"""ringpipe's exception vocabulary: AnyIO's words for streams, h11's status hints for HTTP.

Each class says exactly when it is raised. ``SupervisorHalt`` is a ``BaseException`` on
purpose (gunicorn's ``HaltServer``): application code that catches ``Exception`` must not be
able to swallow a shutdown.
"""

from __future__ import annotations

__all__ = [
    "ControlProtocolError",
    "PeerGone",
    "RendezvousRejected",
    "RingClosed",
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


class PeerGone(RingpipeError):
    """The other side vanished: the producer aborted, or the owner worker died.

    Readers that see it must end their response *visibly broken* (no final chunk), so that
    a client never mistakes a truncated body for a complete one (SPEC 1.3, item 11).
    """


class RendezvousRejected(RingpipeError):
    """A party may not join a path; ``http_status`` and ``message`` form the HTTP answer."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(http_status={self.http_status}, message={self.message!r})"


class ControlProtocolError(RingpipeError):
    """A peer worker sent bytes that are not a valid control frame; drop that link."""


class SupervisorHalt(BaseException):
    """Stop the supervisor with ``exit_status`` (e.g. workers fail at boot in a loop)."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status
