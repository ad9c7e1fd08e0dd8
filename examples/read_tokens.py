#!/usr/bin/env python3
"""Print an LLM's tokens as they arrive through a pipe, and keep going when the connection drops.

Reads the pipe with ``ringpipe.client.receive``: when the connection to the relay breaks (a
proxy restarts, a load balancer cuts an idle stream, Wi-Fi blinks), the client reconnects
and continues at the exact byte it had reached, so no token is lost or printed twice. The
producer never notices. Each resume is reported on stderr.

    python examples/fake_llm.py --send http://127.0.0.1:8080/run-42/tokens
    python examples/read_tokens.py http://127.0.0.1:8080/run-42/tokens

It understands what ``fake_llm.py`` (and OpenAI's streaming API) sends: ``data: {json}`` SSE
lines or bare JSON lines, each a ``chat.completion.chunk`` whose ``delta.content`` is printed.
``RINGPIPE_TOKEN`` is used as the bearer token when set. Exit status as ``ringpipe recv``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator

from ringpipe import client


class Completion:
    """Bytes of a streamed chat completion in, the text of each token out (whole lines only)."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> Iterator[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("data: "):
                text = text[len("data: ") :]
            if not text.startswith("{"):
                continue  # blank lines between events, "data: [DONE]"
            choices = json.loads(text).get("choices") or [{}]
            content = choices[0].get("delta", {}).get("content")
            if content:
                yield content


async def read(url: str) -> int:
    completion = Completion()
    resumes = 0
    try:
        async with client.receive(url, token=os.environ.get("RINGPIPE_TOKEN")) as chunks:
            async for chunk in chunks:
                if chunks.reconnects > resumes:
                    resumes = chunks.reconnects
                    sys.stderr.write(f"\n[connection dropped; resumed at byte {chunk.start}]\n")
                for token in completion.feed(chunk.data):
                    sys.stdout.write(token)
                    sys.stdout.flush()
    except client.PipeEnded as exc:
        sys.stderr.write(f"\nread_tokens: the stream ended early ({exc.ending}) at byte {exc.offset}\n")
        return {"aborted": 3, "cancelled": 4, "lagged": 5}[exc.ending]
    except client.PipeRefused as exc:
        sys.stderr.write(f"read_tokens: refused ({exc.status}): {exc.message}\n")
        return 6
    except client.RelayUnreachable as exc:
        sys.stderr.write(f"read_tokens: {exc}\n")
        return 7
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the pipe's URL, e.g. http://127.0.0.1:8080/run-42/tokens")
    args = parser.parse_args(argv)
    return asyncio.run(read(args.url))


if __name__ == "__main__":
    sys.exit(main())
