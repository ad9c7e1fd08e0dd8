"""A ``text/event-stream`` producer relayed to SSE readers, with resumable ids (SPEC 2.1, 2.4).

Pure: bytes in, bytes out. The producer's events go out byte for byte, except that an event
without an ``id:`` field of its own gets ``id: <epoch>-<offset>`` just before the blank line
that ends it, where ``offset`` is the pipe offset after that blank line: an EventSource that
reconnects sends it back as ``Last-Event-ID`` and resumes at the next event, with nothing
lost and nothing repeated.

An event is relayed when its blank line arrives (that is when a browser dispatches it
anyway); bytes of an unfinished event are held, at most ``MAX_EVENT_BYTES``, beyond which
they go out as they are, without an id (a resume then restarts at the last id issued).
Comment-only blocks (``: keep-alive``) are relayed unchanged and get no id.

Events that carry the producer's own ``id:`` are left alone. A browser then resumes with the
producer's id, which names no pipe offset: ringpipe treats it like an unknown epoch (SPEC 2.4:
``event: gap``, then the oldest bytes still held), so with the producer's own ids a reconnect
may repeat or skip events. Producers that want exact resume leave ``id:`` to ringpipe.

A reader that starts at an offset that is not an event boundary (after a gap, or a
``?offset=`` in the middle of an event) drops bytes up to the next blank line first, so it
never relays half an event. ``aligned=True`` says the start offset is a boundary (offset 0,
or an id this module issued).

Line ends are ``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r\\n`` split across chunks is one line end).
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = ["MAX_EVENT_BYTES", "EventStreamIds"]

MAX_EVENT_BYTES: Final = 1 << 20
#: A line end. Lines are found by searching for their ends (linear in the bytes), never with a
#: pattern that scans each line's content from every start position.
_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


class _Mode(enum.Enum):
    COLLECT = "collect"  #: holding the current event until its blank line
    SKIP = "skip"  #: joined inside an event: dropping bytes up to its blank line
    THROUGH = "through"  #: an event too big to hold: relaying it as it comes, up to its blank line


class _Cr(enum.Enum):
    """Where a CR that ended the last chunk went, so a LF opening the next chunk can follow it."""

    NONE = "none"
    HELD = "held"  #: at the end of the held event
    SENT = "sent"  #: already relayed
    DROPPED = "dropped"


class EventStreamIds:
    """One reader's view of an event-stream producer; see the module docstring.

    Invariant: in ``COLLECT`` mode everything relayed so far ends at an event boundary, and
    ``_event`` + ``_line`` are the bytes of the current event not yet relayed; in the other
    modes nothing is held (``_mid`` says whether the last byte seen was inside a line).
    """

    __slots__ = ("_cr", "_epoch", "_event", "_fields", "_has_id", "_line", "_mid", "_mode", "offset")

    def __init__(self, *, epoch: str, offset: int = 0, aligned: bool = True) -> None:
        self._epoch = epoch
        #: Pipe offset just after the last byte fed.
        self.offset = offset
        self._mode = _Mode.COLLECT if aligned or offset == 0 else _Mode.SKIP
        self._mid = self._mode is _Mode.SKIP  # unknown: the first line end found is not a blank line
        self._event = bytearray()
        self._line = bytearray()
        self._has_id = False
        self._fields = False  # the event has a field line, not only comments
        self._cr = _Cr.NONE

    @property
    def between_events(self) -> bool:
        """The bytes relayed so far end at an event boundary (a comment may be written now)."""
        return self._mode is not _Mode.THROUGH

    def feed(self, data: bytes) -> bytes:
        """The bytes to relay for ``data``: the events it completes (ids added)."""
        self.offset += len(data)
        out = bytearray()
        if self._cr is not _Cr.NONE and data[:1] == b"\n":
            data = data[1:]  # the LF of a CRLF whose CR ended the last chunk: it follows the CR
            if self._cr is _Cr.HELD:
                self._event += b"\n"
            elif self._cr is _Cr.SENT:
                out += b"\n"
        self._cr = _Cr.NONE
        if self._mode is _Mode.COLLECT and self._line and _LINE_END.search(data) is None:
            # Only a longer unfinished line: extend it (no rescan, no copy of what is held).
            if len(self._event) + len(self._line) + len(data) <= MAX_EVENT_BYTES:
                self._line += data
                return bytes(out)
        buffer = bytes(self._line) + data if self._mode is _Mode.COLLECT else data
        base = self.offset - len(buffer)  # the pipe offset of buffer[0]
        mid, position = self._mid, 0
        while (match := _LINE_END.search(buffer, position)) is not None:
            content, ending = buffer[position : match.start()], match.group()
            blank = content == b"" and not (mid and position == 0)
            position = match.end()
            at_end = ending == b"\r" and position == len(buffer)
            if self._mode is _Mode.THROUGH:
                out += content + ending
                self._mode = _Mode.COLLECT if blank else _Mode.THROUGH
                self._cr = _Cr.SENT if at_end else _Cr.NONE
            elif self._mode is _Mode.SKIP:
                self._mode = _Mode.COLLECT if blank else _Mode.SKIP
                self._cr = _Cr.DROPPED if at_end else _Cr.NONE
            elif content == b"":
                out += self._close(ending, base + position)
                self._cr = _Cr.SENT if at_end else _Cr.NONE
            else:
                self._event += content + ending
                if not content.startswith(b":"):
                    self._fields = True
                    self._has_id = self._has_id or content.split(b":", 1)[0] == b"id"
                self._cr = _Cr.HELD if at_end else _Cr.NONE
        rest = buffer[position:]
        self._mid = bool(rest) or (mid and position == 0)
        self._line = bytearray()
        if self._mode is _Mode.THROUGH:
            out += rest
        elif self._mode is _Mode.COLLECT:
            if len(self._event) + len(rest) <= MAX_EVENT_BYTES:
                self._line = bytearray(rest)
            else:
                out += self._event + rest  # too big to hold: relayed as it comes, without an id
                self._event.clear()
                self._mode = _Mode.THROUGH
                self._has_id = self._fields = False
                if self._cr is _Cr.HELD:
                    self._cr = _Cr.SENT
        return bytes(out)

    def _close(self, blank: bytes, end_offset: int) -> bytes:
        """The event that ``blank`` ends, with ``id: <epoch>-<end_offset>`` where it has none."""
        event = bytes(self._event)
        self._event.clear()
        if self._fields and not self._has_id and self._epoch:
            event += f"id: {self._epoch}-{end_offset}\n".encode()
        self._has_id = self._fields = False
        return event + blank

    def finish(self) -> bytes:
        """At the producer's end: what it left of an unfinished event, closed with a blank line
        so that whatever the reader is sent next (the ending) is an event of its own."""
        if self._mode is _Mode.COLLECT:
            unfinished = bytes(self._event) + self._line
            out = unfinished + (b"\n" if self._line else b"") + (b"\n" if unfinished else b"")
        elif self._mode is _Mode.THROUGH:
            out = (b"\n" if self._mid else b"") + b"\n"
        else:
            out = b""
        self._event.clear()
        self._line = bytearray()
        self._mode = _Mode.COLLECT
        return out

    def jump(self, to: int) -> None:
        """Continue at pipe offset ``to`` (after a gap): drop bytes up to the next event boundary."""
        self.offset = to
        self._event.clear()
        self._line = bytearray()
        self._mode = _Mode.SKIP
        self._mid = True
        self._cr = _Cr.NONE
        self._has_id = self._fields = False
