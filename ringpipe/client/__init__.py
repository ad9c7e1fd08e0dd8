"""The Python client of ringpipe: send, receive (with automatic resume), watch, status, cancel.

Async first (``await send(...)``, ``async for chunk in receive(...)``), on httpx and AnyIO,
so it runs under asyncio and Trio alike; ``ringpipe.client.sync`` has the same calls for
scripts. ``docs/client.md`` is the guide; ``ringpipe send|recv|watch|status|cancel`` is the
command line on top (``cli.py``).

Layer: imports ``ringpipe.core`` only, plus httpx (and AnyIO, which httpx brings).
"""

from __future__ import annotations

from ringpipe.client.errors import (
    ClientError,
    PipeAborted,
    PipeCancelled,
    PipeEnded,
    PipeGap,
    PipeLagged,
    PipeRefused,
    RelayUnreachable,
)
from ringpipe.client.reading import Framing, Receiver, receive, watch
from ringpipe.client.sending import Source, send
from ringpipe.client.transport import cancel, status
from ringpipe.client.wire import Chunk, PipeStatus, SendResult

__all__ = [
    "Chunk",
    "ClientError",
    "Framing",
    "PipeAborted",
    "PipeCancelled",
    "PipeEnded",
    "PipeGap",
    "PipeLagged",
    "PipeRefused",
    "PipeStatus",
    "Receiver",
    "RelayUnreachable",
    "SendResult",
    "Source",
    "cancel",
    "receive",
    "send",
    "status",
    "watch",
]
