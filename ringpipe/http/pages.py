"""Reserved pages served by Starlette: ``/``, ``/noscript``, ``/help``, ``/version``, health, metrics.

What the pages say is in ``core.page_texts``; this module picks it per request and sets the
headers piping-server 1.12.9 sets (its exact Content-Type values, CORS only where it has
it), plus ``/noscript``'s Content-Security-Policy with a fresh nonce per response. HEAD gets
the same headers and no body (uvicorn drops the body of a HEAD response).

Health (SPEC Part 3): ``/healthz`` answers ``ok`` whenever this process serves HTTP at all
(liveness). ``/readyz`` answers ``ready`` only when the supervisor's fleet file lists a live,
ready worker in every slot and every worker's control socket answers with the ``Hello`` of
the pid the supervisor lists (the mesh that rendezvous traffic crosses is whole); otherwise
503 with one line per missing part, e.g. ``worker 1 (pid 4242): starting``.
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
from ringpipe.core import control_frames
from ringpipe.core.errors import ControlProtocolError
from ringpipe.core.page_texts import help_text, index_html, noscript_csp, noscript_html
from ringpipe.mesh.control import socket_path
from ringpipe.ops.fleet import read_fleet
from ringpipe.ops.metrics import metrics_endpoint

__all__ = ["base_url", "build_pages", "readiness_problems"]

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


#: How long /readyz waits for one worker's control socket to say Hello.
HELLO_TIMEOUT_S = 1.0


async def _hello_pid(path: Path) -> int | None:
    """The pid in the ``Hello`` a worker's control listener sends on connect; None if it
    does not answer (not listening, or too slow). We send nothing and hang up: a peer that
    never said Hello is no party of the mesh, so the worker forgets the connection."""
    with anyio.move_on_after(HELLO_TIMEOUT_S):
        try:
            stream = await anyio.connect_unix(path)
        except OSError:
            return None
        async with stream:
            buffer = bytearray()
            while True:
                try:
                    buffer += await stream.receive()
                    frames, _used = control_frames.decode(buffer)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, ControlProtocolError):
                    return None
                if frames:
                    hello = frames[0]
                    return hello.pid if isinstance(hello, control_frames.Hello) else None
    return None


async def readiness_problems(runtime_dir: Path, workers: int) -> list[str]:
    """What keeps the server from being ready; empty when it is ready."""
    fleet = read_fleet(runtime_dir)
    if fleet is None:
        return ["supervisor: no fleet state yet"]
    if fleet.stopping:
        return ["supervisor: shutting down"]
    answered: dict[int, int | None] = {}

    async def probe(slot: int) -> None:
        answered[slot] = await _hello_pid(socket_path(runtime_dir, slot))

    async with anyio.create_task_group() as tg:  # all at once: a stuck worker costs 1 s, not 1 s each
        for slot in fleet.ready:
            tg.start_soon(probe, slot)
    problems = []
    for slot in range(workers):
        pid = fleet.workers.get(slot)
        if pid is None:
            problems.append(f"worker {slot}: not running")
        elif slot not in fleet.ready:
            problems.append(f"worker {slot} (pid {pid}): starting")
        elif answered.get(slot) != pid:
            problems.append(f"control mesh: worker {slot} (pid {pid}) does not answer")
    return problems


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

    async def metrics(request: Request) -> Response:
        return await metrics_endpoint(request, runtime_dir)

    async def readyz(request: Request) -> Response:
        problems = [] if runtime_dir is None else await readiness_problems(runtime_dir, workers)
        if problems:
            return PlainTextResponse("not ready\n" + "".join(f"{p}\n" for p in problems), status_code=503)
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
            Route("/metrics", metrics, methods=methods),
        ]
    )
