"""Reader options (``readers.base.read_options``): which framing a request asks for, and refusals."""

from __future__ import annotations

import pytest

from ringpipe.http.readers.base import ReadOptions, read_options


def scope(query: bytes = b"", accept: bytes | None = None, kind: str = "http") -> dict[str, object]:
    headers = [] if accept is None else [(b"accept", accept)]
    return {"type": kind, "query_string": query, "headers": headers}


@pytest.mark.parametrize(
    ("query", "accept", "kind", "expected"),
    [
        (b"", None, "http", ReadOptions("raw")),
        (b"", b"text/event-stream", "http", ReadOptions("sse")),
        (b"", b"text/html, Text/Event-Stream;q=0.9", "http", ReadOptions("sse")),
        (b"format=raw", b"text/event-stream", "http", ReadOptions("raw")),
        (b"n=2&format=ndjson&encoding=base64", None, "http", ReadOptions("ndjson", base64=True)),
        (b"format=sse&done=openai", None, "http", ReadOptions("sse", done_openai=True)),
        (b"", b"text/event-stream", "websocket", ReadOptions("raw")),
        (b"format=lines", None, "websocket", ReadOptions("lines")),
        (b"format=text", None, "websocket", ReadOptions("text")),
        (b"format=sse&sse=lines", None, "http", ReadOptions("sse", granularity="lines")),
        (b"sse=chunks", b"text/event-stream", "http", ReadOptions("sse", granularity="chunks")),
        (b"format=ndjson&ndjson=lines", None, "http", ReadOptions("ndjson", granularity="lines")),
        # Each framing reads its own parameter; the other one is checked, not applied.
        (b"format=ndjson&sse=lines", None, "http", ReadOptions("ndjson")),
        (b"format=sse&ndjson=lines&sse=chunks", None, "http", ReadOptions("sse", granularity="chunks")),
        (b"sse=lines", None, "http", ReadOptions("raw")),
        (b"format=lines&sse=lines", None, "websocket", ReadOptions("lines")),
    ],
)
def test_options(query: bytes, accept: bytes | None, kind: str, expected: ReadOptions) -> None:
    assert read_options(scope(query, accept, kind)) == expected


@pytest.mark.parametrize(
    ("query", "kind", "message"),
    [
        (b"format=xml", "http", "Unknown format 'xml': use raw, sse or ndjson."),
        (b"format=lines", "http", "Unknown format 'lines': use raw, sse or ndjson."),
        (b"format=sse", "websocket", "Unknown format 'sse': use raw, lines or text."),
        (b"encoding=hex", "http", "Unknown encoding 'hex': use text or base64."),
        (b"done=anthropic", "http", "Unknown done marker 'anthropic': use openai."),
        (b"format=sse&sse=words", "http", "Unknown sse granularity 'words': use lines or chunks."),
        (b"format=ndjson&ndjson=line", "http", "Unknown ndjson granularity 'line': use lines or chunks."),
        (b"format=ndjson&sse=", "http", "Unknown sse granularity '': use lines or chunks."),
    ],
)
def test_unknown_values_are_refused(query: bytes, kind: str, message: str) -> None:
    assert read_options(scope(query, kind=kind)) == message


def test_framed_http_readers_take_gaps_and_the_others_do_not() -> None:
    """SPEC 2.4: SSE and NDJSON readers are told what they lost; raw and WebSocket are not."""
    taken = {
        (kind, query): options.takes_gaps
        for kind, query in [
            ("http", b"format=sse"),
            ("http", b"format=ndjson"),
            ("http", b""),
            ("websocket", b"format=lines"),
            ("websocket", b""),
        ]
        if isinstance(options := read_options(scope(query, kind=kind)), ReadOptions)
    }
    assert taken == {
        ("http", b"format=sse"): True,
        ("http", b"format=ndjson"): True,
        ("http", b""): False,
        ("websocket", b"format=lines"): False,
        ("websocket", b""): False,
    }
