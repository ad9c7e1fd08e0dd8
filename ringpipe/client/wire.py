"""What the server says, parsed: the sender's log, HEAD's status headers, NDJSON records,
``[ERROR]`` bodies and the 410 texts a resuming reader can get. Pure: text in, values out.

The sender's log (SPEC 1.1, 3; 1.3, 12; 2.3; 2.5) is the only place a sender learns how its
transfer went. ``SenderLog`` folds its lines, in order, into counts; ``outcome`` turns the
last line into a ``SendResult`` or the error that ended it. Lines it does not know are kept
(``lines``) and otherwise ignored, so a server that adds lines does not break the client.

Invariant of every value here: offsets are pipe offsets (bytes since the producer's first
byte), and ``Chunk.offset`` is the offset just *after* the chunk: where a resume continues,
as in the server's SSE ids and NDJSON records.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from ringpipe.client.errors import PipeCancelled, PipeRefused, RelayUnreachable

__all__ = [
    "SECRET_PARAMS",
    "Chunk",
    "DataRecord",
    "EndRecord",
    "GapRecord",
    "PipeStatus",
    "SendResult",
    "SenderLog",
    "error_message",
    "parse_record",
    "parse_status",
    "redact_url",
    "resume_refusal",
]

#: Query parameters that are credentials (signed URLs, read keys): never logged or shown.
SECRET_PARAMS: Final = frozenset({"rp_sig", "key", "token", "access_token"})


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes of the pipe as one read delivered them; ``offset`` is the pipe offset just
    after ``data`` (pass it to a later reader to continue from here)."""

    data: bytes
    offset: int

    @property
    def start(self) -> int:
        """The pipe offset of ``data[0]``."""
        return self.offset - len(self.data)


@dataclass(frozen=True, slots=True)
class SendResult:
    """How a transfer went for its sender, read from the sender's log.

    ``receivers`` is the n the transfer started with; ``completed`` of them read every byte,
    ``aborted`` dropped (or did not come back within the reconnect grace), ``evicted`` were
    cut for making no progress. ``ok`` means at least one receiver got everything.
    """

    receivers: int
    completed: int
    aborted: int
    evicted: int
    bytes_sent: int
    log: tuple[str, ...] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.completed > 0

    @property
    def ending(self) -> Literal["done", "aborted", "lagged"]:
        """``done`` when a receiver completed; else ``lagged`` if every loss was an eviction."""
        if self.completed:
            return "done"
        return "lagged" if self.evicted and not self.aborted else "aborted"


State = Literal["free", "waiting", "established"]


@dataclass(frozen=True, slots=True)
class PipeStatus:
    """A pipe's state from ``HEAD`` (SPEC 2.6): ``free`` (nothing there), ``waiting`` (parties
    registered, not all there) or ``established`` (bytes flowing). ``connected`` of ``n``
    receivers are there; ``offset`` is the bytes written so far; ``epoch`` tells this pipe
    from an older one on the same path (resumes name it)."""

    state: State
    connected: int = 0
    n: int = 0
    offset: int = 0
    epoch: str = ""


_WAITING = re.compile(r"\[INFO\] Waiting for (\d+) receiver\(s\)\.\.\.")
_CONNECTED = re.compile(r"\[INFO\] (\d+) receiver\(s\) has/have been connected\.")
_START = re.compile(r"\[INFO\] Start sending to (\d+) receiver\(s\)!")
_ERROR = re.compile(r"\[ERROR\] ?(.*)")


class SenderLog:
    """The sender's ``[INFO]`` log folded into counts, line by line (``feed``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        #: Receivers the pipe waits for / started with (None until the log says).
        self.n: int | None = None
        self.connected = 0
        self.started = False
        #: The server has read the whole upload (``Sent successfully!``).
        self.uploaded = False
        self.aborted = 0
        self.evicted = 0
        #: How the log ended: None while it is open (or was cut).
        self.final: Literal["done", "all_aborted", "cancelled", "error"] | None = None
        self.error: str | None = None

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line:
            return
        self.lines.append(line)
        if match := _WAITING.fullmatch(line):
            self.n = int(match.group(1))
        elif match := _CONNECTED.fullmatch(line):
            self.connected = int(match.group(1))
        elif line == "[INFO] A receiver was connected.":
            self.connected += 1
        elif match := _START.fullmatch(line):
            self.started = True
            self.n = self.connected = int(match.group(1))
        elif line == "[INFO] Sent successfully!":
            self.uploaded = True
        elif line == "[INFO] A receiver aborted.":
            self.aborted += 1
        elif line.startswith("[INFO] A receiver was evicted"):
            self.evicted += 1
        elif line == "[INFO] All receiver(s) was/were received successfully.":
            self.final = "done"
        elif line == "[INFO] All receiver(s) was/were aborted halfway.":
            self.final = "all_aborted"
        elif line == "[INFO] Cancelled.":
            self.final = "cancelled"
        elif match := _ERROR.fullmatch(line):
            self.final = "error"
            self.error = match.group(1)

    def outcome(self, bytes_sent: int, *, path: str = "") -> SendResult:
        """The result the log ends with.

        Raises:
            PipeCancelled: the log says ``Cancelled.`` (``DELETE`` on the path).
            PipeRefused: the log ends with an ``[ERROR]`` line (``status`` None).
            RelayUnreachable: the log was cut before its last line: the connection broke,
                and nobody can say how the transfer went.
        """
        if self.final == "cancelled":
            raise PipeCancelled(bytes_sent, "the pipe was cancelled")
        if self.final == "error":
            raise PipeRefused(None, self.error or "", path=path)
        if self.final is None:
            raise RelayUnreachable(f"the connection broke before the sender's log ended ({path or 'pipe'})")
        n = self.n or 0
        completed = 0 if self.final == "all_aborted" else max(n - self.aborted - self.evicted, 0)
        return SendResult(n, completed, self.aborted, self.evicted, bytes_sent, tuple(self.lines))


def parse_status(status_code: int, headers: Mapping[str, str]) -> PipeStatus:
    """``HEAD``'s answer → ``PipeStatus`` (404: free). ``headers`` must look up case-insensitively
    (httpx's do). Raises ``ValueError`` for a 200 whose headers are not the server's."""
    if status_code == 404:
        return PipeStatus("free")
    state = headers.get("ringpipe-state", "")
    if status_code != 200 or state not in ("waiting", "established"):
        raise ValueError(f"not a ringpipe status answer: {status_code} state={state!r}")
    connected, _, n = headers.get("ringpipe-receivers", "0/0").partition("/")
    return PipeStatus(
        state,  # type: ignore[arg-type]  # checked against the literals above
        connected=int(connected),
        n=int(n or 0),
        offset=int(headers.get("ringpipe-offset", "0") or 0),
        epoch=headers.get("ringpipe-epoch", ""),
    )


def error_message(body: bytes) -> str:
    """The reason in a rejection body (``[ERROR] <reason>``), or the body's first line."""
    text = body.decode("utf-8", "replace").strip()
    first = text.splitlines()[0] if text else ""
    match = _ERROR.fullmatch(first)
    return match.group(1) if match else first


# -- NDJSON records (SPEC 2.1; the client always reads them with ?encoding=base64) --


@dataclass(frozen=True, slots=True)
class DataRecord:
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class GapRecord:
    lost_from: int
    lost_to: int


@dataclass(frozen=True, slots=True)
class EndRecord:
    ending: str
    offset: int
    reason: str | None


Record = DataRecord | GapRecord | EndRecord


def parse_record(line: bytes | str) -> Record:
    """One NDJSON line → a record; ``data`` (text) is UTF-8 encoded, ``base64`` decoded.

    Raises ``ValueError`` for a line that is not one of the server's records.
    """
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not an NDJSON record: {line[:80]!r}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"not an NDJSON record: {line[:80]!r}")
    try:
        if "end" in obj:
            reason = obj.get("reason")
            return EndRecord(str(obj["end"]), int(obj.get("offset", 0)), None if reason is None else str(reason))
        if "gap" in obj:
            return GapRecord(int(obj["gap"]["from"]), int(obj["gap"]["to"]))
        if "base64" in obj:
            return DataRecord(base64.b64decode(obj["base64"]), int(obj["offset"]))
        return DataRecord(str(obj["data"]).encode("utf-8", "replace"), int(obj["offset"]))
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not an NDJSON record: {line[:80]!r}") from exc


# -- 410 answers to a resume --

_NOT_HELD = re.compile(r"Offset (\d+) of .* is no longer held \(held: (\d+)\.\.(\d+)\)\.")


def resume_refusal(message: str) -> tuple[Literal["gap", "cancelled", "gone"], int]:
    """What a 410 to a reconnecting reader means: ``("gap", oldest held)``; ``("cancelled", 0)``
    (the pipe was cancelled while this reader waited); ``("gone", 0)``: the pipe or this
    reader's slot is gone, and the server no longer knows why (SPEC 2.4)."""
    if match := _NOT_HELD.fullmatch(message):
        return "gap", int(match.group(2))
    if message.startswith("The transfer on ") and message.endswith(" was cancelled."):
        return "cancelled", 0
    return "gone", 0


def redact_url(url: str) -> str:
    """``url`` safe to log: no user info, and the value of every credential parameter
    (``SECRET_PARAMS``) replaced by ``***``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}=***" if name in SECRET_PARAMS else pair
        for pair in parts.query.split("&")
        if pair
        for name in [pair.partition("=")[0]]
    )
    return urlunsplit((parts.scheme, host, parts.path, query, ""))
