"""What a pipe request asks for, read from its headers and query string: ``?n``, the read
key, a resume point (``Last-Event-ID``, ``?offset=``, ``Range``), the stall timeout,
resumability, and the headers a sender's receivers will get.

Each parser returns the value, or the rejection message for a malformed one (the caller
answers 400 with it).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from starlette.types import Scope

from ringpipe.core.multipart import boundary_of
from ringpipe.core.paths import query_n, query_param
from ringpipe.core.rendezvous import Role
from ringpipe.http.responses import HEADERS_IN_RING, content_headers

__all__ = [
    "ResumePoint",
    "can_resume",
    "forget_headers",
    "header",
    "parse_n",
    "raw_header",
    "read_key",
    "receiver_headers",
    "resume_point",
    "stall_ms",
]

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d+)\s*-\s*$")
_EVENT_ID = re.compile(r"^([0-9a-z]*)-(\d+)$")


#: The scope key of the request's first header values by name (``_first_values``).
_FIRST_VALUES: Final = "ringpipe.first_header_values"


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope["headers"] if k == name]


def _first_values(scope: Scope) -> dict[bytes, bytes]:
    """Each request header's first value by (lower-case) name, built once per request and kept
    in its scope: a pipe request asks for a dozen headers, each once a scan of the list."""
    first: dict[bytes, bytes] | None = scope.get(_FIRST_VALUES)
    if first is None:  # in reverse, so that the first value of a repeated header wins
        first = scope[_FIRST_VALUES] = dict(reversed(scope["headers"]))
    return first


def forget_headers(scope: Scope) -> None:
    """Drop the request's header lookup table (``_first_values``) once the endpoint has read
    what it needs: a held request would keep it (~0.2 KiB) for its whole life. A later
    lookup builds it again."""
    scope.pop(_FIRST_VALUES, None)


def raw_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower-case bytes) as sent, or None."""
    first = scope.get(_FIRST_VALUES)  # (a call less per lookup once the table is built)
    return (_first_values(scope) if first is None else first).get(name)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case bytes), or None."""
    first = scope.get(_FIRST_VALUES)
    value = (_first_values(scope) if first is None else first).get(name)
    return None if value is None else value.decode("latin-1")


def parse_n(scope: Scope, role: Role, max_receivers: int) -> int | str:
    """``?n`` as an int, or the rejection message (SPEC 1.2, 8; piping's texts)."""
    n = query_n(scope["query_string"])
    if n is None:
        return 'Invalid "n" query parameter' if role is Role.SENDER else 'Invalid query parameter "n"'
    if n <= 0:
        return f"n should > 0, but n = {n}."
    if n > max_receivers:
        return f"n should be at most {max_receivers}, but n = {n}."
    return n


def receiver_headers(scope: Scope) -> tuple[tuple[str, str], ...]:
    """The response headers every receiver gets, from the sender's request (SPEC 1.1, 4).

    For a multipart upload (SPEC 1.4, 16) the content headers are the first part's, which
    only the sender's worker can read: they travel in the ring (``ingest.header_block``).
    """
    content_type = header(scope, b"content-type")
    if boundary_of(content_type) is not None:
        out = [(HEADERS_IN_RING, "1")]
    else:
        out = content_headers(header(scope, b"content-length"), content_type, header(scope, b"content-disposition"))
    x_piping = _header_values(scope, b"x-piping")
    out += [("x-piping", value) for value in x_piping]
    out.append(("access-control-allow-origin", "*"))
    if x_piping:
        out.append(("access-control-expose-headers", "X-Piping"))
    out.append(("x-robots-tag", "none"))
    return tuple(out)


def read_key(scope: Scope) -> str:
    """The hex sha256 of the party's read key (``Ringpipe-Read-Key`` or ``?key=``), or ``""``.

    Only this digest leaves the endpoint (control frames, comparisons); the key is never logged.
    """
    key = header(scope, b"ringpipe-read-key")
    if key is None:
        key = query_param(scope["query_string"], "key")
    return hashlib.sha256(key.encode()).hexdigest() if key else ""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a reconnecting receiver continues: pipe ``offset`` of pipe ``epoch`` (``""``: any).

    ``foreign``: the reader sent back an event id that is not ours (a ``text/event-stream``
    producer's own ``id:``); it names no offset, so the reader resumes as from another pipe.
    """

    offset: int
    epoch: str
    by_range: bool
    foreign: bool = False


def resume_point(scope: Scope, *, takes_gaps: bool = False) -> ResumePoint | str | None:
    """The reader's resume request (SPEC 2.4), None without one, or why it is malformed.

    An event id that is not ``<epoch>-<offset>`` is malformed, except for a reader that takes
    gaps (SSE, NDJSON), for whom it is a ``foreign`` one (never a refusal, SPEC 2.4).
    """
    query = scope["query_string"]
    event_id = header(scope, b"last-event-id") or query_param(query, "last_event_id")
    if event_id:
        match = _EVENT_ID.match(event_id.strip())
        if match is None:
            if takes_gaps:
                return ResumePoint(0, "", False, foreign=True)
            return f"The event id {event_id!r} is not <epoch>-<offset>."
        return ResumePoint(int(match.group(2)), match.group(1), False)
    raw = query_param(query, "offset")
    if raw is not None:
        if not raw.isdigit():
            return f"The offset {raw!r} is not a number of bytes."
        return ResumePoint(int(raw), "", False)
    ranges = header(scope, b"range")
    if ranges is not None:
        match = _RANGE.match(ranges)
        if match is None:
            return "Only one open range 'bytes=N-' can be resumed."
        return ResumePoint(int(match.group(1)), "", True)
    return None


def stall_ms(scope: Scope) -> int | str:
    """``?stall_timeout=`` in ms (-1: the server's default), or why it is malformed."""
    raw = query_param(scope["query_string"], "stall_timeout")
    if raw is None:
        return -1
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        return f"stall_timeout should be 0..86400 seconds, but it is {raw!r}."
    return round(seconds * 1000)


def can_resume(scope: Scope) -> bool:
    """Whether a receiver can come back (so its slot is reserved when it drops, SPEC 2.4):
    EventSource/SSE, NDJSON and WebSocket readers, or a raw reader asking ``?resume=1``."""
    query = scope["query_string"]
    if query_param(query, "resume") in ("1", "true"):
        return True
    if query_param(query, "format") in ("sse", "ndjson", "lines"):
        return True
    if "text/event-stream" in (header(scope, b"accept") or ""):
        return True
    return (header(scope, b"upgrade") or "").lower() == "websocket"
