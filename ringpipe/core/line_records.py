"""Producer lines as records, with the pipe offset at each line's end (SPEC 2.1 *lines*).

Pure: bytes in, ``(text, end_offset)`` records out. The split happens on bytes, not on
decoded text: ``\\n`` and ``\\r`` never occur inside a UTF-8 multi-byte sequence, so a line
end found in the bytes is a line end of the text, and the offset after it is exact even where
invalid bytes were replaced by U+FFFD (each line is decoded on its own; a replacement is
counted in ``replaced``).

Rules (the same for SSE and NDJSON *lines*):

- ``\\n``, ``\\r\\n`` and ``\\r`` end a line. A ``\\r`` that ends a chunk ends its line at once
  (the record is not held back waiting for a possible ``\\n``); a ``\\n`` that opens the next
  chunk is then the second half of that CRLF and is consumed silently.
- A partial line is held until its end or ``finish()`` (the producer's end). It is held as
  bytes, at most ``max_line`` of them: a longer line goes out in pieces of that size (cut at
  a character boundary), so memory per reader stays bounded.
- ``end_offset`` counts every byte taken up to the end of that record, line end included:
  a reader that resumes there starts at the next line. A record ended by a CR that ended its
  chunk has its offset just after the CR; so a reader resumed at any offset > 0 takes a LF
  that opens its stream for the second half of that CRLF, not for a blank line.
- A reader that starts at an offset that may fall inside a line (``aligned=False``: a watcher
  at the oldest byte held, a resume after a gap) drops the bytes up to the first line end, so
  its first record is a whole line.

Invariant: ``offset == start + bytes fed`` and ``offset - len(held) ==`` the end offset of
the last record returned (or ``start``).
"""

from __future__ import annotations

import re
from typing import Final

from ringpipe.core.utf8 import decode_counting

__all__ = ["MAX_LINE_BYTES", "LineRecords"]

#: A line longer than this (bytes) is cut into records of this size.
MAX_LINE_BYTES: Final = 1 << 20
_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


def _character_boundary(data: bytes, limit: int) -> int:
    """The largest cut ``<= limit`` that does not split a UTF-8 character (``limit`` if none fits)."""
    cut = limit
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut or limit


class LineRecords:
    """Splits one reader's pipe bytes into line records; see the module docstring for the rules."""

    __slots__ = ("_after_cr", "_held", "_max", "_skip", "offset", "replaced")

    def __init__(self, *, offset: int = 0, max_line: int = MAX_LINE_BYTES, aligned: bool = True) -> None:
        #: Pipe offset just after the last byte fed (held bytes included).
        self.offset = offset
        self.replaced = 0
        self._held = bytearray()
        self._after_cr = offset > 0 and aligned
        #: Dropping bytes up to the first line end (the start may be inside a line).
        self._skip = offset > 0 and not aligned
        self._max = max_line

    @property
    def held(self) -> int:
        """Bytes of an unfinished line waiting for its end."""
        return len(self._held)

    def feed(self, data: bytes) -> list[tuple[str, int]]:
        """The records that ``data`` completes, each with the pipe offset after it.

        Linear in ``len(data)``: a chunk without a line end only extends the held line, so a
        long line that arrives in small chunks is never copied again per chunk.
        """
        start = self.offset - len(self._held)
        self.offset += len(data)
        if self._after_cr and data:
            # Only the first byte after a chunk-ending CR can be its LF: that LF alone is
            # consumed, even when it is the whole chunk (a LF after it is a blank line).
            self._after_cr = False
            if data[0] == 0x0A:
                data = data[1:]
                start += 1
        if self._skip:
            match = _LINE_END.search(data)
            if match is None:
                return []
            self._skip = False
            self._after_cr = match.group() == b"\r" and match.end() == len(data)
            start += match.end()
            data = data[match.end() :]
        if _LINE_END.search(data) is None:
            self._held += data
            return self._cut_long(start, 0) if len(self._held) > self._max else []
        buffer = bytes(self._held) + data
        records: list[tuple[str, int]] = []
        begin = 0
        while (match := _LINE_END.search(buffer, begin)) is not None:
            after = match.end()
            self._after_cr = match.group() == b"\r" and after == len(buffer)  # maybe half a CRLF
            records.append(self._record(buffer[begin : match.start()], start + after))
            begin = after
        self._held = bytearray(buffer[begin:])
        if len(self._held) > self._max:
            records += self._cut_long(start, begin)
        return records

    def _cut_long(self, start: int, begin: int) -> list[tuple[str, int]]:
        """Records of ``max_line`` bytes cut from a held line that grew past it (``begin``: its
        index in the bytes that started at pipe offset ``start``)."""
        records = []
        rest = bytes(self._held)
        while len(rest) > self._max:
            cut = _character_boundary(rest, self._max)
            begin += cut
            records.append(self._record(rest[:cut], start + begin))
            rest = rest[cut:]
        self._held = bytearray(rest)
        return records

    def finish(self) -> list[tuple[str, int]]:
        """At the producer's end: the last line if it had no line end."""
        if not self._held:
            return []
        record = self._record(bytes(self._held), self.offset)
        self._held = bytearray()
        return [record]

    def jump(self, to: int) -> None:
        """Continue at pipe offset ``to`` (after a gap): the held partial line is dropped, and
        so is the rest of the line ``to`` falls in."""
        self.offset = to
        self._held = bytearray()
        self._after_cr = False
        self._skip = True

    def _record(self, line: bytes, end: int) -> tuple[str, int]:
        text, replaced = decode_counting(line)
        self.replaced += replaced
        return text, end
