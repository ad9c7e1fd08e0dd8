"""The first part of a ``multipart/form-data`` upload, streamed. Pure: bytes in, bytes out.

Browser forms and ``curl -F`` upload a multipart body; piping-server relays only its first
part, with that part's Content-Type and Content-Disposition (SPEC 1.4, 16). The part's
length is unknown until its closing delimiter arrives, so receivers never get a
Content-Length for it (the reference sends the whole form's length, which is wrong as
soon as the form has more than one field).

``FirstPart.feed`` takes body bytes as they come and returns the part's data bytes, holding
back only a delimiter's length of bytes that might start the delimiter. The part headers
are returned once, by ``take_headers``, as soon as they are complete. Everything after the
first part (other fields, the epilogue) is read and dropped.

Invariants: data bytes come out in order and exactly once; no byte of a delimiter or of the
part headers is ever emitted as data; ``done`` means the closing delimiter was seen.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = ["FirstPart", "MultipartError", "boundary_of"]

MAX_PREAMBLE: Final = 64 * 1024
MAX_PART_HEADERS: Final = 16 * 1024
_BOUNDARY = re.compile(r'(?i)^\s*multipart/form-data\s*;(?:.*;)?\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;]{1,70}))')


class MultipartError(ValueError):
    """The body is not the multipart body its Content-Type announced."""


def boundary_of(content_type: str | None) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None for anything else."""
    if not content_type:
        return None
    match = _BOUNDARY.match(content_type)
    if not match:
        return None
    return (match.group(1) or match.group(2)).encode("latin-1")


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    HEADERS = enum.auto()
    DATA = enum.auto()
    DONE = enum.auto()


class FirstPart:
    """Streaming extractor of the first part's headers and data."""

    def __init__(self, boundary: bytes) -> None:
        self._dash_boundary = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._state = _State.PREAMBLE
        self._held = bytearray()
        self._headers: list[tuple[str, str]] | None = None
        self._headers_taken = False

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def take_headers(self) -> list[tuple[str, str]] | None:
        """The part's headers (lower-case names), once, as soon as they are complete."""
        if self._headers is None or self._headers_taken:
            return None
        self._headers_taken = True
        return self._headers

    def feed(self, data: bytes) -> bytes:
        """Body bytes in; the part's data bytes that are certain so far out.

        Raises:
            MultipartError: no boundary where one must be, or headers over the limits.
        """
        if self._state is _State.DONE:
            return b""
        self._held += data
        out = b""
        if self._state is _State.PREAMBLE:
            self._skip_preamble()
        if self._state is _State.HEADERS:
            self._parse_headers()
        if self._state is _State.DATA:
            out = self._data()
        return out

    def _skip_preamble(self) -> None:
        held = self._held
        at = 0 if held.startswith(self._dash_boundary) else held.find(self._delimiter)
        if at < 0:
            if len(held) > MAX_PREAMBLE:
                raise MultipartError("no boundary in the first 64 KiB of the body")
            return
        start = at if at == 0 else at + 2  # skip the CRLF before "--boundary"
        line_end = held.find(b"\r\n", start)
        if line_end < 0:
            return
        del held[: line_end + 2]
        self._state = _State.HEADERS

    def _parse_headers(self) -> None:
        held = self._held
        if len(held) < 2:
            return
        end = -2 if held.startswith(b"\r\n") else held.find(b"\r\n\r\n")  # -2: no headers at all
        if end == -1:
            if len(held) > MAX_PART_HEADERS:
                raise MultipartError("part headers over 16 KiB")
            return
        headers = []
        for line in bytes(held[:end]).split(b"\r\n") if end > 0 else ():
            name, sep, value = line.partition(b":")
            if not sep:
                raise MultipartError(f"bad part header line {line[:40]!r}")
            headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
        del held[: end + 4]
        self._headers = headers
        self._state = _State.DATA

    def _data(self) -> bytes:
        held = self._held
        at = held.find(self._delimiter)
        if at >= 0:
            out = bytes(held[:at])
            held.clear()
            self._state = _State.DONE
            return out
        keep = len(self._delimiter) - 1  # these might be the start of the delimiter
        if len(held) <= keep:
            return b""
        out = bytes(held[:-keep])
        del held[:-keep]
        return out
