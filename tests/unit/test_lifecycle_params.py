"""How the edge reads a reader's lifecycle parameters: resume points, read keys, stall
timeouts, resumability and the Content-Length of a body that starts mid-pipe."""

from __future__ import annotations

import hashlib

import pytest
from starlette.types import Scope

from ringpipe.http.readers.raw import _with_length
from ringpipe.http.request_params import ResumePoint, can_resume, header, raw_header, read_key, resume_point, stall_ms


def scope(query: str = "", headers: list[tuple[str, str]] | None = None) -> Scope:
    return {
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers or []],
    }


@pytest.mark.parametrize(
    ("query", "headers", "expected"),
    [
        ("", [], None),
        ("", [("Last-Event-ID", "hoo2ra4ne6-1234")], ResumePoint(1234, "hoo2ra4ne6", False)),
        ("last_event_id=abc-7", [], ResumePoint(7, "abc", False)),
        ("offset=42", [], ResumePoint(42, "", False)),
        ("", [("Range", "bytes=100-")], ResumePoint(100, "", True)),
        ("", [("Range", " bytes = 5 - ")], ResumePoint(5, "", True)),
        ("offset=3", [("Range", "bytes=100-")], ResumePoint(3, "", False)),  # the explicit one wins
    ],
)
def test_resume_points(query: str, headers: list[tuple[str, str]], expected: ResumePoint | None) -> None:
    assert resume_point(scope(query, headers)) == expected


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("offset=-1", []),
        ("offset=ten", []),
        ("", [("Last-Event-ID", "no-dash-number-x")]),
        ("", [("Range", "bytes=0-99")]),  # a closed range cannot be resumed
        ("", [("Range", "bytes=0-9,20-")]),
    ],
)
def test_malformed_resume_points_are_messages(query: str, headers: list[tuple[str, str]]) -> None:
    assert isinstance(resume_point(scope(query, headers)), str)


def test_a_foreign_event_id_is_a_resume_point_for_readers_that_take_gaps() -> None:
    """An event-stream producer's own ``id:`` comes back as Last-Event-ID: it names no offset,
    so an SSE/NDJSON reader resumes as from another pipe (SPEC 2.4: never refused)."""
    for headers, query in [([("Last-Event-ID", "msg_01XFDUDYJgAACzvnptvVoYEL")], ""), ([], "last_event_id=a.b")]:
        assert resume_point(scope(query, headers), takes_gaps=True) == ResumePoint(0, "", False, foreign=True)
        assert isinstance(resume_point(scope(query, headers)), str)
    assert resume_point(scope("offset=ten"), takes_gaps=True) == "The offset 'ten' is not a number of bytes."
    ours = [("Last-Event-ID", "hoo2ra4ne6-1234")]
    assert resume_point(scope(headers=ours), takes_gaps=True) == ResumePoint(1234, "hoo2ra4ne6", False)


def test_read_keys_travel_as_digests() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    assert read_key(scope(headers=[("Ringpipe-Read-Key", "s3cret")])) == digest
    assert read_key(scope("key=s3cret")) == digest
    assert read_key(scope("key=s3cret", [("Ringpipe-Read-Key", "other")])) != digest  # the header wins
    assert read_key(scope()) == ""


def test_stall_timeouts() -> None:
    assert stall_ms(scope()) == -1
    assert stall_ms(scope("stall_timeout=2.5")) == 2500
    assert stall_ms(scope("stall_timeout=0")) == 0
    assert isinstance(stall_ms(scope("stall_timeout=-1")), str)
    assert isinstance(stall_ms(scope("stall_timeout=soon")), str)


def test_which_readers_can_resume() -> None:
    assert not can_resume(scope())
    assert can_resume(scope("resume=1"))
    assert can_resume(scope("format=sse")) and can_resume(scope("format=ndjson"))
    assert can_resume(scope(headers=[("Accept", "text/event-stream")]))
    assert can_resume(scope(headers=[("Upgrade", "websocket")]))


def test_content_length_of_a_body_that_starts_mid_pipe() -> None:
    headers = [("content-length", "100"), ("content-type", "text/plain")]
    assert _with_length(headers, 0) == headers
    assert _with_length(headers, 30) == [("content-length", "70"), ("content-type", "text/plain")]
    assert _with_length([("content-type", "x")], 30) == [("content-type", "x")]


def test_header_is_the_first_value_of_a_repeated_header() -> None:
    """A repeated header reads as its first value, whatever order lookups come in (the values
    are indexed once per request), and a header that is absent reads as None."""
    request = scope("", [("Range", "bytes=1-"), ("Accept", "text/plain"), ("Range", "bytes=2-")])
    assert header(request, b"accept") == "text/plain"
    assert header(request, b"range") == "bytes=1-"
    assert raw_header(request, b"range") == b"bytes=1-"
    assert header(request, b"last-event-id") is None
    assert resume_point(request) == ResumePoint(1, "", True)
