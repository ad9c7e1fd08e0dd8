"""Reserved pages served by Starlette: ``/``, ``/noscript``, ``/help``, ``/version``, health, metrics.

What the pages say is in ``webpages.py``; this module picks it per request and sets the
headers piping-server 1.12.9 sets (its exact Content-Type values, CORS only where it has
it), plus ``/noscript``'s Content-Security-Policy with a fresh nonce per response. HEAD gets
the same headers and no body (uvicorn drops the body of a HEAD response).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ringpipe import __version__
from ringpipe.control import socket_path
from ringpipe.metrics import metrics_endpoint
from ringpipe.webpages import help_text, index_html, noscript_csp, noscript_html

__all__ = ["base_url", "build_pages", "help_text"]

HTML = "text/html"
TEXT = "text/plain"


def base_url(request: Request) -> str:
    """``scheme://host`` as the client sees us: https when served over TLS or when
    ``X-Forwarded-Proto`` mentions https (a TLS-terminating proxy); the Host header as sent."""
    forwarded = request.headers.get("x-forwarded-proto", "")
    scheme = "https" if "https" in forwarded or request.url.scheme == "https" else "http"
    return f"{scheme}://{request.headers.get('host', 'hostname')}"


def _page(body: str, content_type: str, headers: dict[str, str] | None = None) -> Response:
    """Exactly ``Content-Type: <content_type>`` (Starlette would append a charset)."""
    return Response(body.encode(), headers={"content-type": content_type, **(headers or {})})


def new_nonce() -> str:
    """128 random bits, base64: a CSP nonce nobody can guess, fresh for every response."""
    return base64.b64encode(secrets.token_bytes(16)).decode()


async def _answers(path: Path) -> bool:
    """True when a worker's control listener accepts a connection (it is up and meshed)."""
    with anyio.move_on_after(1.0):
        try:
            stream = await anyio.connect_unix(path)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


def build_pages(runtime_dir: Path | None, workers: int) -> Starlette:
    async def index(request: Request) -> Response:
        return _page(index_html(), HTML)

    async def noscript(request: Request) -> Response:
        nonce = new_nonce()
        body = noscript_html(
            path=request.query_params.get("path", ""),
            mode=request.query_params.get("mode", "file"),
            nonce=nonce,
            base_url=base_url(request),
        )
        return _page(body, HTML, {"content-security-policy": noscript_csp(nonce)})

    async def help_page(request: Request) -> Response:
        return _page(help_text(base_url(request)), TEXT, {"access-control-allow-origin": "*"})

    async def version(request: Request) -> Response:
        return _page(__version__ + "\n", TEXT, {"access-control-allow-origin": "*"})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def not_found(request: Request) -> Response:
        return Response(status_code=404, headers={"content-length": "0"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if runtime_dir is None:
            return PlainTextResponse("ready\n")
        missing = [i for i in range(workers) if not await _answers(socket_path(runtime_dir, i))]
        if missing:
            return PlainTextResponse(f"not ready: workers {missing} are starting\n", status_code=503)
        return PlainTextResponse("ready\n")

    methods = ["GET", "HEAD"]
    return Starlette(
        routes=[
            Route("/", index, methods=methods),
            Route("/help", help_page, methods=methods),
            Route("/version", version, methods=methods),
            Route("/favicon.ico", favicon, methods=methods),
            Route("/robots.txt", not_found, methods=methods),
            Route("/noscript", noscript, methods=methods),
            Route("/healthz", healthz, methods=methods),
            Route("/readyz", readyz, methods=methods),
            Route("/metrics", metrics_endpoint, methods=methods),
        ]
    )
