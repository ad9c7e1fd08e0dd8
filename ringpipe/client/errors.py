"""What the client raises: one class per way a transfer can fail to end cleanly (SPEC 2.2).

A clean end is never an exception: ``receive`` stops iterating and ``send`` returns a
``SendResult``. Everything else is a ``ClientError``:

- ``PipeRefused``: the server said no (an HTTP error status with its ``[ERROR]`` line, or an
  ``[ERROR]`` line ending a sender's log). Retrying the same request gives the same answer.
- ``RelayUnreachable``: no answer at all (connect failed), or the connection was lost and
  could not be resumed within the client's reconnect budget.
- ``PipeEnded`` and its subclasses: the transfer itself ended other than cleanly; each
  carries ``offset``, the pipe offset this reader had taken up to when it ended.

The CLI maps each class to an exit code (``cli.EXIT_CODES``). No message ever holds a
secret: texts are the server's ``[ERROR]`` lines and pipe paths, never a URL's query.
"""

from __future__ import annotations

from ringpipe.core.errors import RingpipeError

__all__ = [
    "ClientError",
    "PipeAborted",
    "PipeCancelled",
    "PipeEnded",
    "PipeGap",
    "PipeLagged",
    "PipeRefused",
    "RelayUnreachable",
]


class ClientError(RingpipeError):
    """Base class of every error the client raises on purpose."""


class PipeRefused(ClientError):
    """The server refused the request; ``status`` and ``message`` are its answer.

    ``status`` is the HTTP status (401 no credential, 403 wrong credential or read key, 400
    a conflict on the path, 408 nobody came in time, 410 the pipe or offset is gone, 503 at
    capacity), or None when a sender's log, already answered 200, ended with an
    ``[ERROR]`` line (a wait timeout, a malformed body, a server worker lost). ``message``
    is the ``[ERROR]`` text without its prefix: it says what to change.
    """

    def __init__(self, status: int | None, message: str, *, path: str = "") -> None:
        where = f" ({path})" if path else ""
        super().__init__(f"refused{where}: {status if status is not None else 'in the log'}: {message}")
        self.status = status
        self.message = message
        self.path = path


class RelayUnreachable(ClientError):
    """The relay could not be reached, or the connection broke and did not come back.

    Raised for a first connection that fails (nothing listening, DNS, TLS), and for a
    dropped reader whose reconnects all failed within ``reconnect_for`` seconds. A sender
    whose connection broke mid-upload gets it too: uploads cannot be resumed.
    """


class PipeEnded(ClientError):
    """The transfer ended other than cleanly for this party; ``offset`` is how far it got.

    ``reason`` is the server's explanation where it gave one (NDJSON ``reason`` field).
    """

    ending = "aborted"

    def __init__(self, offset: int, reason: str | None = None) -> None:
        text = f"pipe {self.ending} at offset {offset}"
        super().__init__(f"{text}: {reason}" if reason else text)
        self.offset = offset
        self.reason = reason


class PipeAborted(PipeEnded):
    """The producer vanished mid-body (or a server worker died): the data is incomplete.

    ``certain`` is False when the framing could not say why the stream stopped: a raw reader
    only sees its connection close, and once the pipe is gone the server cannot tell a
    resuming reader whether the producer vanished, the pipe was cancelled or this reader
    was evicted. Read with ``framing="ndjson"`` (the default) to always know.
    """

    ending = "aborted"

    def __init__(self, offset: int, reason: str | None = None, *, certain: bool = True) -> None:
        super().__init__(offset, reason)
        self.certain = certain


class PipeCancelled(PipeEnded):
    """Someone cancelled the pipe (``DELETE``): for a sender its upload was stopped, for a
    reader the stream ends here."""

    ending = "cancelled"


class PipeLagged(PipeEnded):
    """This reader made no progress for the server's ``stall_timeout`` while the producer
    waited on it, and was evicted (SPEC 2.5). Read faster, or ask ``stall_timeout=0``."""

    ending = "lagged"


class PipeGap(PipeLagged):
    """Bytes ``[lost_from, lost_to)`` of the pipe are no longer held for this reader.

    A watcher that fell out of the replay window, or a resume from an offset the ring no
    longer holds. It is a kind of lagging: ``except PipeLagged`` catches it too. ``offset``
    equals ``lost_from``.
    """

    ending = "lagged"

    def __init__(self, lost_from: int, lost_to: int) -> None:
        super().__init__(lost_from, f"bytes {lost_from}..{lost_to} are no longer held")
        self.lost_from = lost_from
        self.lost_to = lost_to
