"""``multipart.FirstPart`` against a plain model: any form, any read sizes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringpipe.core.multipart import FirstPart, MultipartError, boundary_of

BOUNDARY = b"----ringpipeBoundary7MA4YWxk"


def form(parts: list[tuple[list[tuple[bytes, bytes]], bytes]], preamble: bytes = b"") -> bytes:
    out = bytearray(preamble + (b"\r\n" if preamble else b""))
    for headers, data in parts:
        out += b"--" + BOUNDARY + b"\r\n"
        out += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + data + b"\r\n"
    out += b"--" + BOUNDARY + b"--\r\n"
    return bytes(out)


def run(body: bytes, reads: list[int]) -> tuple[bytes, list[tuple[str, str]] | None, bool]:
    part = FirstPart(BOUNDARY)
    out = bytearray()
    headers = None
    pos = 0
    sizes = iter(reads)
    while pos < len(body):
        size = next(sizes, 13)
        out += part.feed(body[pos : pos + size])
        headers = headers or part.take_headers()
        pos += size
    return bytes(out), headers, part.done


# Data that may contain anything, including CRLFs and "--" runs, but not the delimiter itself.
data_strategy = st.binary(max_size=400).filter(lambda b: b"\r\n--" + BOUNDARY not in b"\r\n" + b + b"\r\n--")


@given(
    first=data_strategy,
    others=st.lists(data_strategy, max_size=3),
    reads=st.lists(st.integers(1, 300), max_size=50),
    preamble=st.sampled_from([b"", b"This is a preamble."]),
)
def test_the_first_part_comes_out_exactly_whatever_the_reads(
    first: bytes, others: list[bytes], reads: list[int], preamble: bytes
) -> None:
    headers = [
        (b"Content-Disposition", b'form-data; name="input_data"; filename="a.txt"'),
        (b"Content-Type", b"text/plain"),
    ]
    body = form(
        [(headers, first)] + [([(b"Content-Disposition", b'form-data; name="x"')], o) for o in others], preamble
    )
    data, got_headers, done = run(body, reads)
    assert done and data == first
    assert got_headers == [
        ("content-disposition", 'form-data; name="input_data"; filename="a.txt"'),
        ("content-type", "text/plain"),
    ]


def test_a_part_without_headers() -> None:
    data, headers, done = run(form([([], b"plain\r\n\r\ntext")]), [1000])
    assert (data, headers, done) == (b"plain\r\n\r\ntext", [], True)


def test_a_body_without_boundary_is_refused() -> None:
    with pytest.raises(MultipartError):
        FirstPart(BOUNDARY).feed(b"x" * 70_000)


def test_an_unfinished_part_is_not_done() -> None:
    part = FirstPart(BOUNDARY)
    part.feed(b"--" + BOUNDARY + b"\r\n\r\nhalf a file")
    assert not part.done


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('multipart/form-data; charset=utf-8; boundary="a b"', b"a b"),
        ("Multipart/Form-Data;boundary=XyZ", b"XyZ"),
        ("multipart/mixed; boundary=abc", None),
        ("text/plain", None),
        (None, None),
    ],
)
def test_boundary_of(content_type: str | None, boundary: bytes | None) -> None:
    assert boundary_of(content_type) == boundary
