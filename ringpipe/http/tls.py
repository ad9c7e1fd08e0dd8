"""HTTPS on the pipe port: the server's TLS context, and TLS started on an accepted connection.

One port serves both HTTPS and (unless ``--ssl-only``) plain HTTP: the HTTP protocol looks
at the first byte a client sends (``0x16`` starts a TLS handshake record; no HTTP method
starts with it) and, for TLS, puts an ``SSLProtocol`` between the socket and itself.

``loop.start_tls`` cannot do this: the first bytes of the handshake have already been read
(that is how we know it is TLS), and ``start_tls`` only reads from the socket. So the
stdlib's ``asyncio.sslproto.SSLProtocol`` (the class ``start_tls`` itself uses) is set up
by hand and handed those bytes first. It calls the HTTP protocol's ``connection_made``
again, with the TLS transport, once the handshake is done; a connection lost before that
is reported through ``on_settled`` alone, because ``SSLProtocol`` never tells an app
protocol it had not yet introduced that the connection is gone.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Final

__all__ = ["TlsError", "server_context", "start_server_tls"]

#: Seconds a closing TLS connection waits for the client's close_notify (asyncio's default,
#: 30 s, would let a silent client hold a worker's shutdown that long).
SHUTDOWN_S: Final = 3


class TlsError(Exception):
    """The certificate or key cannot be used; the message is one line, fit for a log."""


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or newer, ALPN ``http/1.1`` (we speak no HTTP/2)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS certificate {certfile!r} and key {keyfile!r}: {exc}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def start_server_tls(
    transport: asyncio.Transport,
    app: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    first: bytes,
    *,
    handshake_timeout: float | None,
    on_settled: Callable[[], None],
) -> None:
    """Run TLS on ``transport`` (whose first bytes, ``first``, were already read) for ``app``.

    ``app.connection_made`` is called with the TLS transport after the handshake, and then
    ``on_settled``; if the handshake fails or the connection ends first, only ``on_settled``
    (so the app tells the two apart by whether it was introduced).
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = sslproto.SSLProtocol(
        loop,
        app,
        context,
        waiter,
        server_side=True,
        call_connection_made=True,
        ssl_handshake_timeout=None if handshake_timeout is None else max(1, math.ceil(handshake_timeout)),
        ssl_shutdown_timeout=SHUTDOWN_S,
    )

    def settled(future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: a failed handshake is the client's problem, not a loop error
        on_settled()

    waiter.add_done_callback(settled)
    transport.set_protocol(tls)
    tls.connection_made(transport)
    view = memoryview(first)
    while view:
        buffer = tls.get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        view = view[size:]
        tls.buffer_updated(size)
