"""What every pipe endpoint's response shares: the piping error form, the header sets, and
how the sender's content headers reach its receivers.

Every streaming response carries ``STREAM_HEADERS``: ``Cache-Control: no-cache, no-transform``
and ``X-Accel-Buffering: no``, so caches and proxies (nginx) neither store, transform nor
buffer it; ringpipe never compresses a response.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from starlette.types import Send

from ringpipe.ops import metrics

__all__ = [
    "HEADERS_IN_RING",
    "OWNER_LOST",
    "STREAM_HEADERS",
    "TEXT_HEADERS",
    "content_headers",
    "reject",
    "worker_header",
]

TEXT_HEADERS: Final = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*")]
#: On every streaming response (SPEC 2.7): no cache or proxy may store, transform or buffer it.
STREAM_HEADERS: Final = [(b"cache-control", b"no-cache, no-transform"), (b"x-accel-buffering", b"no")]
#: Internal marker in a Join's receiver headers (never sent): the sender's upload is
#: multipart, and the first part's headers come through the ring ahead of its data.
HEADERS_IN_RING: Final = "ringpipe-headers-in-ring"
#: What a party is told when the worker that owns its pipe is gone.
OWNER_LOST: Final = "The transfer was broken: a worker process of the server died."
_MIME = re.compile(r"^\s*([^;]*)(\s*;?.*)$", re.DOTALL)


async def reject(
    send: Send,
    status: int,
    message: str,
    *,
    close: bool = False,
    head: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with the piping error form: ``[ERROR] <message>``, text/plain, CORS open
    (plus ``extra`` headers, e.g. a 416's ``Content-Range``)."""
    body = f"[ERROR] {message}\n".encode()
    headers = [*TEXT_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    if close:
        headers.append((b"connection", b"close"))
    metrics.REJECTIONS.labels(code=str(status)).inc()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def worker_header(index: int) -> tuple[bytes, bytes]:
    """``Ringpipe-Worker``: which worker process served this party (for operators and tests)."""
    return (b"ringpipe-worker", str(index).encode())


def _safe_content_type(value: str) -> str:
    """text/html is relayed as text/plain, so a pipe never serves a page of our origin."""
    match = _MIME.match(value)
    if match and match.group(1) == "text/html":
        return "text/plain" + match.group(2)
    return value


def content_headers(length: str | None, content_type: str | None, disposition: str | None) -> list[tuple[str, str]]:
    """The sender's content headers as its receivers get them (text/html made text/plain)."""
    out: list[tuple[str, str]] = []
    if length is not None:
        out.append(("content-length", length))
    if content_type is not None:
        out.append(("content-type", _safe_content_type(content_type)))
    if disposition is not None:
        out.append(("content-disposition", disposition))
    return out
