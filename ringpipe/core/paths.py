"""Pipe keys, owners and query parsing. Pure: bytes and strings in, values out.

A pipe is keyed on the request path *as received*: dot segments resolved, percent escapes
never decoded, case kept, query string ignored (SPEC terms, Part 3). Path-hashing proxies in
front of several nodes hash the same thing, so a sender and its receivers meet on one node.

``owner_of`` uses CRC-32, not ``hash()``: ``str`` hashes are salted per process, and every
worker must agree on which worker owns a path.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final
from urllib.parse import parse_qsl

__all__ = ["RESERVED_PATHS", "normalize_path", "owner_of", "parse_int_like_js", "query_n", "query_param"]

#: Paths served by the server itself; a sender may not POST/PUT to them (SPEC 1.4, 17).
RESERVED_PATHS: Final = frozenset(
    {"/", "/noscript", "/help", "/version", "/favicon.ico", "/robots.txt", "/metrics", "/healthz", "/readyz"}
)

#: JavaScript's whitespace set (not Python's ``\s``) then ASCII digits only (not ``\d``,
#: which would accept Arabic-Indic and other Unicode digits that parseInt rejects).
_JS_INT = re.compile("[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]*([+-]?[0-9]+)")


#: What a WHATWG URL parser (piping-server's ``new URL``) percent-encodes in a path: these
#: ASCII characters and every byte above 0x7F. Keys must match the reference's, so that
#: ``/p/{x}`` and ``/p/%7Bx%7D`` are one pipe here as there.
_PATH_ESCAPES: Final = {c: f"%{c:02X}" for c in [*b' "<>`{}', *range(0x80, 0x100)]}
_NEEDS_ESCAPE: Final = re.compile(rb'[ "<>`{}\x80-\xff]')
_SINGLE_DOT: Final = frozenset({".", "%2e"})
_DOUBLE_DOT: Final = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def normalize_path(raw_path: bytes) -> str:
    """The pipe key of a raw request path, as piping-server's URL parser would make it.

    Dot segments are resolved (``.`` and ``%2e`` alike, case-insensitive); ``..`` never
    climbs above the root; existing escapes and case are kept; characters a URL parser
    escapes (space, ``"<>`{}`` and non-ASCII bytes) are escaped. ``/a/./b/%2E%2e/c``
    becomes ``/a/c``.
    """
    text = raw_path.decode("latin-1") or "/"
    if _NEEDS_ESCAPE.search(raw_path):  # rare: one scan in C instead of a dict lookup per character
        text = text.translate(_PATH_ESCAPES)
    if not text.startswith("/"):
        text = "/" + text
    if "." not in text and "%2" not in text:
        return text
    out: list[str] = []
    segments = text.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        folded = segment.lower()
        if folded in _SINGLE_DOT:
            if last:
                out.append("")
        elif folded in _DOUBLE_DOT:
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def owner_of(path: str, workers: int) -> int:
    """The worker index (0-based) that runs ``path``'s rendezvous."""
    return zlib.crc32(path.encode("latin-1", "replace")) % workers


#: Query strings up to this long keep their parse (``_first_values``): a request asks for up to
#: a dozen names, and the same few strings (``format=sse``, ``n=3``) come request after request.
#: Longer ones (a signed link's key) are parsed per call, so the cache stays small (~100 KiB).
_CACHED_QUERY_MAX: Final = 256


def query_param(query_string: bytes, name: str) -> str | None:
    """The first value of ``name`` in the query string, percent-decoded, or None if absent."""
    if not query_string:
        return None
    if len(query_string) <= _CACHED_QUERY_MAX:
        return _first_values(query_string).get(name)
    for key, value in _parsed(query_string):
        if key == name:
            return value
    return None


@functools.lru_cache(maxsize=256)
def _first_values(query_string: bytes) -> Mapping[str, str]:
    """Each name's first value in ``query_string`` (read only: shared by every caller)."""
    values: dict[str, str] = {}
    for key, value in _parsed(query_string):
        values.setdefault(key, value)
    return MappingProxyType(values)


def _parsed(query_string: bytes) -> list[tuple[str, str]]:
    return parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)


def query_n(query_string: bytes) -> int | None:
    """A request's ``?n``: 1 when absent, the integer as piping-server reads it, None when it
    is not a number (range checks are the caller's)."""
    raw = query_param(query_string, "n")
    return 1 if raw is None else parse_int_like_js(raw)


def parse_int_like_js(text: str) -> int | None:
    """JavaScript ``parseInt(text, 10)``: leading integer, or None where it gives NaN.

    piping-server parses ``?n=`` this way, so ``3abc`` means 3 and ``1.5`` means 1;
    clients that relied on it keep working.
    """
    match = _JS_INT.match(text)
    return int(match.group(1)) if match else None
