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
from typing import Final

__all__ = ["BodyFraming", "FramingError"]

#: Longest chunk-size line we accept (size, extensions, CRLF); longer is an attack.
MAX_SIZE_LINE: Final = 4096
#: Most trailer bytes we accept after the last chunk.
MAX_TRAILERS: Final = 16 * 1024
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
#: Longest size line the fast path takes at once: 16 hex digits and CRLF.
_FAST_LINE: Final = 18
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
        if content_length == 0:
            self._state = _State.DONE

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def took_data(self, size: int) -> None:
        """``size`` data bytes were read straight into the ring (at most ``data_left``)."""
        if not 0 < size <= self.data_left:
            raise ValueError(f"took {size} data bytes with {self.data_left} left")
        self.data_left -= size
        if self.data_left == 0:
            self._state = _State.DATA_CR if self.chunked else _State.DONE

    def framing_hint(self) -> int:
        """How many bytes the framing before the next chunk's data most likely takes; 0: no guess.

        Right after a large chunk's data, a client that sends equal chunks sends
        ``CRLF size CRLF`` as long as the last one. Reading just that much (``rawbody.py``)
        lets the next chunk's data go straight into the ring instead of partly through the
        scratch buffer. A wrong guess is harmless: fewer bytes mean one more small read,
        more bytes are data that ``feed`` reports as usual.
        """
        if self._state is _State.DATA_CR and self._last_size >= HINT_MIN_CHUNK:
            return 2 + self._last_frame
        return 0

    def feed(self, buf: bytes | bytearray | memoryview) -> tuple[list[tuple[int, int]], int]:
        """Parse ``buf``; return the ``(start, end)`` data spans in it and where parsing stopped.

        Parsing stops at the end of ``buf`` or just after the body's last byte (``done``).

        Raises:
            FramingError: malformed chunk framing, or a size line or trailers over the limits.
        """
        view = memoryview(buf)
        spans: list[tuple[int, int]] = []
        i, end = 0, len(view)
        while i < end and self._state is not _State.DONE:
            state = self._state
            if state is _State.DATA:
                take = min(self.data_left, end - i)
                spans.append((i, i + take))
                i += take
                self.took_data(take)
                continue
            if state is _State.DATA_CR or (state is _State.SIZE and not self._line):
                fast = self._fast_frame(view, i, end)
                if fast > i:
                    i = fast
                    continue
            byte = view[i]
            i += 1
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
            elif state is _State.DATA_LF:
                self._expect_lf(byte)
                self._state, self._size, self._digits, self._line = _State.SIZE, 0, 0, 0
            else:
                self._trailer_byte(state, byte)
        return spans, i

    # -- size lines --

    def _fast_frame(self, view: memoryview, i: int, end: int) -> int:
        """Take a whole ``[CRLF] size CRLF`` at ``i`` in one step (the common case: plain hex,
        no extensions); return where it ends, or ``i`` to let the byte-wise path decide.

        Only called at the start of a size line (``SIZE`` with nothing counted) or right
        after a chunk's data (``DATA_CR``); it changes state only for a complete, valid
        line, exactly as the byte-wise path would, so malformed input still raises there.
        """
        start = i
        if self._state is _State.DATA_CR:
            if end - i < 2 or view[i] != 0x0D or view[i + 1] != 0x0A:
                return start
            i += 2
        head = bytes(view[i : min(end, i + _FAST_LINE)])
        j = head.find(b"\r\n")
        if j <= 0 or head[:j].translate(None, _HEX_DIGITS):
            return start
        self._size = int(head[:j], 16)
        self._digits = self._line = 0
        self._last_frame = j + 2
        self._end_size_line()
        return i + j + 2

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

    @staticmethod
    def _expect_lf(byte: int) -> None:
        if byte != 0x0A:
            raise FramingError("CR not followed by LF in chunk framing")
