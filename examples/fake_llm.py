#!/usr/bin/env python3
"""A fake LLM: streams an OpenAI-style chat completion token by token, offline, into a pipe
(``--send URL``, through ``ringpipe.client.send``) or to stdout.

Each token is one chunk in the shape of OpenAI's streaming API (``stream: true``): a
``data: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": ...}}]}`` line
and a blank line, at ``--rate`` tokens per second; then a chunk with ``finish_reason``
``"stop"`` and ``data: [DONE]``. ``--format ndjson`` writes the bare JSON chunks, one per
line, instead (for ``jq`` without any parsing of SSE). Nothing touches the network; the
output is the same for the same arguments (``--created`` fixes the timestamp).

    python examples/fake_llm.py --send http://127.0.0.1:8080/run-42/tokens
    python examples/read_tokens.py http://127.0.0.1:8080/run-42/tokens

With ``--send``, each token is one item of an async generator that ``send`` uploads as one
HTTP chunk the moment it is yielded; the script then prints how the transfer went and exits
like ``ringpipe send`` (0 done, 3 every reader gone, 4 cancelled, 6 refused, 7 unreachable).
A cancelled transfer (``ringpipe cancel``) stops the generator at once. Without ``--send``
the events go to stdout, for ``curl -T -`` or ``ringpipe send PATH -``; a transfer that ends
early then stops this script at the broken pipe, quietly, with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator

DEFAULT_TEXT = (
    "Ringpipe relays bytes from one producer to many readers, live. "
    "Each token you see here left the fake model a moment ago — no buffering, no storage.\n"
    "Readers choose their framing: raw bytes, Server-Sent Events, NDJSON or WebSocket. ✓"
)
TOKEN = re.compile(r"\s*\S+|\s+")


def tokens(text: str) -> list[str]:
    """Word-sized tokens that keep their leading white space, as LLM tokenizers do."""
    return TOKEN.findall(text)


def chunk(index: int, created: int, delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": f"chatcmpl-fake-{created}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": "fake-llm-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "x_token_index": index,
    }


def completion(text: str, created: int, fmt: str) -> Iterator[bytes]:
    """The completion's events, one per token (plus the opening, stop and [DONE] events)."""

    def event(payload: object) -> bytes:
        line = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        return (f"data: {line}\n\n" if fmt == "sse" else f"{line}\n").encode()

    yield event(chunk(0, created, {"role": "assistant", "content": ""}, None))
    for index, token in enumerate(tokens(text), start=1):
        yield event(chunk(index, created, {"content": token}, None))
    yield event(chunk(0, created, {}, "stop"))
    if fmt == "sse":
        yield event("[DONE]")


async def paced(events: Iterator[bytes], rate: float) -> AsyncIterator[bytes]:
    """The events at ``rate`` per second: a model that thinks between tokens."""
    for index, event in enumerate(events):
        if rate > 0 and index:
            await asyncio.sleep(1.0 / rate)
        yield event


async def send(url: str, events: Iterator[bytes], rate: float, fmt: str, n: int) -> int:
    from ringpipe import client

    content_type = "text/event-stream" if fmt == "sse" else "application/x-ndjson"
    try:
        result = await client.send(
            url, paced(events, rate), n=n, content_type=content_type, token=os.environ.get("RINGPIPE_TOKEN")
        )
    except client.PipeCancelled:
        sys.stderr.write("fake_llm: the pipe was cancelled; stopped generating\n")
        return 4
    except client.PipeRefused as exc:
        sys.stderr.write(f"fake_llm: refused ({exc.status}): {exc.message}\n")
        return 6
    except client.RelayUnreachable as exc:
        sys.stderr.write(f"fake_llm: {exc}\n")
        return 7
    sys.stderr.write(f"fake_llm: {result.bytes_sent} bytes to {result.completed}/{result.receivers} reader(s)\n")
    return 0 if result.ok else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=DEFAULT_TEXT, help="what the model 'says' (default: a short paragraph)")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second (0: as fast as possible)")
    parser.add_argument("--format", choices=("sse", "ndjson"), default="sse", help="OpenAI SSE lines or bare JSON")
    parser.add_argument("--created", type=int, default=None, help="the 'created' timestamp (default: now)")
    parser.add_argument("--send", metavar="URL", default=None, help="stream into this pipe (default: stdout)")
    parser.add_argument("--n", type=int, default=1, help="with --send: the number of readers")
    args = parser.parse_args(argv)
    created = int(time.time()) if args.created is None else args.created
    events = completion(args.text, created, args.format)
    if args.send:
        return asyncio.run(send(args.send, events, args.rate, args.format, args.n))
    out = sys.stdout.buffer
    try:
        for index, event in enumerate(events):
            if args.rate > 0 and index:
                time.sleep(1.0 / args.rate)
            out.write(event)
            out.flush()
    except BrokenPipeError:
        sys.stderr.close()  # nothing more to say; keep Python from complaining at exit
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
