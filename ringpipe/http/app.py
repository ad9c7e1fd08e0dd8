"""The ASGI application of one worker: the access gate, then a reserved page or the pipe edge.

Every request first passes the gate (``access.py``), decided from method, path, query and
headers alone, before anything registers on a pipe; a refused request is answered 401/403
in the rejection form and never reaches a handler. WebSocket upgrades are gated the same way
and refused before the handshake is accepted. The CORS policy (``cors.py``) is applied here
too, to every response start, so every handler can keep writing the piping-compatible
``Access-Control-Allow-Origin: *`` and an allowlist still answers per request Origin.

Dispatch then follows piping-server's order: GET/HEAD on a reserved path → page; POST/PUT on
a reserved path → 400; POST/PUT → sender; GET → receiver (any framing; a WebSocket upgrade
too); OPTIONS → CORS preflight; DELETE → cancel (SPEC 2.3); HEAD on a pipe → its status
(SPEC 2.6); anything else → 405 with ``Allow``.

In the default configuration (no access control, ``--cors-origins '*'``) the gate costs two
attribute reads per request and nothing per byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ringpipe.core.access import AccessPolicy, Deny
from ringpipe.core.cors import CorsPolicy
from ringpipe.core.paths import RESERVED_PATHS, normalize_path
from ringpipe.http.endpoints import PipeEndpoints
from ringpipe.http.request_params import raw_header
from ringpipe.http.responses import reject
from ringpipe.http.websocket import refuse_websocket
from ringpipe.ops import metrics

__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "CORS_METHODS", "RingpipeApp"]

log = logging.getLogger("ringpipe.app")

#: Every method we accept: the ``Allow`` of a 405 and what a preflight allows (SPEC 1.4
#: item 13); DELETE cancels a pipe (SPEC 2.3).
ALLOWED_METHODS: Final = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
CORS_METHODS: Final = ALLOWED_METHODS
ALLOWED_HEADERS: Final = "Content-Type, Content-Disposition, X-Piping, Authorization, Last-Event-ID, Ringpipe-Read-Key"
WWW_AUTHENTICATE: Final = b'Bearer realm="ringpipe"'
#: A closing WebSocket handshake that the server cannot answer with an HTTP status: policy violation.
WS_POLICY_VIOLATION: Final = 1008


class RingpipeApp:
    """Raw ASGI entry point. ``access`` may be swapped whole at any time (SIGHUP reload)."""

    def __init__(
        self,
        endpoints: PipeEndpoints,
        pages: ASGIApp,
        access: AccessPolicy | None = None,
        cors: CorsPolicy | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.pages = pages
        self.access = access or AccessPolicy((), None)
        self.cors = cors or CorsPolicy(None)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The request's handler, to await: the dispatch is done here, in the caller's frame,
        and returns the handler's own coroutine. A coroutine of ours around it would live as
        long as the request (~0.3 KiB under every held stream) and hold its scope."""
        kind = scope["type"]
        if kind == "websocket":
            return self._websocket(scope, receive, send)
        if kind != "http":
            return _nothing()
        path = normalize_path(scope.get("raw_path") or scope["path"].encode("latin-1"))
        method = scope["method"]
        if self.cors.origins is not None:
            send = self._cors_send(send, raw_header(scope, b"origin"))
        if self.access.enabled:
            return self._gated(scope, receive, send, method, path)
        return self._route(scope, receive, send, method, path)

    def _route(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> Awaitable[None]:
        """The handler of an admitted request, by method and path."""
        if path in RESERVED_PATHS and method in ("GET", "HEAD"):
            # Route on the resolved path: /./help and /x/../help are /help, as in the reference.
            return self.pages({**scope, "path": path, "raw_path": path.encode("latin-1")}, receive, send)
        if method in ("POST", "PUT"):
            if path in RESERVED_PATHS:
                return reject(send, 400, f"Cannot send to the reserved path '{path}'. (e.g. '/mypath123')", close=True)
            return self.endpoints.sender(scope, receive, send, path)
        if method == "GET":
            return self.endpoints.receiver(scope, receive, send, path)
        if method == "DELETE" and path not in RESERVED_PATHS:
            return self.endpoints.cancel(scope, receive, send, path)
        if method == "HEAD" and path not in RESERVED_PATHS:
            return self.endpoints.status(scope, receive, send, path)
        if method == "OPTIONS":
            return self._preflight(scope, send)
        return self._not_allowed(scope, send)

    async def _gated(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> None:
        """The request's handler once the access gate admits it (else the gate's answer)."""
        if await self._admitted(scope, send, method, path):
            await self._route(scope, receive, send, method, path)

    # -- the gate --

    def _verdict(self, scope: Scope, method: str, path: str) -> Deny | None:
        authorization = raw_header(scope, b"authorization")
        verdict = self.access.decide(
            method,
            path,
            scope["query_string"],
            None if authorization is None else authorization.decode("latin-1"),
            time.time(),
        )
        return verdict if isinstance(verdict, Deny) else None

    async def _admitted(self, scope: Scope, send: Send, method: str, path: str) -> bool:
        denial = self._verdict(scope, method, path)
        if denial is None:
            return True
        self._log_denial(denial, method, path)
        body = f"[ERROR] {denial.message}\n".encode()
        headers = [
            (b"content-type", b"text/plain"),
            (b"access-control-allow-origin", b"*"),
            (b"content-length", str(len(body)).encode()),
        ]
        if denial.status == 401:
            headers.append((b"www-authenticate", WWW_AUTHENTICATE))
        if method in ("POST", "PUT"):
            headers.append((b"connection", b"close"))  # the upload is never read
        metrics.REJECTIONS.labels(code=str(denial.status)).inc()
        await send({"type": "http.response.start", "status": denial.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        return False

    @staticmethod
    def _log_denial(denial: Deny, method: str, path: str) -> None:
        log.info(
            "access denied",
            extra={
                "event": "denied",
                "status": denial.status,
                "reason": denial.message,
                "method": method,
                "path": path,
                "credential": denial.who,
            },
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gate a WebSocket upgrade (a receiver or watcher): refuse before accepting it.

        Refused upgrades get a real HTTP 401/403 in the rejection form where the server
        supports the ASGI ``websocket.http.response`` extension, else a handshake close
        (which uvicorn answers with 403). An admitted upgrade is a receiver or watcher
        (``websocket.py``); one on a reserved path is refused with 400.
        """
        path = normalize_path(scope.get("raw_path") or scope["path"].encode("latin-1"))
        denial: Deny | None = None
        origin = raw_header(scope, b"origin")
        if origin is not None and self.cors.origins is not None and self.cors.allow_origin(origin) is None:
            denial = Deny(403, "Origin not allowed.")
        elif self.access.enabled:
            denial = self._verdict(scope, "GET", path)
        if denial is not None:
            self._log_denial(denial, "WEBSOCKET", path)
            metrics.REJECTIONS.labels(code=str(denial.status)).inc()
        if denial is None:
            if path in RESERVED_PATHS:
                await refuse_websocket(receive, send, 400, f"Cannot receive from the reserved path '{path}'.")
            else:
                await self.endpoints.receiver(scope, receive, send, path)
            return
        if denial is not None and "websocket.http.response" in scope.get("extensions", {}):
            body = f"[ERROR] {denial.message}\n".encode()
            headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
            if self.cors.origins is None:
                headers.append((b"access-control-allow-origin", b"*"))  # the rejection form
            if denial.status == 401:
                headers.append((b"www-authenticate", WWW_AUTHENTICATE))
            await send({"type": "websocket.http.response.start", "status": denial.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})

    # -- CORS --

    def _cors_send(self, send: Send, origin: bytes | None) -> Send:
        """``send`` with this request's answer to the allowlist applied to its response start."""
        cors = self.cors

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": cors.rewrite(list(message.get("headers", ())), origin)}
            await send(message)

        return send_with_cors

    async def _preflight(self, scope: Scope, send: Send) -> None:
        origin = raw_header(scope, b"origin")
        if origin is not None and self.cors.allow_origin(origin) is None:
            log.info("preflight from a disallowed origin", extra={"origin": origin.decode("latin-1")})
            await reject(send, 403, "Origin not allowed.")
            return
        headers = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", CORS_METHODS.encode()),
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


async def _nothing() -> None:
    """The handler of a scope type we do not serve (``lifespan``): it returns at once."""
