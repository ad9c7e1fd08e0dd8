"""UTF-8 decoding for the text framings: invalid sequences become U+FFFD and are counted.

The count feeds ``ringpipe_invalid_utf8_total`` (SPEC 2.1: in text mode a byte sequence that is
not UTF-8 becomes U+FFFD and is counted in a metric). One codec error handler, registered once,
counts every replacement process-wide; each decoder reads the difference around its own call.
"""

from __future__ import annotations

import codecs
from typing import Final

__all__ = ["Utf8Text", "decode_counting"]

_REPLACE: Final = "ringpipe.count-replace"


class _Replacements:
    """How many invalid UTF-8 sequences the codec error handler has replaced (process-wide)."""

    total = 0


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):  # pragma: no cover - registered for decoding only
        raise exc
    _Replacements.total += 1
    return "\ufffd", exc.end


codecs.register_error(_REPLACE, _count_and_replace)

_DECODER: Final = codecs.getincrementaldecoder("utf-8")


def decode_counting(data: bytes) -> tuple[str, int]:
    """``data`` (whole characters) as text, and how many invalid sequences became U+FFFD."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        before = _Replacements.total
        text = data.decode("utf-8", _REPLACE)
        return text, _Replacements.total - before


class Utf8Text:
    """Incremental UTF-8 → str: a character split across chunks stays whole; invalid bytes → U+FFFD.

    Invariant: ``consumed - held`` bytes are fully represented in the text returned so far.
    """

    def __init__(self) -> None:
        #: Made by the first ``decode``: a token stream whose chunks are all ASCII may never
        #: need one (the framings take such chunks as they are).
        self._decoder: codecs.IncrementalDecoder | None = None
        self.replaced = 0

    def decode(self, data: bytes, *, final: bool = False) -> str:
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = _DECODER(_REPLACE)
        before = _Replacements.total
        text = decoder.decode(data, final)
        self.replaced += _Replacements.total - before
        return text

    @property
    def held(self) -> int:
        """Bytes of an unfinished character waiting for the next chunk (0 .. 3)."""
        decoder = self._decoder
        return 0 if decoder is None else len(decoder.getstate()[0])

    def reset(self) -> None:
        if self._decoder is not None:
            self._decoder.reset()
