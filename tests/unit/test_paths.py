"""Pipe keys, owners and ``?n`` parsing (``ringpipe.paths``)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringpipe.core.paths import RESERVED_PATHS, normalize_path, owner_of, parse_int_like_js, query_param

# -- normalize_path --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/a/./b/../c", "/a/c"),
        (b"/a/b/c", "/a/b/c"),
        (b"/./a", "/a"),
        (b"/a/../b", "/b"),
        (b"/..", "/"),
        (b"/../a", "/a"),
        (b"/../../../a/b", "/a/b"),
        (b"/a/../../b", "/b"),
        (b"/a/.", "/a/"),
        (b"/a/..", "/"),
        (b"/a/b/..", "/a/"),
        (b"/.", "/"),
        (b"/a/./", "/a/"),
        (b"/a/../", "/"),
        (b"", "/"),
        (b"a/b", "/a/b"),
        (b"/a//b/../c", "/a//c"),
        (b"/...", "/..."),
        (b"/.hidden/..x/x..", "/.hidden/..x/x.."),
        (b"/file.txt", "/file.txt"),
    ],
)
def test_normalize_path_resolves_dot_segments(raw: bytes, expected: str) -> None:
    """Senders and receivers meet on the same key however they spell dot segments; '..' never climbs above root."""
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/a%20b", "/a%20b"),
        (b"/x%2Fy", "/x%2Fy"),
        (b"/a%2fb", "/a%2fb"),
    ],
)
def test_normalize_path_keeps_percent_escapes(raw: bytes, expected: str) -> None:
    """Escapes are never decoded: %2e%2e is a name, not a parent, and %2F differs from %2f."""
    assert normalize_path(raw) == expected


def test_normalize_path_keeps_case() -> None:
    """/Foo and /foo are two different pipes."""
    assert normalize_path(b"/Foo/BAR") == "/Foo/BAR"
    assert normalize_path(b"/foo") != normalize_path(b"/Foo")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/a/%2e%2e/b", "/b"),
        (b"/a/%2E/b", "/a/b"),
        (b"/p/a/%2e%2E/b", "/p/b"),
        (b"/a/.%2e/b", "/b"),
        (b"/a/%2e./b", "/b"),
        (b"/a/%2e", "/a/"),
        (b"/a/%2ex", "/a/%2ex"),
    ],
)
def test_percent_encoded_dot_segments_resolve_like_the_reference(raw: bytes, expected: str) -> None:
    """WHATWG URL parsing (piping-server's ``new URL``) treats ``%2e`` as a dot in dot segments."""
    assert normalize_path(raw) == expected


def test_characters_a_url_parser_escapes_are_escaped() -> None:
    """Raw ``{}"<>` `` and space, and non-ASCII bytes, key the pipe as their escapes would."""
    assert normalize_path(b'/p/{x}"<y>`') == "/p/%7Bx%7D%22%3Cy%3E%60"
    assert normalize_path(b"/\xc3\xa9") == "/%C3%A9" == normalize_path(b"/%C3%A9")
    assert normalize_path(b"/\xff/./x") == "/%FF/x"


def test_reserved_paths_are_normal_forms() -> None:
    """Every reserved path is its own normal form, so comparing a normalized path against the set is enough."""
    for path in RESERVED_PATHS:
        assert normalize_path(path.encode()) == path


_segments = st.lists(st.sampled_from(["", ".", "..", "a", "B", "...", ".x", "%2e", "\u00e9"]), max_size=8)


@settings(max_examples=300, deadline=None, database=None)
@given(_segments, st.booleans())
def test_normalize_path_yields_a_fixed_point_without_dot_segments(segments: list[str], leading_slash: bool) -> None:
    """The result starts with '/', holds no '.' or '..' segment, and normalizing again changes nothing."""
    raw = ("/" if leading_slash else "") + "/".join(segments)
    out = normalize_path(raw.encode("latin-1"))
    assert out.startswith("/")
    assert not {".", ".."} & set(out.split("/"))
    assert normalize_path(out.encode("latin-1")) == out


# -- owner_of -------------------------------------------------------------------------------


def test_owner_of_fixed_values() -> None:
    """owner_of is CRC-32 modulo the worker count: these values must never change across releases."""
    assert [owner_of("/hello", w) for w in (1, 2, 4, 7, 16)] == [0, 1, 3, 6, 11]
    assert [owner_of("/a/b%20c", w) for w in (1, 2, 4, 7, 16)] == [0, 1, 3, 3, 15]
    assert owner_of("/", 7) == 6


@pytest.mark.parametrize("workers", [1, 3, 8, 256])
def test_owner_of_is_in_range(workers: int) -> None:
    """Every path is owned by an existing worker."""
    for i in range(200):
        assert 0 <= owner_of(f"/p{i}", workers) < workers


# -- parse_int_like_js ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("3abc", 3),
        ("1.5", 1),
        (" 7", 7),
        ("\t\n 12 ", 12),
        ("\u00a07", 7),  # NBSP, U+3000 and U+2028 are whitespace to JS too
        ("\u30007", 7),
        ("\u20287", 7),
        ("-2", -2),
        ("+4", 4),
        ("007", 7),
        ("0x10", 0),
        ("1e3", 1),
        ("256", 256),
        ("abc", None),
        ("", None),
        (" ", None),
        ("-", None),
        ("+-1", None),
        ("- 2", None),
        (".5", None),
        ("x3", None),
    ],
)
def test_parse_int_like_js(text: str, expected: int | None) -> None:
    """?n= is read like JavaScript parseInt(text, 10), so piping-server clients keep working."""
    assert parse_int_like_js(text) == expected


@pytest.mark.parametrize(
    ("text", "js_result"),
    [
        pytest.param("\uff13", None, id="fullwidth-digit-3"),
        pytest.param("\u0663", None, id="arabic-indic-digit-3"),
        pytest.param("\u00a0\u0663", None, id="nbsp-then-arabic-indic-digit"),
        pytest.param("\x1c7", None, id="file-separator-is-not-js-whitespace"),
        pytest.param("\ufeff7", 7, id="bom-is-js-whitespace"),
    ],
)
def test_parse_int_like_js_non_ascii(text: str, js_result: int | None) -> None:
    """parseInt('\\uff13') is NaN in JavaScript; ringpipe must not read it as 3."""
    assert parse_int_like_js(text) == js_result


# -- query_param ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", None),
        (b"n=3", "3"),
        (b"a=1&n=2", "2"),
        (b"n=2&n=5", "2"),
        (b"n", ""),
        (b"n=", ""),
        (b"x=1", None),
        (b"N=3", None),
        (b"nn=3", None),
        (b"n=%33", "3"),
        (b"n=a+b", "a b"),
        (b"n=%E2%98%83", "\u2603"),
        (b"a=1;n=4", None),
    ],
)
def test_query_param(query: bytes, expected: str | None) -> None:
    """The first value of a parameter, percent-decoded; None when the parameter is absent."""
    assert query_param(query, "n") == expected


_QUERY = st.text(alphabet=st.sampled_from(list("nkfx=&%+23;E")), max_size=40).map(str.encode)


@settings(max_examples=300)
@given(query=_QUERY, padding=st.sampled_from([0, 300]), name=st.sampled_from(["n", "k", "f", "x", ""]))
def test_query_param_is_the_first_value_parse_qsl_gives_cached_or_not(query: bytes, padding: int, name: str) -> None:
    """Short query strings are served from a cache of their parse, long ones (``padding``
    makes them so) parsed per call: both give what ``parse_qsl`` gives first, every time."""
    query = query + b"&pad=" + b"p" * padding if padding else query
    expected = next(
        (value for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if key == name), None
    )
    assert query_param(query, name) == expected
    assert query_param(query, name) == expected  # again: from the cache for a short one
