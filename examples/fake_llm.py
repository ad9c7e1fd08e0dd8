#!/usr/bin/env python3
"""A fake LLM: streams an OpenAI-style chat completion to stdout, token by token, offline.

Each token is one chunk in the shape of OpenAI's streaming API (``stream: true``): a
``data: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": ...}}]}`` line
and a blank line, at ``--rate`` tokens per second; then a chunk with ``finish_reason``
``"stop"`` and ``data: [DONE]``. ``--format ndjson`` writes the bare JSON chunks, one per
line, instead (for ``jq`` without any parsing of SSE). Nothing touches the network; the
output is the same for the same arguments (``--created`` fixes the timestamp).

    python examples/fake_llm.py | curl -sS -T - -H 'Content-Type: text/event-stream' \\
        http://127.0.0.1:8080/run-42/tokens
    curl -sN http://127.0.0.1:8080/run-42/tokens

When the transfer ends early (every reader gone, or ``DELETE`` on the path), ringpipe closes
the upload, curl exits, and this script stops at the broken pipe, quietly, with status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=DEFAULT_TEXT, help="what the model 'says' (default: a short paragraph)")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second (0: as fast as possible)")
    parser.add_argument("--format", choices=("sse", "ndjson"), default="sse", help="OpenAI SSE lines or bare JSON")
    parser.add_argument("--created", type=int, default=None, help="the 'created' timestamp (default: now)")
    args = parser.parse_args(argv)
    created = int(time.time()) if args.created is None else args.created
    out = sys.stdout.buffer

    def emit(payload: object) -> None:
        line = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        out.write((f"data: {line}\n\n" if args.format == "sse" else f"{line}\n").encode())
        out.flush()

    try:
        emit(chunk(0, created, {"role": "assistant", "content": ""}, None))
        for index, token in enumerate(tokens(args.text), start=1):
            if args.rate > 0:
                time.sleep(1.0 / args.rate)
            emit(chunk(index, created, {"content": token}, None))
        emit(chunk(0, created, {}, "stop"))
        if args.format == "sse":
            emit("[DONE]")
    except BrokenPipeError:
        sys.stderr.close()  # nothing more to say; keep Python from complaining at exit
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
