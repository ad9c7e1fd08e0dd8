"""A worker process: logs, control mesh, ASGI app and uvicorn on the inherited socket.

Entered from ``supervisor.py`` right after ``fork()``, with the supervisor's listening
socket. Exit codes are part of the supervisor protocol: 0 after a drain, ``BOOT_ERROR`` (3)
if the worker never became ready, so the supervisor does not fork in a loop.

SIGHUP re-reads the tokens file (``--tokens-file``) and swaps the gate's token table whole;
a file that cannot be read or parsed keeps the tokens in use and logs an error.

Draining (SIGTERM/SIGINT, or the supervisor vanished): uvicorn stops accepting and lets
running responses finish; ``WorkerPipes`` turns away waiting parties on the paths this
worker owns; then the worker stays up while it still *owns* live relays, because parties on
other workers still talk to it, until the grace period ends. Only then does the mesh close
and the worker unlink its rings.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Generator
from email.utils import formatdate
from pathlib import Path
from typing import Final

import anyio
import uvicorn
from uvicorn.server import ServerState

from ringpipe.core.access import TokenFileError, load_tokens, policy_from_settings
from ringpipe.core.config import Settings
from ringpipe.core.cors import CorsPolicy
from ringpipe.http.app import RingpipeApp
from ringpipe.http.endpoints import PipeEndpoints
from ringpipe.http.limits import EdgeLimits
from ringpipe.http.pages import build_pages
from ringpipe.http.protocol import RingpipeHttpProtocol
from ringpipe.http.websocket import HandshakeLogFilter, WebSocketProtocol
from ringpipe.mesh.handoff import Handoff, HandoffChannel, handoff_targeting
from ringpipe.mesh.worker_pipes import WorkerPipes
from ringpipe.ops import metrics
from ringpipe.ops.fleet import BOOT_ERROR
from ringpipe.ops.logs import register_secrets, setup_logging

__all__ = ["run_worker"]

log = logging.getLogger("ringpipe.worker")
#: gc's first-generation threshold in a worker (see ``run_worker``).
GC_YOUNG_THRESHOLD: Final = 50_000

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
#: uvicorn's own logger: the shutdown's lines read as they always have.
_uvicorn_log = logging.getLogger("uvicorn.error")
#: How often a draining worker looks whether its last connections and request tasks are gone.
_DRAIN_POLL_S: Final = 0.01


class _DatedServerState(ServerState):
    """uvicorn's server state whose ``default_headers`` (the Date header, then the config's
    own) are made when read in a new second, instead of by a tick of the main loop.

    Every response head, uvicorn's and ringpipe's, reads ``default_headers`` from here; the
    Date it carries is the current second's (uvicorn's tick left it up to a second behind).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._config = config
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []
        super().__init__()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        if second != self._second:
            config = self._config
            date = [(b"date", formatdate(second, usegmt=True).encode())] if config.date_header else []
            self._headers = date + config.encoded_headers
            self._second = second
        return self._headers

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        """uvicorn's ``ServerState()`` sets ``[]`` (and ``on_tick`` would set the day's); the
        getter makes them."""


class _WorkerServer(uvicorn.Server):
    """uvicorn's server with ringpipe's signal handling: drain, and never re-raise the signal."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.server_state = _DatedServerState(config)
        self._on_stop = on_stop
        self._exit_requested: asyncio.Event | None = None

    def request_exit(self) -> None:
        """Stop accepting and shut down (uvicorn's ``should_exit``), without waiting for a tick."""
        self.should_exit = True
        if self._exit_requested is not None:
            self._exit_requested.set()

    async def main_loop(self) -> None:
        """uvicorn's loop without its tick: wait for ``request_exit``, and nothing else.

        uvicorn wakes every 0.1 s to poll ``should_exit`` and, each second, to refresh the
        Date header. Here the exit is an event and the header is made when a response asks
        for it (``_DatedServerState``), so an idle worker sleeps until a client, a peer or a
        signal wakes it: on this project's VMs each wake-up of an idle process costs ~0.3 ms
        of CPU, and the old 1 s tick (with the supervisor's) kept an idle server at 0.3-0.9 % of a core.
        """
        self._exit_requested = asyncio.Event()
        if not self.should_exit:
            await self._exit_requested.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown (0.55) without its fixed pauses: it sleeps 0.1 s after asking every
        connection to shut down and then polls them every 0.1 s; here the wait is polled every
        ``_DRAIN_POLL_S`` and ends as soon as the last connection and task are gone. An idle
        worker drains in a few ms instead of ~0.15 s (a restart, a rolling deploy, and each of
        the test suite's few hundred server stops). The rest is uvicorn's: stop accepting, ask
        each connection to finish its response, cancel what is left at
        ``timeout_graceful_shutdown``, run the lifespan's shutdown."""
        _uvicorn_log.info("Shutting down")
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                await self._wait_open_work()
        except TimeoutError:
            _uvicorn_log.error(
                "Cancel %s running task(s), timeout graceful shutdown exceeded", len(self.server_state.tasks)
            )
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _wait_open_work(self) -> None:
        """Until every connection has closed and every request task has ended (or a forced exit)."""
        state = self.server_state
        if state.connections and not self.force_exit:
            _uvicorn_log.info("Waiting for connections to close. (CTRL+C to force quit)")
        while state.connections and not self.force_exit:
            await asyncio.sleep(_DRAIN_POLL_S)
        if state.tasks and not self.force_exit:
            _uvicorn_log.info("Waiting for background tasks to complete. (CTRL+C to force quit)")
        while state.tasks and not self.force_exit:
            await asyncio.sleep(_DRAIN_POLL_S)
        for server in self.servers:
            await server.wait_closed()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()

        def handle(sig: int, frame: object) -> None:
            loop.call_soon_threadsafe(self._on_stop)
            loop.call_soon_threadsafe(self.request_exit)

        previous = {sig: signal.signal(sig, handle) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _file_stamp(path: str | None) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten (inode, size, mtime), or None."""
    if not path:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def run_worker(
    settings: Settings,
    *,
    index: int,
    listener: socket.socket,
    runtime_dir: Path,
    supervisor_pid: int,
    ready_fd: int,
    lifeline_fd: int,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Serve until told to stop; returns the process exit code.

    ``lifeline_fd``: the read end of the supervisor's lifeline pipe (``supervisor.py``), whose
    EOF means the supervisor is gone.

    ``tls``: the supervisor's HTTPS context (``--ssl-certfile``); the protocol, not uvicorn,
    runs TLS, so that the same port can also take plain HTTP (``tls.py``).
    """
    setup_logging(settings.log_level, f"worker-{index}", settings.log_format)
    ready = False
    register_secrets([settings.signing_key] if settings.signing_key else [])
    file_at_boot = _file_stamp(settings.tokens_file)
    try:
        access = policy_from_settings(settings)
        cors = CorsPolicy.from_setting(settings.cors_origins)
    except ValueError as exc:  # TokenFileError too: never serve open when tokens were asked for
        log.error("worker %d cannot start: %s", index, exc)
        return BOOT_ERROR
    register_secrets(token.secret for token in access.tokens)

    logging.getLogger("uvicorn.error").addFilter(HandshakeLogFilter())  # WebSocket lines carry query secrets
    pipes = WorkerPipes(settings, index=index, supervisor_pid=supervisor_pid, runtime_dir=runtime_dir)
    endpoints = PipeEndpoints(pipes)
    app = RingpipeApp(endpoints, build_pages(runtime_dir, settings.workers), access, cors)

    def reload_tokens() -> None:
        """SIGHUP: re-read the tokens file; on any problem keep the tokens in use."""
        try:
            tokens = load_tokens(settings)
        except TokenFileError as exc:
            log.error(
                "tokens not reloaded, keeping the %d in use: %s",
                len(app.access.tokens),
                exc,
                extra={"event": "tokens_reload_failed", "worker": index},
            )
            return
        register_secrets(token.secret for token in tokens)
        app.access = app.access.with_tokens(tokens)
        log.info("tokens reloaded", extra={"event": "tokens_reloaded", "worker": index, "tokens": len(tokens)})

    adopted: set[asyncio.Task[object]] = set()
    serving: list[tuple[_WorkerServer, asyncio.AbstractEventLoop]] = []  # once ``main`` made the server

    def adopt(sock: socket.socket, data: bytes) -> None:
        """A peer handed us a connection (``handoff.py``): serve it as if we had accepted it.

        The loop's own coroutine is the task (no coroutine of ours around it), its protocol
        made here, before it: the factory only hands it over."""
        # The loop is named, not asked for: in 3.11 each ``asyncio.get_running_loop`` or
        # ``get_event_loop`` (a protocol's, without ``_loop``) is a getpid system call.
        server, loop = serving[0]
        made = protocol_class(
            config=config, server_state=server.server_state, app_state=server.lifespan.state, _loop=loop
        )
        made.adopting(data, sock.fileno())
        task: asyncio.Task[object] = loop.create_task(loop.connect_accepted_socket(lambda: made, sock))
        adopted.add(task)

        def settled(task: asyncio.Task[object]) -> None:
            adopted.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("could not serve a handed-off connection", exc_info=exc)
                sock.close()

        task.add_done_callback(settled)

    handoffs: HandoffChannel | None = None
    handoff: Handoff | None = None
    if settings.workers > 1 and settings.colocate_max_n > 0:
        handoffs = HandoffChannel(runtime_dir, index, adopt)
        target = handoff_targeting(index=index, workers=settings.workers, max_n=settings.colocate_max_n)
        handoff = Handoff(target=target, send=handoffs.send)

    protocol_class = RingpipeHttpProtocol.configured(EdgeLimits.from_settings(settings, tls), handoff)
    config = uvicorn.Config(
        app,
        http=protocol_class,
        # WebSocket receivers (websocket.py; uvicorn's websockets-sansio protocol, hardened): pings
        # every heartbeat, no compression (SPEC 2.7), small client messages (a receiver has nothing to say).
        ws=WebSocketProtocol,
        ws_ping_interval=settings.heartbeat or None,
        ws_ping_timeout=max(settings.heartbeat, 20.0) if settings.heartbeat else None,
        ws_per_message_deflate=False,
        ws_max_size=64 << 10,
        lifespan="off",
        interface="asgi3",  # RingpipeApp returns its handler's coroutine: not an ``async def`` to detect
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # /help reads X-Forwarded-Proto itself; one middleware less per request
        timeout_graceful_shutdown=int(settings.graceful_timeout) or None,
        timeout_keep_alive=30,
        backlog=2048,
    )

    async def main() -> None:
        nonlocal ready
        stopping = anyio.Event()

        stop_requested = asyncio.Event()

        def stop() -> None:
            if not stopping.is_set():
                log.info("draining", extra={"worker": index})
                stopping.set()
                if handoffs is not None:
                    handoffs.close()
                pipes.drain()

        async def stop_on_request() -> None:
            # The signal handler's callback runs outside any task, where anyio (used by the
            # mesh to send the drain's rejections) cannot run; the drain happens here instead.
            await stop_requested.wait()
            stop()

        server = _WorkerServer(config, stop_requested.set)
        serving.append((server, asyncio.get_running_loop()))
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_tokens)
        if _file_stamp(settings.tokens_file) != file_at_boot:
            reload_tokens()  # changed (and its SIGHUP ignored) between our first read and the handler
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(pipes.mesh.run)
                pipes.wakes.start()
                if handoffs is not None:
                    handoffs.start()
                tg.start_soon(stop_on_request)

                async def announce_ready() -> None:
                    nonlocal ready
                    while not server.started:
                        await anyio.sleep(0.005)
                    ready = True
                    metrics.open_process_files()
                    # Everything built so far (modules, app, uvicorn) lives as long as the
                    # worker: keep it out of the cyclic collector, whose full passes would
                    # otherwise walk it again and again while requests churn objects.
                    gc.freeze()
                    # Request-scoped objects (ASGI messages, scopes, frames) live for a transfer;
                    # with the default threshold (700) most survive a young collection and are
                    # scanned again in older generations. A larger first threshold lets plain
                    # reference counting free them first; cycles still get collected.
                    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
                    os.write(ready_fd, f"{index}\n".encode())

                async def watch_supervisor() -> None:
                    # The lifeline turns readable (EOF) when the supervisor is gone; nobody
                    # ever writes to it. No polling: an idle worker stays asleep.
                    gone = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    loop.add_reader(lifeline_fd, gone.set)
                    try:
                        await gone.wait()
                    finally:
                        loop.remove_reader(lifeline_fd)
                    log.error("supervisor %d is gone; draining", supervisor_pid)
                    server.request_exit()
                    stop()

                tg.start_soon(announce_ready)
                tg.start_soon(watch_supervisor)
                await server.serve(sockets=[listener])
                stop()
                deadline = time.monotonic() + settings.graceful_timeout
                while pipes.rendezvous.relays and time.monotonic() < deadline:
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        finally:
            if handoffs is not None:
                handoffs.close()
            endpoints.hangups.close()
            pipes.close()

    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop when installed
            runner.run(main())
    except Exception:
        log.exception("worker %d crashed", index)
        return 1 if ready else BOOT_ERROR
    return 0
