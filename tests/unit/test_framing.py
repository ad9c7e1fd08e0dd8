"""The reader framings (``ringpipe.framing``): what a client reconstructs equals what the producer sent.

The SSE side is checked with ``EventSourceModel``, a transcription of the WHATWG
"event stream interpretation" algorithm (the one every browser's EventSource runs), so the
property tests assert what a browser would see, not what our encoder thinks it wrote.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringpipe.core.errors import ENDINGS
from ringpipe.core.framing import (
    PING,
    RETRY,
    Granularity,
    LineSplitter,
    NdjsonEncoder,
    SseEncoder,
    Utf8Text,
    _TextStream,
    is_event_stream,
    is_text_like,
)
from tests.support.eventsource import CUTS, TEXT, EventSourceModel, chunked, normalize


def sse(chunks: list[bytes], ending: str = "done", **kwargs: bool) -> tuple[EventSourceModel, SseEncoder, list[str]]:
    """Feed ``chunks``; also return the reassembled text as it stood after each chunk."""
    encoder = SseEncoder(epoch="E", **kwargs)
    client = EventSourceModel()
    client.feed(RETRY)
    live = []
    for chunk in chunks:
        client.feed(encoder.feed(chunk))
        live.append(client.text())
    client.feed(encoder.end(ending))
    return client, encoder, live


@settings(max_examples=300)
@given(text=TEXT, cuts=CUTS)
def test_sse_text_reassembles_exactly_and_live(text: str, cuts: list[int]) -> None:
    data = text.encode()
    chunks = chunked(data, cuts)
    client, encoder, live = sse(chunks)
    assert client.text() == normalize(text)
    assert client.retry == 1000
    # Live: after each chunk the client already has every complete character of it.
    taken = b""
    for chunk, seen in zip(chunks, live, strict=True):
        taken += chunk
        complete = taken.decode("utf-8", "ignore") if _ends_mid_char(taken) else taken.decode()
        assert normalize(seen) == seen
        # Whatever text was complete is shown, except that a trailing CR may still be a CRLF.
        assert seen == normalize(complete) or seen == normalize(complete + "\n")
    (done,) = client.named("done")
    assert json.loads(done.data) == {"ending": "done", "offset": len(data)}
    assert done.last_event_id == f"E-{len(data)}"
    ids = [int(e.last_event_id.split("-")[1]) for e in client.events]
    assert ids == sorted(ids) and all(0 < i <= len(data) for i in ids[:-1])
    assert encoder.replaced == 0


def _ends_mid_char(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_sse_a_token_without_newline_is_an_event_at_once() -> None:
    encoder = SseEncoder(epoch="7")
    assert encoder.feed(b"Hel") == b"id: 7-3\ndata: Hel\n\n"
    assert encoder.feed(b"lo\nwor") == b"id: 7-9\ndata: lo\ndata: wor\n\n"
    assert encoder.feed(b"ld\r") == b"id: 7-12\ndata: ld\ndata: \n\n"
    assert encoder.feed(b"\n") == b""  # the LF of the CRLF: already a line end
    assert encoder.feed(b"\n") == b"id: 7-14\ndata: \ndata: \n\n"  # a real blank line


def test_sse_split_character_waits_for_its_last_byte() -> None:
    encoder = SseEncoder(epoch="e")
    snow = "☃".encode()
    assert encoder.feed(b"a" + snow[:1]) == b"id: e-1\ndata: a\n\n"
    assert encoder.feed(snow[1:2]) == b""
    assert encoder.feed(snow[2:]) == "id: e-4\ndata: ☃\n\n".encode()


@settings(max_examples=200)
@given(data=st.binary(max_size=80), cuts=CUTS)
def test_sse_invalid_utf8_becomes_replacement_and_is_counted(data: bytes, cuts: list[int]) -> None:
    client, encoder, _ = sse(chunked(data, cuts))
    assert client.text() == normalize(data.decode("utf-8", "replace"))
    assert encoder.replaced == _invalid_sequences(data)


def _invalid_sequences(data: bytes) -> int:
    count = 0
    while True:
        try:
            data.decode()
            return count
        except UnicodeDecodeError as exc:
            count += 1
            data = data[exc.end :]


@pytest.mark.parametrize(("ending", "event"), [("aborted", "error"), ("cancelled", "cancelled"), ("lagged", "lagged")])
def test_sse_each_ending_is_its_own_event(ending: str, event: str) -> None:
    client, _, _ = sse([b"partial"], ending)
    assert client.text() == "partial"
    (last,) = client.named(event)
    assert json.loads(last.data) == {"ending": ending, "offset": 7}
    assert client.events[-1] is last and not client.named("done")


def test_sse_done_openai_adds_done_marker_last() -> None:
    client, _, _ = sse([b"x"], "done", done_openai=True)
    assert [e.type for e in client.events] == ["message", "done", "message"]
    assert client.events[-1].data == "[DONE]"
    assert client.events[-1].last_event_id == "E-1"


def test_sse_unknown_ending_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown ending"):
        SseEncoder(epoch="e").end("finished")


@given(data=st.binary(max_size=100), cuts=CUTS)
def test_sse_base64_rebuilds_the_bytes(data: bytes, cuts: list[int]) -> None:
    encoder = SseEncoder(epoch="e")
    encoder.begin("application/octet-stream")
    assert encoder.mode == "base64"
    client = EventSourceModel()
    for chunk in chunked(data, cuts):
        client.feed(encoder.feed(chunk))
    client.feed(encoder.end("done"))
    assert b"".join(base64.b64decode(e.data) for e in client.named("base64")) == data
    assert not client.named("message")


def test_sse_encoding_base64_is_forced_even_for_text() -> None:
    encoder = SseEncoder(epoch="e", base64=True)
    encoder.begin("text/plain")
    assert encoder.feed(b"hi") == b"event: base64\nid: e-2\ndata: aGk=\n\n"


def test_sse_passthrough_relays_the_producers_events_with_ids_and_appends_the_ending() -> None:
    encoder = SseEncoder(epoch="e")
    encoder.begin("text/event-stream; charset=utf-8")
    produced = [b'data: {"a":1}\n\n', b"data: [DO", b"NE]"]
    out = [encoder.feed(c) for c in produced]
    # A whole event goes out at once, with the id of its end; a partial one waits for its blank line.
    assert out == [b'data: {"a":1}\nid: e-15\n\n', b"", b""]
    assert encoder.ping() == b": ping\n"  # between events: a comment cannot corrupt a line
    client = EventSourceModel()
    for chunk in out:
        client.feed(chunk)
    client.feed(encoder.end("aborted"))
    assert [e.data for e in client.named("message")] == ['{"a":1}', "[DONE]"]
    assert client.named("message")[0].last_event_id == "e-15"
    assert client.named("error")


def test_sse_ping_is_a_comment_between_events() -> None:
    encoder = SseEncoder(epoch="e")
    client = EventSourceModel()
    client.feed(encoder.feed(b"a"))
    ping = encoder.ping()
    assert ping == PING
    client.feed(ping)
    client.feed(encoder.feed(b"b"))
    assert client.text() == "ab" and client.comments == 1


def test_sse_gap_says_the_lost_range_and_goes_on() -> None:
    encoder = SseEncoder(epoch="e")
    client = EventSourceModel()
    client.feed(encoder.feed(b"ab\xe2"))
    client.feed(encoder.gap(3, 100))
    client.feed(encoder.feed(b"cd"))
    (gap,) = client.named("gap")
    assert json.loads(gap.data) == {"from": 3, "to": 100}
    assert client.text() == "abcd"
    assert client.events[-1].last_event_id == "e-102"


def test_sse_ending_before_any_pipe_has_no_id() -> None:
    """A waiting reader turned away after its head (e.g. the wait timeout) gets the aborted
    ending with the reason, and no id: it never joined a pipe, there is nothing to resume."""
    client = EventSourceModel()
    client.feed(SseEncoder(epoch="").end("aborted", "Nobody else came to '/p' within 300 s."))
    (event,) = client.named("error")
    assert json.loads(event.data) == {
        "ending": "aborted",
        "offset": 0,
        "reason": "Nobody else came to '/p' within 300 s.",
    }
    assert event.last_event_id == ""


@settings(max_examples=200)
@given(text=TEXT, cuts=CUTS, ending=st.sampled_from(ENDINGS))
def test_ndjson_rebuilds_the_text_exactly(text: str, cuts: list[int], ending: str) -> None:
    data = text.encode()
    encoder = NdjsonEncoder()
    out = b"".join(encoder.feed(c) for c in chunked(data, cuts)) + encoder.end(ending)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert "".join(line.get("data", "") for line in lines) == text  # CRLF kept exactly
    assert lines[-1] == {"end": ending, "offset": len(data)}
    offsets = [line["offset"] for line in lines]
    assert offsets == sorted(offsets)
    assert out.count(b"\n") == len(lines)


def test_ndjson_binary_and_gap() -> None:
    encoder = NdjsonEncoder()
    encoder.begin("image/png")
    assert encoder.feed(b"\x00\xff") == b'{"offset":2,"base64":"AP8="}\n'
    assert encoder.gap(2, 50) == b'{"gap":{"from":2,"to":50}}\n'
    assert encoder.feed(b"z") == b'{"offset":51,"base64":"eg=="}\n'
    assert encoder.end("lagged") == b'{"end":"lagged","offset":51}\n'


def test_ndjson_truncated_character_is_replaced_at_the_end() -> None:
    encoder = NdjsonEncoder()
    assert encoder.feed("é".encode()[:1]) == b""
    assert encoder.end("aborted") == '{"offset":1,"data":"\ufffd"}\n{"end":"aborted","offset":1}\n'.encode()
    assert encoder.replaced == 1


@settings(max_examples=200)
@given(text=TEXT, cuts=CUTS)
def test_lines_are_the_producers_lines(text: str, cuts: list[int]) -> None:
    splitter = LineSplitter()
    lines: list[str] = []
    for chunk in chunked(text.encode(), cuts):
        lines += splitter.feed(chunk)
    lines += splitter.end()
    expected = normalize(text).split("\n")
    if expected[-1] == "":
        expected.pop()
    assert lines == expected


def test_lines_a_huge_line_is_sent_in_bounded_pieces() -> None:
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert splitter.feed(b"\nx") == ["ij"]
    assert splitter.end() == ["x"]


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        (None, True),
        ("text/plain; charset=utf-8", True),
        ("TEXT/HTML", True),
        ("application/json", True),
        ("application/vnd.api+json", True),
        ("application/x-ndjson", True),
        ("application/octet-stream", False),
        ("image/png", False),
    ],
)
def test_text_like(content_type: str | None, text: bool) -> None:
    assert is_text_like(content_type) is text


def test_event_stream_type() -> None:
    assert is_event_stream("text/event-stream; charset=utf-8")
    assert not is_event_stream("text/plain")


def test_utf8_text_holds_at_most_an_unfinished_character() -> None:
    utf8 = Utf8Text()
    assert utf8.decode("😀".encode()[:3]) == "" and utf8.held == 3
    assert utf8.decode("😀".encode()[3:]) == "😀" and utf8.held == 0


def test_sse_no_id_before_the_reader_has_a_pipe() -> None:
    """An ending sent before the transfer started (no epoch yet) carries no id to resume from."""
    client = EventSourceModel()
    client.feed(SseEncoder(epoch="").end("aborted", "the transfer was broken"))
    (event,) = client.named("error")
    assert event.last_event_id == ""
    assert json.loads(event.data) == {"ending": "aborted", "offset": 0, "reason": "the transfer was broken"}


#: Bytes that exercise the ASCII fast paths and every way out of them: line ends, JSON escapes,
#: a multi-byte character (its bytes cut apart by the chunking), an invalid byte.
_MIXED = st.lists(
    st.sampled_from([b"tok", b" ", b"a", b'"', b"\\", b"\t", b"\x7f", b"\r", b"\n", b"\r\n", "é".encode(), b"\xff"]),
    max_size=30,
).map(b"".join)


def _without_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_TextStream, "take_ascii_line", lambda _self, _data: False)
    monkeypatch.setattr(_TextStream, "take_ascii", lambda _self, _data: False)


@settings(max_examples=300)
@given(data=_MIXED, cuts=CUTS, granularity=st.sampled_from([None, "chunks"]))
def test_the_ascii_fast_paths_write_what_the_decoder_path_writes(
    data: bytes, cuts: list[int], granularity: Granularity | None
) -> None:
    """A token (ASCII, no line end; for NDJSON nothing JSON escapes) skips the decoder and the
    split: its event or record must be byte for byte the one the general path writes, and so
    must everything after it (offsets, a CR that opens a CRLF, a held character)."""
    chunks = chunked(data, cuts)

    def run() -> tuple[list[bytes], list[bytes]]:
        sse_encoder = SseEncoder(epoch="E", granularity=granularity)
        ndjson_encoder = NdjsonEncoder(granularity=granularity)
        sse_encoder.begin("text/plain")
        ndjson_encoder.begin("text/plain")
        sse_out = [sse_encoder.feed(chunk) for chunk in chunks] + [sse_encoder.end("done")]
        ndjson_out = [ndjson_encoder.feed(chunk) for chunk in chunks] + [ndjson_encoder.end("done")]
        return sse_out, ndjson_out

    fast = run()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _without_fast_paths(monkeypatch)
        general = run()
    assert fast == general
