"""SPEC 2.1 amended: SSE/NDJSON *lines*, JSON text sequences, and ids on a passed-through event stream.

Checked with the WHATWG EventSource model of ``tests/support/eventsource`` (what a browser sees), including
resume: a fresh encoder started at any id's offset gives exactly the rest of the stream.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ringpipe.core.event_stream import EventStreamIds
from ringpipe.core.framing import NdjsonEncoder, SseEncoder, default_granularity, is_text_like
from ringpipe.core.line_records import LineRecords
from tests.support.eventsource import CUTS, TEXT, EventSourceModel, chunked, normalize

LINE_END = re.compile(r"\r\n|\r|\n")


def producer_lines(text: str) -> list[str]:
    """The producer's lines: a last line without a line end counts, an empty tail does not."""
    lines = LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def sse_lines(chunks: list[bytes], *, offset: int = 0, content_type: str = "application/x-ndjson") -> EventSourceModel:
    encoder = SseEncoder(epoch="E", offset=offset)
    encoder.begin(content_type)
    client = EventSourceModel()
    for chunk in chunks:
        client.feed(encoder.feed(chunk))
    client.feed(encoder.end("done"))
    return client


@settings(max_examples=300)
@given(text=TEXT, cuts=CUTS)
def test_sse_lines_one_event_per_non_blank_line_and_resume_at_any_id(text: str, cuts: list[int]) -> None:
    data = text.encode()
    client = sse_lines(chunked(data, cuts))
    messages = client.named("message")
    assert [e.data for e in messages] == [line for line in producer_lines(text) if line]
    for event in messages:
        end = int(event.last_event_id.split("-")[1])
        # The id is the offset after this line's end: a resumed reader gets exactly the rest.
        rest = sse_lines([data[end:]], offset=end).named("message")
        assert [e.data for e in rest] == [e.data for e in messages[messages.index(event) + 1 :]]
    (done,) = client.named("done")
    assert json.loads(done.data)["offset"] == len(data)


def test_the_issue_example_gives_three_parsable_events() -> None:
    chunks = [b'{"a":1}\n{"b":2}\n', b'{"c":', b"3}\n"]
    client = sse_lines(chunks)
    assert [json.loads(e.data) for e in client.named("message")] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert [e.last_event_id for e in client.named("message")] == ["E-8", "E-16", "E-24"]


def test_sse_chunks_can_be_asked_for_a_json_lines_producer_and_lines_for_any_text() -> None:
    encoder = SseEncoder(epoch="E", granularity="chunks")
    encoder.begin("application/x-ndjson")
    assert encoder.feed(b'{"c":') == b'id: E-5\ndata: {"c":\n\n'
    encoder = SseEncoder(epoch="E", granularity="lines")
    encoder.begin("text/plain")
    assert encoder.feed(b"one\ntw") == b"id: E-4\ndata: one\n\n"
    assert encoder.end("done").startswith(b"id: E-6\ndata: tw\n\n")


@settings(max_examples=200)
@given(text=TEXT, cuts=CUTS)
@example(text=":\r\n\n::", cuts=[2, 3])  # a CRLF's LF alone in its chunk, then a blank line
def test_ndjson_lines_records_are_the_producers_lines(text: str, cuts: list[int]) -> None:
    data = text.encode()
    encoder = NdjsonEncoder(granularity="lines")
    encoder.begin("text/plain")
    out = b"".join(encoder.feed(c) for c in chunked(data, cuts)) + encoder.end("done")
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [r["data"] for r in records[:-1]] == producer_lines(text)
    assert "\n".join(r["data"] for r in records[:-1]) == normalize(text).removesuffix("\n")
    assert records[-1] == {"end": "done", "offset": len(data)}
    offsets = [r["offset"] for r in records]
    assert offsets == sorted(offsets)


def test_json_seq_is_text_with_lines_by_default_and_loses_its_record_separators() -> None:
    assert is_text_like("application/json-seq")
    assert default_granularity("application/json-seq") == "lines"
    client = sse_lines([b'\x1e{"a":1}\n\x1e{"b"', b":2}\n"], content_type="application/json-seq")
    assert [json.loads(e.data) for e in client.named("message")] == [{"a": 1}, {"b": 2}]
    assert not client.named("base64")
    encoder = NdjsonEncoder()
    encoder.begin("application/json-seq")
    assert encoder.feed(b'\x1e{"a":1}\n') == b'{"offset":9,"data":"{\\"a\\":1}"}\n'


@pytest.mark.parametrize(
    ("content_type", "granularity"),
    [
        ("application/x-ndjson", "lines"),
        ("application/jsonl; charset=utf-8", "lines"),
        ("application/json-seq", "lines"),
        ("application/json", "chunks"),
        ("text/plain", "chunks"),
        (None, "chunks"),
    ],
)
def test_default_granularity(content_type: str | None, granularity: str) -> None:
    assert default_granularity(content_type) == granularity


def test_line_records_end_a_line_at_a_cr_that_ends_a_chunk_without_waiting() -> None:
    records = LineRecords()
    assert records.feed(b"a\r") == [("a", 2)]
    assert records.feed(b"\nb\n") == [("b", 5)]  # the LF of the CRLF is no empty line
    assert records.feed(b"\xff\n") == [("\ufffd", 7)] and records.replaced == 1


def test_line_records_cut_a_huge_line_at_a_character_boundary() -> None:
    records = LineRecords(max_line=4)
    out = records.feed("ab✓cd".encode())
    assert out == [("ab", 2), ("✓c", 6)] and records.held == 1
    assert records.finish() == [("d", 7)]


# -- a text/event-stream producer, passed through with ids --

FIELD = st.sampled_from(["data: x", 'data: {"t":1}', "data:", "event: delta", ": keep-alive", "id: own-7", "data: é"])
EVENT = st.lists(FIELD, min_size=1, max_size=4)
NEWLINE = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def event_streams(draw: st.DrawFn) -> str:
    newline = draw(NEWLINE)
    events = draw(st.lists(EVENT, max_size=6))
    return "".join("".join(field + newline for field in event) + newline for event in events)


@settings(max_examples=300)
@given(stream=event_streams(), cuts=CUTS)
def test_passthrough_delivers_the_producers_events_with_resumable_ids(stream: str, cuts: list[int]) -> None:
    data = stream.encode()
    expected = EventSourceModel()
    expected.feed(data + b"\n")  # the model holds a last CR (it may be half a CRLF): end it
    encoder = SseEncoder(epoch="E")
    encoder.begin("text/event-stream")
    client = EventSourceModel()
    for chunk in chunked(data, cuts):
        client.feed(encoder.feed(chunk))
    client.feed(encoder.end("done"))
    got = [e for e in client.events if e.type != "done"]
    assert [(e.type, e.data) for e in got] == [(e.type, e.data) for e in expected.events]
    for event in got:
        if event.last_event_id.startswith("E-"):
            end = int(event.last_event_id[2:])
            resumed = SseEncoder(epoch="E", offset=end)
            resumed.begin("text/event-stream")
            again = EventSourceModel()
            again.feed(resumed.feed(data[end:]))
            again.feed(resumed.end("done"))
            later = got[got.index(event) + 1 :]
            assert [(e.type, e.data) for e in again.events if e.type != "done"] == [(e.type, e.data) for e in later]


def test_an_event_with_its_own_id_is_left_alone() -> None:
    ids = EventStreamIds(epoch="E")
    assert ids.feed(b"id: 42\ndata: a\n\ndata: b\n\n") == b"id: 42\ndata: a\n\ndata: b\nid: E-25\n\n"


def test_a_reader_that_starts_inside_an_event_starts_at_the_next_one() -> None:
    ids = EventStreamIds(epoch="E", offset=3, aligned=False)
    assert ids.feed(b"ta: half\n\ndata: whole\n\n") == b"data: whole\nid: E-26\n\n"


def test_an_event_too_big_to_hold_goes_out_as_it_comes() -> None:
    from ringpipe.core import event_stream

    ids = EventStreamIds(epoch="E")
    big = b"data: " + b"x" * event_stream.MAX_EVENT_BYTES
    assert ids.feed(big) == big and not ids.between_events
    assert ids.feed(b"y\n\ndata: z\n\n") == b"y\n\ndata: z\nid: E-%d\n\n" % (len(big) + 12)


def test_a_lines_reader_that_starts_inside_a_line_starts_at_the_next_line() -> None:
    encoder = NdjsonEncoder(offset=4, aligned=False, granularity="lines")
    encoder.begin("application/x-ndjson")
    assert encoder.feed(b'":1}\n{"b":2}\n') == b'{"offset":17,"data":"{\\"b\\":2}"}\n'
    sse = SseEncoder(epoch="E", offset=4, aligned=False)
    sse.begin("application/x-ndjson")
    assert sse.feed(b'":1}\n{"b":2}\n') == b'id: E-17\ndata: {"b":2}\n\n'


def test_a_resume_after_a_crlf_split_across_chunks_adds_no_blank_record() -> None:
    first = NdjsonEncoder(granularity="lines")
    first.begin("text/plain")
    assert first.feed(b"a\r") == b'{"offset":2,"data":"a"}\n'
    resumed = NdjsonEncoder(offset=2, granularity="lines")  # at the record's offset, before the LF
    resumed.begin("text/plain")
    assert resumed.feed(b"\nb\n") == b'{"offset":5,"data":"b"}\n'


def test_a_gap_in_lines_or_passthrough_leaves_the_last_id_alone() -> None:
    for content_type in ("application/x-ndjson", "text/event-stream"):
        encoder = SseEncoder(epoch="E")
        encoder.begin(content_type)
        client = EventSourceModel()
        client.feed(encoder.gap(3, 100))
        (gap,) = client.named("gap")
        assert gap.last_event_id == "" and json.loads(gap.data) == {"from": 3, "to": 100}
        # the line (or event) that ``to`` falls in is dropped: the first record is a whole one
        out = encoder.feed(b'tail"}\n\n{"x":1}\n\n' if content_type != "text/event-stream" else b"ta: 1\n\ndata: 2\n\n")
        client.feed(out)
        assert [e.data for e in client.named("message")] == ['{"x":1}'] or [
            e.data for e in client.named("message")
        ] == ["2"]
    chunks = SseEncoder(epoch="E")
    chunks.begin("text/plain")
    assert b"id: E-100" in chunks.gap(3, 100)  # in chunks any offset is a place to resume
