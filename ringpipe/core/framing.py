"""Reader framings (SPEC 2.1, 2.2): the producer's bytes re-encoded for SSE, NDJSON and WebSocket lines.

Pure: bytes in, bytes (or strings) out; no socket, no clock. ``http/readers/`` is the I/O shell.

**Text.** A text framing decodes the pipe as UTF-8 with an incremental decoder, so a
character split across two chunks is never broken; an invalid sequence becomes U+FFFD and is
counted (``replaced``). Bytes of an unfinished character are *held* (at most 3) until the
next chunk completes them; offsets never count held bytes.

**Granularity (SPEC 2.1).** SSE and NDJSON come in two granularities: *chunks* (below: one
event per chunk, tokens live) and *lines* (one event per complete producer line, so
``JSON.parse(e.data)`` works on every event of a JSON-lines producer). ``?sse=`` /
``?ndjson=`` choose; without it ``default_granularity`` picks *lines* for a producer whose
Content-Type is NDJSON / JSON lines / JSON text sequences and *chunks* for any other.

**SSE chunks rule (the exact one).** Every chunk the reader takes from the ring becomes one event, at
once (tokens appear live, even without a newline). The chunk's text is split at its line
ends (``\\n``, ``\\r\\n``, ``\\r``; a ``\\r\\n`` split across two chunks is one line end) and each
piece becomes one ``data:`` line. EventSource joins the data lines of one event with LF, so
``event.data`` is exactly the chunk's text with every line end written as LF, and

    concatenating ``event.data`` of the message events == the producer's text
    (line ends normalized to LF; invalid UTF-8 as U+FFFD)

An event boundary may fall inside a producer line (that is what makes a token live), but it
never adds a line break to the reassembled text: a client appends ``event.data`` and gets
lines exactly where the producer put them. (A client that wants whole lines splits the
reassembled text at LF.) ``tests/unit/test_framing.py`` proves the equation with a model
of the EventSource parser. Nothing is held back except the bytes of an unfinished UTF-8
character, so no partial line ever waits for its end.

**SSE lines rule.** Each complete producer line becomes one event with one ``data:`` line (the
line without its line end; a partial line is held until its end or the producer's end, see
``line_records.py``). EventSource cannot deliver an event with empty data, so a blank line is
no event, and

    the events' ``event.data`` in order == the producer's non-blank lines
    (so joining them with LF rebuilds the text, blank lines aside)

For ``application/json-seq`` (RFC 7464) the record separator that opens each record is
dropped, so every event is one JSON text.

Every event has ``id: <epoch>-<offset>``, the pipe offset just after the bytes it carries
(what a reader resumes from; in *lines*, after the line's line end). ``retry: 1000`` opens
the stream. Endings are named events carrying JSON (EventSource never fires an event without
data): ``event: done``, ``error`` (aborted), ``cancelled``, ``lagged``; ``?done=openai`` adds
a last ``data: [DONE]``. A watcher
that fell out of the replay window gets ``event: gap`` with ``{"from": a, "to": b}`` and goes on
at ``b``. Binary producers (or ``?encoding=base64``) get ``event: base64`` with each chunk in
base64; a ``text/event-stream`` producer is passed through event by event, with an id added
to each event that has none (``event_stream.py``), and the ending is appended after a blank
line.

**NDJSON.** One JSON object per chunk: ``{"offset": <pipe offset after the chunk>, "data":
"<text>"}`` (``"base64"`` instead of ``"data"`` for binary); JSON keeps ``\\r\\n`` exactly, so
``jq -j .data`` rebuilds the producer's text byte for byte. Then ``{"gap": {...}}`` lines for a
lagging watcher, and a last ``{"end": "<ending>", "offset": N}``. In *lines*, one object per
producer line (blank lines too: JSON can carry an empty string), ``"data"`` without the line
end and ``"offset"`` after it: the records' ``data`` are the producer's lines.

**Lines** (WebSocket ``?format=lines``): one text message per producer line, without its line
end. A partial line is held until its end or the end of the stream, or until it reaches
``MAX_LINE_CHARS``, when that much is sent as a message of its own (memory stays bounded).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Final, Literal

from ringpipe.core.errors import ENDINGS
from ringpipe.core.event_stream import EventStreamIds
from ringpipe.core.line_records import LineRecords
from ringpipe.core.utf8 import Utf8Text

__all__ = [
    "GRANULARITIES",
    "MAX_LINE_CHARS",
    "PING",
    "RETRY",
    "LineSplitter",
    "NdjsonEncoder",
    "SseEncoder",
    "Utf8Text",
    "default_granularity",
    "is_event_stream",
    "is_text_like",
    "mime_of",
]

Mode = Literal["text", "base64", "passthrough"]
Granularity = Literal["chunks", "lines"]
GRANULARITIES: Final = ("chunks", "lines")

RETRY: Final = b"retry: 1000\n\n"
PING: Final = b": ping\n\n"
#: A ``?format=lines`` line longer than this (in characters) is sent in pieces of this size.
MAX_LINE_CHARS: Final = 1 << 20
#: SSE event name per ending (SPEC 2.1): the aborted ending is ``event: error``.
SSE_EVENT: Final = {"done": "done", "aborted": "error", "cancelled": "cancelled", "lagged": "lagged"}
_LINE_END: Final = re.compile(r"\r\n|\r|\n")
#: A byte that JSON writes escaped (a control character, a quote, a backslash).
_JSON_ESCAPED: Final = re.compile(rb'[\x00-\x1f"\\]')
#: Producers whose records are lines: their SSE/NDJSON readers get *lines* by default.
_LINE_RECORD_TYPES: Final = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-seq",
    }
)
_TEXT_APPLICATION: Final = _LINE_RECORD_TYPES | {"application/json"}
_RECORD_SEPARATOR: Final = "\x1e"


def mime_of(content_type: str | None) -> str:
    """The MIME type of a Content-Type value, lower-cased, without parameters ("" for none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_text_like(content_type: str | None) -> bool:
    """Text framings decode it as UTF-8: ``text/*``, JSON (``+json`` too), NDJSON, or no type."""
    mime = mime_of(content_type)
    return mime == "" or mime.startswith("text/") or mime in _TEXT_APPLICATION or mime.endswith("+json")


def is_event_stream(content_type: str | None) -> bool:
    return mime_of(content_type) == "text/event-stream"


def default_granularity(content_type: str | None) -> Granularity:
    """*lines* for a producer of JSON lines / NDJSON / JSON text sequences, *chunks* for any other."""
    return "lines" if mime_of(content_type) in _LINE_RECORD_TYPES else "chunks"


def _record_text(text: str, content_type: str | None) -> str:
    """A line record's text: a JSON text sequence's record separator removed."""
    if text.startswith(_RECORD_SEPARATOR) and mime_of(content_type) == "application/json-seq":
        return text.lstrip(_RECORD_SEPARATOR)
    return text


def _check_ending(ending: str) -> str:
    if ending not in ENDINGS:
        raise ValueError(f"unknown ending {ending!r}; one of {ENDINGS}")
    return ending


class _TextStream:
    """Shared by the text encoders: decoding, pipe offsets, and ``\\r\\n`` split across chunks."""

    __slots__ = ("_after_cr", "_mid_char", "taken", "utf8")  # per token, like ``RawBody``'s

    def __init__(self, offset: int) -> None:
        self.utf8 = Utf8Text()
        #: Pipe offset just after the last byte taken (held bytes included).
        self.taken = offset
        self._after_cr = False
        #: The decoder may hold the start of a character: the last byte it took was not ASCII
        #: (an unfinished character ends with a non-ASCII byte). False: it holds nothing.
        self._mid_char = False

    @property
    def offset(self) -> int:
        """Pipe offset just after the last byte represented in the output."""
        return self.taken - self.utf8.held

    @property
    def replaced(self) -> int:
        return self.utf8.replaced

    def decode(self, data: bytes, *, final: bool = False) -> str:
        """``data`` as text, from the incremental decoder (``taken`` counts it)."""
        self.taken += len(data)
        if data:
            self._mid_char = data[-1] >= 0x80
        elif final:
            self._mid_char = False
        return self.utf8.decode(data, final=final)

    def take_ascii_line(self, data: bytes) -> bool:
        """``take_ascii`` for a chunk that also holds no line end (no CR of a CRLF is open
        after it): the token stream's common chunk, without the decoder or a split."""
        if b"\n" in data or b"\r" in data or not self.take_ascii(data):
            return False
        self._after_cr = False
        return True

    def take_ascii(self, data: bytes) -> bool:
        """Take ``data`` where its text is its bytes (ASCII, the decoder holding nothing);
        False, having taken nothing, for any other chunk."""
        if self._mid_char or not data or not data.isascii():
            return False
        self.taken += len(data)
        return True

    def text(self, data: bytes, *, final: bool = False) -> str:
        text = self.decode(data, final=final)
        if self._after_cr and text:
            self._after_cr = False
            if text.startswith("\n"):
                text = text[1:]  # the LF of a CRLF whose CR ended the previous chunk's text
        if text:
            self._after_cr = text.endswith("\r")
        return text

    def jump(self, to: int) -> None:
        """Continue at pipe offset ``to`` (after a gap): nothing carries over."""
        self.utf8.reset()
        self.taken = to
        self._after_cr = False
        self._mid_char = False


class _OverText:
    """An encoder over one reader's text: how far it has represented the pipe (``offset``) and
    how many invalid UTF-8 sequences it replaced (``replaced``), whichever granularity it runs.

    ``_lines`` is set once the producer is known and the granularity is *lines*; until then
    (and in *chunks*) ``_text`` carries the offsets.
    """

    # Slots (and the subclasses'): an encoder's state is read per token, like ``_TextStream``'s.
    __slots__ = ("_aligned", "_content_type", "_lines", "_text", "granularity")

    _text: _TextStream
    _lines: LineRecords | None
    #: The reader's first byte starts a record (see ``LineRecords``' ``aligned``).
    _aligned: bool
    _content_type: str | None
    granularity: Granularity

    @property
    def replaced(self) -> int:
        """Invalid UTF-8 sequences replaced by U+FFFD so far."""
        return self._text.replaced + (self._lines.replaced if self._lines is not None else 0)

    @property
    def offset(self) -> int:
        if self._lines is not None:
            return self._lines.offset - self._lines.held
        return self._text.offset

    def _start_lines(self, asked: Granularity | None, content_type: str | None) -> None:
        """Switch to *lines* where asked, or by default for this producer (called by ``begin``)."""
        self.granularity = asked or default_granularity(content_type)
        self._content_type = content_type
        if self.granularity == "lines":
            self._lines = LineRecords(offset=self._text.taken, aligned=self._aligned)


class SseEncoder(_OverText):
    """Pipe bytes → ``text/event-stream`` for one reader (see the module docstring for the rules).

    ``begin(content_type)`` picks the mode and granularity once the producer is known (the
    head, with ``RETRY``, may have gone out before); ``base64=True`` (``?encoding=base64``)
    forces base64; ``granularity`` is ``?sse=`` (None: by the producer's Content-Type).
    ``aligned=False`` says the reader starts at an offset that may fall inside a passed-through
    event (not one of our ids): it then starts at the next event.
    """

    __slots__ = ("_asked", "_done_openai", "_events", "_forced_base64", "_id_head", "epoch", "mode")

    def __init__(
        self,
        *,
        epoch: str,
        offset: int = 0,
        base64: bool = False,
        done_openai: bool = False,
        granularity: Granularity | None = None,
        aligned: bool = True,
    ) -> None:
        self.epoch = epoch
        self._lines = None
        #: ``id: <epoch>-`` as bytes, made once: every event's id starts with it.
        self._id_head = f"id: {epoch}-".encode() if epoch else b""
        self.mode: Mode = "base64" if base64 else "text"
        self.granularity = granularity or "chunks"
        self._asked = granularity
        self._aligned = aligned
        self._forced_base64 = base64
        self._done_openai = done_openai
        self._text = _TextStream(offset)
        self._content_type: str | None = None
        self._events: EventStreamIds | None = None

    def begin(self, content_type: str | None) -> None:
        if is_event_stream(content_type) and not self._forced_base64:
            self.mode = "passthrough"
            self._events = EventStreamIds(epoch=self.epoch, offset=self._text.taken, aligned=self._aligned)
        elif not is_text_like(content_type):
            self.mode = "base64"
        elif self.mode == "text":
            self._start_lines(self._asked, content_type)

    def _id(self, offset: int | None = None) -> bytes:
        """``id: <epoch>-<offset>``; none before the reader has a pipe (no epoch: nothing to resume)."""
        if not self._id_head:
            return b""
        return b"%s%d\n" % (self._id_head, self.offset if offset is None else offset)

    def feed(self, data: bytes) -> bytes:
        """The SSE bytes for one chunk of the pipe (``b""`` when nothing is complete yet)."""
        if self._events is not None:
            self._text.taken += len(data)
            return self._events.feed(data)
        if self.mode == "base64":
            self._text.taken += len(data)
            if not data:
                return b""
            return b"event: base64\n" + self._id() + b"data: " + base64.b64encode(data) + b"\n\n"
        if self._lines is not None:
            return self._line_events(self._lines.feed(data))
        if self._text.take_ascii_line(data):  # a token: one ``data:`` line, the bytes themselves
            if self._id_head:
                return b"%s%d\ndata: %s\n\n" % (self._id_head, self._text.taken, data)
            return b"data: " + data + b"\n\n"
        text = self._text.text(data)
        if not text:
            return b""
        lines = "".join(f"data: {line}\n" for line in _LINE_END.split(text))
        return self._id() + lines.encode() + b"\n"

    def _line_events(self, records: list[tuple[str, int]]) -> bytes:
        out = []
        for text, end in records:
            line = _record_text(text, self._content_type)
            if line:  # EventSource drops an event whose data is empty: a blank line is none
                out.append(self._id(end) + f"data: {line}\n\n".encode())
        return b"".join(out)

    def ping(self) -> bytes | None:
        """A comment that keeps proxies from timing out, or None where one cannot go now."""
        if self._events is not None:
            return b": ping\n" if self._events.between_events else None
        return PING

    def gap(self, lost_from: int, lost_to: int) -> bytes:
        """A watcher lost ``[lost_from, lost_to)`` of the pipe; it goes on at ``lost_to``."""
        self._text.jump(lost_to)
        if self._lines is not None:
            self._lines.jump(lost_to)
        if self._events is not None:
            self._events.jump(lost_to)
        # In chunks any offset is a place to resume; a line or a passed-through event may go on
        # past ``lost_to``, so there the gap leaves the reader's last id as it was.
        with_id = self._lines is None and self._events is None
        return self._named("gap", {"from": lost_from, "to": lost_to}, with_id=with_id)

    def end(self, ending: str, reason: str | None = None) -> bytes:
        """The last bytes of the stream for ``ending`` (SPEC 2.2)."""
        ending = _check_ending(ending)
        out = b""
        if self._events is not None:
            out += self._events.finish()  # the producer's unfinished event, closed before ours
        elif self._lines is not None:
            out += self._line_events(self._lines.finish())
        elif self.mode == "text":
            tail = self._text.text(b"", final=True)  # a truncated character → U+FFFD
            if tail:
                out += self._id() + "".join(f"data: {line}\n" for line in _LINE_END.split(tail)).encode() + b"\n"
        payload: dict[str, object] = {"ending": ending, "offset": self._text.taken if self._events else self.offset}
        if reason:
            payload["reason"] = reason
        out += self._named(SSE_EVENT[ending], payload)
        if ending == "done" and self._done_openai:
            out += self._id() + b"data: [DONE]\n\n"
        return out

    def _named(self, name: str, payload: dict[str, object], *, with_id: bool = True) -> bytes:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {name}\n".encode() + (self._id() if with_id else b"") + f"data: {data}\n\n".encode()


class NdjsonEncoder(_OverText):
    """Pipe bytes → NDJSON lines for one reader: one record per chunk (or per line), then the end."""

    __slots__ = ("_asked", "_forced_base64", "base64")

    def __init__(
        self,
        *,
        offset: int = 0,
        base64: bool = False,
        granularity: Granularity | None = None,
        aligned: bool = True,
    ) -> None:
        self.base64 = base64
        self._lines = None
        self._aligned = aligned
        self.granularity = granularity or "chunks"
        self._asked = granularity
        self._forced_base64 = base64
        self._text = _TextStream(offset)
        self._content_type: str | None = None

    def begin(self, content_type: str | None) -> None:
        if not is_text_like(content_type):
            self.base64 = True
        elif not self.base64:
            self._start_lines(self._asked, content_type)

    def feed(self, data: bytes) -> bytes:
        if self.base64:
            self._text.taken += len(data)
            if not data:
                return b""
            return _line({"offset": self._text.offset, "base64": base64.b64encode(data).decode()})
        if self._lines is not None:
            return self._records(self._lines.feed(data))
        if _JSON_ESCAPED.search(data) is None and self._text.take_ascii(data):  # JSON writes it as it is
            return b'{"offset":%d,"data":"%s"}\n' % (self._text.taken, data)
        text = self._text.decode(data)
        return _line({"offset": self._text.offset, "data": text}) if text else b""

    def _records(self, records: list[tuple[str, int]]) -> bytes:
        return b"".join(_line({"offset": end, "data": _record_text(text, self._content_type)}) for text, end in records)

    def gap(self, lost_from: int, lost_to: int) -> bytes:
        self._text.jump(lost_to)
        if self._lines is not None:
            self._lines.jump(lost_to)
        return _line({"gap": {"from": lost_from, "to": lost_to}})

    def end(self, ending: str, reason: str | None = None) -> bytes:
        ending = _check_ending(ending)
        out = b""
        if self._lines is not None:
            out += self._records(self._lines.finish())
        elif not self.base64:
            tail = self._text.decode(b"", final=True)
            if tail:
                out += _line({"offset": self._text.taken, "data": tail})
        payload: dict[str, object] = {"end": ending, "offset": self.offset}
        if reason:
            payload["reason"] = reason
        return out + _line(payload)


def _line(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class LineSplitter(_OverText):
    """Pipe bytes → whole lines (text, without their line ends), for WebSocket ``?format=lines``."""

    __slots__ = ("_max", "_partial")

    def __init__(self, *, offset: int = 0, max_line: int = MAX_LINE_CHARS) -> None:
        self._text = _TextStream(offset)
        self._lines = None
        self._aligned = True
        self._content_type = None
        self.granularity = "lines"
        self._partial = ""
        self._max = max_line

    def feed(self, data: bytes) -> list[str]:
        return self._split(self._text.text(data))

    def _split(self, text: str) -> list[str]:
        if not text:
            return []
        pieces = _LINE_END.split(self._partial + text)
        self._partial = pieces.pop()
        while len(self._partial) >= self._max:
            pieces.append(self._partial[: self._max])
            self._partial = self._partial[self._max :]
        return pieces

    def end(self) -> list[str]:
        """What is left at the end of the stream: the last line if it had no line end."""
        lines = self._split(self._text.text(b"", final=True))
        if self._partial:
            lines.append(self._partial)
            self._partial = ""
        return lines

    def gap(self, lost_to: int) -> None:
        self._text.jump(lost_to)
        self._partial = ""
