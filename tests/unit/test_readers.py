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
    ],
)
def test_unknown_values_are_refused(query: bytes, kind: str, message: str) -> None:
    assert read_options(scope(query, kind=kind)) == message
