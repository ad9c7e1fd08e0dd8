"""A browser's ``EventSource`` parser, for checking SSE as a browser reads it, and the random
producer streams the framing property tests feed an encoder.

``EventSourceModel`` transcribes the WHATWG "event stream interpretation" algorithm (the one
every browser's EventSource runs), so a test asserts what a browser would see, not what our
encoder thinks it wrote. ``TEXT`` and ``CUTS`` draw a producer's text and where the network
cuts it; ``chunked`` makes the chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hypothesis import strategies as st


@dataclass
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class EventSourceModel:
    """The WHATWG event-stream parser: lines end at CRLF, CR or LF; a blank line dispatches."""

    events: list[Event] = field(default_factory=list)
    retry: int | None = None
    comments: int = 0
    _pending: str = ""
    _data: str = ""
    _type: str = ""
    _last_id: str = ""

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk.decode("utf-8")
        while True:
            match = re.search(r"\r\n|\r|\n", self._pending)
            if match is None or (match.group() == "\r" and match.end() == len(self._pending)):
                return  # a CR at the very end may be the first half of a CRLF
            line, self._pending = self._pending[: match.start()], self._pending[match.end() :]
            self._line(line)

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments += 1
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data += value + "\n"
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)

    def _dispatch(self) -> None:
        if self._data == "":
            self._type = ""
            return
        self.events.append(Event(self._type or "message", self._data[:-1], self._last_id))
        self._data, self._type = "", ""

    def text(self) -> str:
        return "".join(e.data for e in self.events if e.type == "message")

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.type == name]


def normalize(text: str) -> str:
    """``text`` with CRLF and CR line ends as LF, the way an EventSource splits lines."""
    return re.sub(r"\r\n|\r", "\n", text)


#: A producer's text: line ends of every kind, multi-byte characters, the replacement character.
TEXT = st.text(alphabet=st.sampled_from(list("ab \r\n:é✓\U0001f600\ufffd")), max_size=60)
#: Where the network cuts a stream (taken modulo its length).
CUTS = st.lists(st.integers(min_value=0, max_value=400), max_size=12)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (modulo its length), in order; empty pieces dropped."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]
