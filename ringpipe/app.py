"""The ASGI application of one worker: routes a request to a reserved page or the pipe edge.

Dispatch follows piping-server's order: GET/HEAD on a reserved path → page; POST/PUT on a
reserved path → 400; POST/PUT → sender; GET → receiver; OPTIONS → CORS preflight;
DELETE → cancel (SPEC 2.3); HEAD on a pipe → its status (SPEC 2.6); anything else → 405
with ``Allow``.
"""

from __future__ import annotations

import logging
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from ringpipe.edge import PipeEndpoints, reject
from ringpipe.paths import RESERVED_PATHS, normalize_path
from ringpipe.websocket import refuse_websocket

__all__ = ["ALLOWED_METHODS", "RingpipeApp"]

log = logging.getLogger("ringpipe.app")

ALLOWED_METHODS: Final = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS: Final = "Content-Type, Content-Disposition, X-Piping"


class RingpipeApp:
    """Raw ASGI entry point."""

    def __init__(self, endpoints: PipeEndpoints, pages: ASGIApp) -> None:
        self.endpoints = endpoints
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # a WebSocket receiver (SPEC 2.1), never a page
            path = normalize_path(scope.get("raw_path") or scope["path"].encode("latin-1"))
            if path in RESERVED_PATHS:
                await refuse_websocket(receive, send, 400, f"Cannot receive from the reserved path '{path}'.")
            else:
                await self.endpoints.receiver(scope, receive, send, path)
            return
        if scope["type"] != "http":
            return
        path = normalize_path(scope.get("raw_path") or scope["path"].encode("latin-1"))
        method = scope["method"]
        if path in RESERVED_PATHS and method in ("GET", "HEAD"):
            # Route on the resolved path: /./help and /x/../help are /help, as in the reference.
            await self.pages({**scope, "path": path, "raw_path": path.encode("latin-1")}, receive, send)
        elif method in ("POST", "PUT"):
            if path in RESERVED_PATHS:
                await reject(send, 400, f"Cannot send to the reserved path '{path}'. (e.g. '/mypath123')", close=True)
            else:
                await self.endpoints.sender(scope, receive, send, path)
        elif method == "GET":
            await self.endpoints.receiver(scope, receive, send, path)
        elif method == "DELETE" and path not in RESERVED_PATHS:
            await self.endpoints.cancel(scope, receive, send, path)
        elif method == "HEAD" and path not in RESERVED_PATHS:
            await self.endpoints.status(scope, receive, send, path)
        elif method == "OPTIONS":
            await self._preflight(scope, send)
        else:
            await self._not_allowed(scope, send)

    async def _preflight(self, scope: Scope, send: Send) -> None:
        headers = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
        ]
        if (b"access-control-request-private-network", b"true") in scope["headers"]:
            headers.append((b"access-control-allow-private-network", b"true"))
        headers += [
            (b"access-control-expose-headers", b"Access-Control-Allow-Headers"),
            (b"access-control-max-age", b"86400"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _not_allowed(self, scope: Scope, send: Send) -> None:
        method = scope["method"]
        body = f"[ERROR] Unsupported method: {method}.\n".encode()
        headers = [
            (b"access-control-allow-origin", b"*"),
            (b"allow", ALLOWED_METHODS.encode()),
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
        ]
        log.info("unsupported method", extra={"method": method})
        await send({"type": "http.response.start", "status": 405, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
