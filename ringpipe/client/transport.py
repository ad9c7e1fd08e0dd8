"""Where a request goes and with which credentials; the httpx client the calls share; HEAD and
DELETE, which need nothing else.

Credentials (SPEC Part 4) travel three ways, and the client keeps each where the server
looks for it: a bearer token in ``Authorization``; a signed URL's ``rp_*`` parameters in the
query, untouched; a per-pipe read key in ``Ringpipe-Read-Key`` (a ``?key=`` in the URL given
is moved there, so it stays out of every URL the client builds). No secret is ever logged:
the client logs paths only, ``Target`` and ``Credentials`` do not show secrets in their
reprs, and a filter on httpx's own logger masks credential parameters in its request lines.

Streaming needs no read or write timeout: a receiver gets nothing until the transfer starts
(up to the server's ``wait_timeout``), and a waiting sender's upload is not read. TCP
keep-alive probes instead tell a dead connection from a quiet one, since raw and NDJSON
streams carry no heartbeat of their own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from ringpipe.client.errors import PipeRefused, RelayUnreachable
from ringpipe.client.wire import PipeStatus, error_message, parse_status, redact_url
from ringpipe.core.access import NO_CREDENTIAL

__all__ = [
    "CONNECT_TIMEOUT_S",
    "Credentials",
    "Target",
    "cancel",
    "make_client",
    "open_client",
    "status",
    "unreachable",
]

log = logging.getLogger("ringpipe.client")

CONNECT_TIMEOUT_S = 10.0
#: Probe an idle connection after 15 s, every 5 s, 4 times: a dead relay is noticed in ~35 s.
_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    *(
        (socket.IPPROTO_TCP, getattr(socket, name), value)
        for name, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 4))
        if hasattr(socket, name)
    ),
]


class _MaskCredentials(logging.Filter):
    """httpx logs each request's full URL at INFO; mask the credential parameters in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(redact_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


_MASK = _MaskCredentials()
if _MASK not in logging.getLogger("httpx").filters:
    logging.getLogger("httpx").addFilter(_MASK)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A bearer token (``--token``) and a per-pipe read key; both optional, never shown."""

    token: str | None = field(default=None, repr=False)
    read_key: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        if self.read_key:
            out["Ringpipe-Read-Key"] = self.read_key
        return out


class Target:
    """One pipe URL with its credentials: the URLs and headers of every request to it.

    ``path`` is the pipe's path as sent (percent escapes kept), the only part of the URL
    that appears in messages and logs.
    """

    def __init__(self, url: str | httpx.URL, *, token: str | None = None, read_key: str | None = None) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"a pipe URL looks like https://relay.example.com/some/path, not {redact_url(str(url))!r}")
        key = parsed.params.get("key")
        if key is not None:
            parsed = parsed.copy_remove_param("key")
        self.url = parsed
        self.credentials = Credentials(token=token, read_key=read_key if read_key is not None else key)
        self.path = parsed.raw_path.split(b"?", 1)[0].decode("ascii", "replace")

    def __repr__(self) -> str:
        return f"Target({redact_url(str(self.url))!r})"

    def url_with(self, **params: str | None) -> httpx.URL:
        """The URL with ``params`` set; a None value leaves the URL's own (if any) alone."""
        url = self.url
        for name, value in params.items():
            if value is not None:
                url = url.copy_set_param(name, value)
        return url

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**(extra or {}), **self.credentials.headers()}

    def refused(self, status_code: int, body: bytes) -> PipeRefused:
        return PipeRefused(status_code, error_message(body), path=self.path)


def make_client() -> httpx.AsyncClient:
    """An httpx client fit for pipes: no read/write timeout, keep-alive probes, no redirects."""
    transport = httpx.AsyncHTTPTransport(socket_options=_KEEPALIVE, retries=0)
    timeout = httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=None, write=None, pool=None)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)


@contextlib.asynccontextmanager
async def open_client(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's client as is, or a fresh one (``make_client``) closed on exit."""
    if client is not None:
        yield client
        return
    async with make_client() as own:
        yield own


def unreachable(target: Target, exc: httpx.TransportError) -> RelayUnreachable:
    """httpx's error as ``RelayUnreachable``; its text names the failure, never the URL."""
    return RelayUnreachable(f"{target.url.host}:{target.url.port or ''} {target.path}: {type(exc).__name__}: {exc}")


async def status(
    url: str,
    *,
    token: str | None = None,
    read_key: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> PipeStatus:
    """The pipe's state (``HEAD``, SPEC 2.6) without taking a slot; ``state="free"`` when
    nothing is on the path.

    Raises:
        PipeRefused: no credential (401), or one without the ``status`` scope or with the
            wrong read key (403).
        RelayUnreachable: the relay did not answer.
    """
    target = Target(url, token=token, read_key=read_key)
    async with open_client(client) as http:
        try:
            response = await http.head(target.url, headers=target.headers())
        except httpx.TransportError as exc:
            raise unreachable(target, exc) from None
    if response.status_code not in (200, 404):
        raise PipeRefused(response.status_code, _head_reason(response.status_code), path=target.path)
    try:
        return parse_status(response.status_code, response.headers)
    except ValueError as exc:
        raise PipeRefused(response.status_code, str(exc), path=target.path) from None


def _head_reason(status_code: int) -> str:
    """HEAD answers carry no body: say what the status means, in the server's words."""
    reasons = {
        401: NO_CREDENTIAL,
        403: "The credential or the read key does not allow 'status' on this path.",
        503: "The server is at capacity or shutting down.",
    }
    return reasons.get(status_code, httpx.codes.get_reason_phrase(status_code))


async def cancel(
    url: str,
    *,
    token: str | None = None,
    read_key: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> bool:
    """Cancel the waiting or running transfer on the path (``DELETE``, SPEC 2.3): True when
    one was cancelled, False when the path was free. Its sender gets ``PipeCancelled`` and
    its readers the cancelled ending.

    Raises:
        PipeRefused: no credential (401), or one without the ``cancel`` scope or with the
            wrong read key (403).
        RelayUnreachable: the relay did not answer.
    """
    target = Target(url, token=token, read_key=read_key)
    async with open_client(client) as http:
        try:
            response = await http.delete(target.url, headers=target.headers())
        except httpx.TransportError as exc:
            raise unreachable(target, exc) from None
    if response.status_code == 204:
        log.info("cancelled %s", target.path)
        return True
    if response.status_code == 404:
        return False
    raise target.refused(response.status_code, response.content)
