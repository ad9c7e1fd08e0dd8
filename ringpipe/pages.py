"""Reserved pages served by Starlette: ``/``, ``/help``, ``/version``, health, metrics.

The full browser pages of SPEC 1.4 (send form with progress, ``/noscript``, watch view)
are tracked in their own issue; until then ``/noscript`` stays reserved (never a pipe) and
answers 404.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from ringpipe import __version__
from ringpipe.control import socket_path
from ringpipe.metrics import metrics_endpoint

__all__ = ["build_pages", "help_text"]


def base_url(request: Request) -> str:
    forwarded = request.headers.get("x-forwarded-proto", "")
    scheme = "https" if "https" in forwarded or request.url.scheme == "https" else "http"
    return f"{scheme}://{request.headers.get('host', 'hostname')}"


def help_text(url: str) -> str:
    return f"""Help for ringpipe {__version__}
(Repository: https://github.com/ringpipe/ringpipe)

======= Get  =======
curl {url}/mypath

======= Send =======
# Send a file
curl -T myfile {url}/mypath

# Send a text
echo 'hello!' | curl -T - {url}/mypath

# Send a directory (zip)
zip -q -r - ./mydir | curl -T - {url}/mypath

# Send a directory (tar.gz)
tar zfcp - ./mydir | curl -T - {url}/mypath

# Encryption
## Send
cat myfile | openssl aes-256-cbc | curl -T - {url}/mypath
## Get
curl {url}/mypath | openssl aes-256-cbc -d

======= Many receivers =======
curl -T myfile '{url}/mypath?n=3'   # and three times: curl '{url}/mypath?n=3'

======= Reference =======
You can use any path, e.g. /mypath, /mypath123, /mydir/mypath
Whoever comes first waits; bytes flow live with backpressure; nothing is stored.
"""


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
        url = base_url(request)
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>ringpipe</title><h1>ringpipe {__version__}</h1>"
            "<p>Stream bytes from one sender to many receivers over plain HTTP.</p>"
            f"<pre>echo hello | curl -T - {url}/mypath\ncurl {url}/mypath</pre>"
            "<p><a href=/help>Command-line help</a></p></html>"
        )
        return HTMLResponse(body)

    async def help_page(request: Request) -> Response:
        return PlainTextResponse(help_text(base_url(request)), headers={"access-control-allow-origin": "*"})

    async def version(request: Request) -> Response:
        return PlainTextResponse(__version__ + "\n", headers={"access-control-allow-origin": "*"})

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
            Route("/noscript", not_found, methods=methods),
            Route("/healthz", healthz, methods=methods),
            Route("/readyz", readyz, methods=methods),
            Route("/metrics", metrics_endpoint, methods=methods),
        ]
    )
