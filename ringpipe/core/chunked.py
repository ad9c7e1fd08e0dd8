"""Where a request body's data bytes are, read incrementally. Pure: bytes in, positions out.

The relay reads an upload straight into the ring (``rawbody.py``): it must know, before each
read, how many of the coming bytes are data (those may land in the ring) and when framing
comes next (those go to a small scratch buffer and through ``feed``). ``BodyFraming``
answers that for a ``Content-Length`` body and for ``Transfer-Encoding: chunked``
(RFC 9112 §7.1: ``size [; ext] CRLF data CRLF`` … ``0 CRLF *(trailer CRLF) CRLF``).

Invariants: ``data_left > 0`` only in the data state; ``done`` is final; ``feed`` never
reports data beyond a chunk's size, and stops at the end of the body, so bytes after it
(a pipelined next request) are left to the caller.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = ["BodyFraming", "FramingError"]

#: Longest chunk-size line we accept (size, extensions, CRLF); longer is an attack.
MAX_SIZE_LINE: Final = 4096
#: Most trailer bytes we accept after the last chunk.
MAX_TRAILERS: Final = 16 * 1024
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
#: The common framing, taken in one step: a plain size line (at most 16 hex digits, no
#: extensions) at the start of a line (``_SIZE``), or the CRLF that ends a chunk's data
#: and, when it is all there, such a size line after it (``_NEXT_SIZE``). Anything else
#: (a partial line, extensions, trailers, malformed bytes) is left to the byte-wise path.
_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
_NEXT_SIZE: Final = re.compile(rb"\r\n(?:([0-9A-Fa-f]{1,16})\r\n)?")
#: Chunks at least this large make ``framing_hint`` guess the next framing's length.
HINT_MIN_CHUNK: Final = 4096


class FramingError(ValueError):
    """The body's framing is malformed; the upload must be treated as broken."""


class _State(enum.Enum):
    SIZE = enum.auto()  # hex digits of a chunk size
    EXT = enum.auto()  # after ';' (or whitespace) up to CR
    SIZE_LF = enum.auto()  # the LF ending a size line
    DATA = enum.auto()  # ``data_left`` bytes of chunk data
    DATA_CR = enum.auto()  # CR after chunk data
    DATA_LF = enum.auto()  # LF after chunk data
    TRAILER = enum.auto()  # at the start of a trailer line (CR here ends the body)
    TRAILER_LINE = enum.auto()  # inside a trailer line, up to CR
    TRAILER_LF = enum.auto()  # LF ending a trailer line
    LAST_LF = enum.auto()  # LF of the empty line ending the body
    DONE = enum.auto()


class BodyFraming:
    """The framing state of one request body."""

    # Slots: ``whole_chunk`` and the reader of ``data_left``/``hint`` run per token.
    __slots__ = (
        "_digits",
        "_last_frame",
        "_last_size",
        "_line",
        "_size",
        "_state",
        "_trailers",
        "chunked",
        "data_left",
        "done",
        "hint",
    )

    def __init__(self, *, content_length: int | None) -> None:
        """``content_length``: the body's length, or None for a chunked body."""
        self.chunked = content_length is None
        self._state = _State.SIZE if content_length is None else _State.DATA
        self.data_left = 0 if content_length is None else content_length
        self._size = 0
        self._digits = 0
        self._line = 0
        self._trailers = 0
        #: Bytes of the framing before the last chunk's data (CRLF, size line): the hint.
        self._last_frame = 0
        self._last_size = 0
        #: The body has ended (a plain attribute: the relay asks after every read).
        self.done = content_length == 0
        #: ``framing_hint``, kept up to date: set when a large chunk's data ends, 0 once the
        #: framing after it is read (a plain attribute: the relay asks before every read).
        self.hint = 0
        if content_length == 0:
            self._state = _State.DONE

    def took_data(self, size: int) -> None:
        """``size`` data bytes were read straight into the ring (at most ``data_left``)."""
        if not 0 < size <= self.data_left:
            raise ValueError(f"took {size} data bytes with {self.data_left} left")
        self.data_left -= size
        if self.data_left == 0:
            self._data_ended()

    def framing_hint(self) -> int:
        """How many bytes the framing before the next chunk's data most likely takes; 0: no guess.

        Right after a large chunk's data, a client that sends equal chunks sends
        ``CRLF size CRLF`` as long as the last one. Reading just that much (``rawbody.py``)
        lets the next chunk's data go straight into the ring instead of partly through the
        scratch buffer. A wrong guess is harmless: fewer bytes mean one more small read,
        more bytes are data that ``feed`` reports as usual. (Also ``hint``.)
        """
        return self.hint

    def _data_ended(self) -> None:
        """The chunk's data (or a Content-Length body) is all read."""
        if not self.chunked:
            self._state = _State.DONE
            self.done = True
            return
        self._state = _State.DATA_CR
        if self._last_size >= HINT_MIN_CHUNK:
            self.hint = 2 + self._last_frame

    def whole_chunk(self, buf: memoryview) -> memoryview | None:
        """The data of ``buf`` if ``buf`` is exactly one whole chunk (``size CRLF data CRLF``,
        size > 0, no extensions) read at the start of a size line, else None.

        The token stream's read, parsed in one step: on a hit the state is what ``feed``
        would leave (the start of the next size line); on a miss nothing changed, and the
        caller feeds ``buf`` as usual.
        """
        if self._state is not _State.SIZE or self._line:
            return None
        match = _SIZE.match(buf)
        if match is None:
            return None
        start, end = match.end(), len(buf) - 2
        digits = match.group(1)
        if end <= start or int(digits, 16) != end - start or buf[end] != 0x0D or buf[end + 1] != 0x0A:
            return None
        self._last_size = end - start
        self._last_frame = len(digits) + 2
        return buf[start:end]

    def feed(self, buf: bytes | bytearray | memoryview) -> tuple[list[tuple[int, int]], int]:
        """Parse ``buf``; return the ``(start, end)`` data spans in it and where parsing stopped.

        Parsing stops at the end of ``buf`` or just after the body's last byte (``done``).
        A read of token-sized chunks (``size CRLF data CRLF``, one after another) takes one
        regular-expression match and one span per chunk; other framing goes byte by byte.

        Raises:
            FramingError: malformed chunk framing, or a size line or trailers over the limits.
        """
        spans: list[tuple[int, int]] = []
        i, end = 0, len(buf)
        while i < end:
            state = self._state
            if state is _State.DATA:
                left = self.data_left
                take = left if left <= end - i else end - i
                spans.append((i, i + take))
                i += take
                left -= take
                self.data_left = left
                if not left:
                    self._data_ended()
                continue
            if state is _State.DATA_CR or (state is _State.SIZE and not self._line):
                match = (_NEXT_SIZE if state is _State.DATA_CR else _SIZE).match(buf, i)
                if match is not None:  # each step ends exactly as the byte-wise path would
                    i = match.end()
                    self.hint = 0
                    digits = match.group(1)
                    if digits is None:  # just the CRLF after the data: at the start of a size line
                        self._state, self._size, self._digits, self._line = _State.SIZE, 0, 0, 0
                        continue
                    size = int(digits, 16)
                    self._last_frame = len(digits) + 2
                    after = i + size
                    if size and after + 2 <= end and buf[after] == 0x0D and buf[after + 1] == 0x0A:
                        # A whole chunk and the CRLF after it (a token): one span, and at the
                        # start of the next size line.
                        spans.append((i, after))
                        i = after + 2
                        self._last_size = size
                        self._state, self._size, self._digits, self._line = _State.SIZE, 0, 0, 0
                        continue
                    self._size = size
                    self._digits = self._line = 0
                    self._end_size_line()
                    continue
            elif state is _State.DONE:
                break
            self._feed_byte(buf[i])
            i += 1
        return spans, i

    def _feed_byte(self, byte: int) -> None:
        """One byte of framing the fast path did not take (a partial or unusual line, trailers)."""
        state = self._state
        if state is _State.SIZE:
            self._size_byte(byte)
        elif state is _State.EXT:
            self._count_line()
            if byte == 0x0D:
                self._state = _State.SIZE_LF
        elif state is _State.SIZE_LF:
            self._expect_lf(byte)
            self._last_frame = self._line + 1  # the size line, its CR counted, and LF
            self._end_size_line()
        elif state is _State.DATA_CR:
            if byte != 0x0D:
                raise FramingError("chunk data is longer than its size")
            self._state = _State.DATA_LF
            self.hint = 0
        elif state is _State.DATA_LF:
            self._expect_lf(byte)
            self._state, self._size, self._digits, self._line = _State.SIZE, 0, 0, 0
        else:
            self._trailer_byte(state, byte)

    # -- size lines --

    def _size_byte(self, byte: int) -> None:
        self._count_line()
        if byte in _HEX:
            self._digits += 1
            if self._digits > 16:
                raise FramingError("chunk size is too large")
            self._size = self._size * 16 + int(chr(byte), 16)
        elif self._digits and byte in (0x3B, 0x20, 0x09):  # ';' starts extensions; BWS
            self._state = _State.EXT
        elif self._digits and byte == 0x0D:
            self._state = _State.SIZE_LF
        else:
            raise FramingError(f"bad byte {byte:#04x} in a chunk size")

    def _end_size_line(self) -> None:
        self._last_size = self._size
        if self._size == 0:
            self._state = _State.TRAILER
        else:
            self._state = _State.DATA
            self.data_left = self._size

    def _count_line(self) -> None:
        self._line += 1
        if self._line > MAX_SIZE_LINE:
            raise FramingError("chunk size line is too long")

    # -- trailers --

    def _trailer_byte(self, state: _State, byte: int) -> None:
        self._trailers += 1
        if self._trailers > MAX_TRAILERS:
            raise FramingError("trailers are too long")
        if state is _State.TRAILER:
            self._state = _State.LAST_LF if byte == 0x0D else _State.TRAILER_LINE
        elif state is _State.TRAILER_LINE:
            if byte == 0x0D:
                self._state = _State.TRAILER_LF
        elif state is _State.TRAILER_LF:
            self._expect_lf(byte)
            self._state = _State.TRAILER
        else:  # LAST_LF
            self._expect_lf(byte)
            self._state = _State.DONE
            self.done = True

    @staticmethod
    def _expect_lf(byte: int) -> None:
        if byte != 0x0A:
            raise FramingError("CR not followed by LF in chunk framing")
