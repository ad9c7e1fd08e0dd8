"""uvicorn's httptools protocol made lean: the same behaviour, less set-up per connection.

uvicorn's ``HttpToolsProtocol`` builds, per connection, some thirty attributes in a dict
(sized for growth: ~1.6 KiB), fifteen of which hold the same object on every connection of
a worker (its config, loop, loggers...), an ``asyncio.Event`` per request and per
connection (a ~760-byte deque each, up front), a deque for pipelined requests, a
``TimerHandle`` per idle keep-alive connection, and a dict per response cycle. A waiting
receiver holds all of it for as long as it waits, and a busy worker builds and frees it
thousands of times a second. ``LeanHttpToolsProtocol`` keeps:

- the worker-wide attributes on the class (set by the first connection, ``_share``), the
  rest in slots, at the values uvicorn gives them;
- the parser made with the first bytes fed, and the addresses read from the transport
  with the first request (a connection handed to another worker before one makes
  neither);
- one ``Flow`` and one ``Cycle`` per connection and request: uvicorn's classes with slots
  and a ``Flag`` for their event (``cycle.py``);
- the keep-alive deadline in the worker's ``limits.Deadlines`` (one loop timer per tick);
- uvicorn's request start (``_start_request``) and response end (``on_response_complete``),
  done the same way, in one frame each;
- the app's own coroutine as the request's task, where uvicorn wraps it in ``run_asgi``, a
  coroutine more for the request's whole life (~0.25 KiB under every held stream): its
  epilogue (the log line, a 500 or a close for an app that failed or broke its response)
  runs from the task's done-callback instead (``Cycle.app_ended``);
- a lost connection marks the request that runs, not only the last one parsed (with a
  pipelined request queued, uvicorn's left the running app to "forget" its answer).

The parser callbacks that ringpipe extends are left to ``protocol.RingpipeHttpProtocol``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import httptools
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ringpipe.http.cycle import Cycle, Flow
from ringpipe.http.limits import Deadlines
from ringpipe.http.uvicorn_shims import Pipeline

if TYPE_CHECKING:
    from collections import deque

    from uvicorn._types import HTTPScope
    from uvicorn.config import Config
    from uvicorn.server import ServerState

__all__ = ["LeanHttpToolsProtocol"]

log = logging.getLogger("ringpipe.connection")

#: llhttp's lenient mode for data after ``Connection: close`` (httptools >= 0.6.2), as uvicorn sets it.
_LENIENT: Final = hasattr(httptools.HttpRequestParser, "set_dangerous_leniencies")
#: A connection's queue of pipelined requests until it has one (``Pipeline`` is made then).
_NONE_QUEUED: Final = cast("deque[tuple[RequestResponseCycle, Any]]", ())
#: The usual methods' names, one string each for all requests.
_METHODS: Final = {name.encode(): name for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
#: uvicorn's attributes that hold the same object on every connection of a worker: kept on
#: the protocol class (``_share``), not per connection.
_WORKER_WIDE: Final = (
    "_asgi",
    "_request_done",
    "access_log",
    "access_logger",
    "app",
    "app_state",
    "asgi_version",
    "config",
    "connections",
    "limit_concurrency",
    "logger",
    "loop",
    "root_path",
    "server_state",
    "tasks",
    "timeout_keep_alive",
    "ws_protocol_class",
)


class LeanHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol``, its per-connection state in slots (see the module)."""

    __slots__ = (
        "_keep_alive_in",
        "_running",
        "client",
        "cycle",
        "expect_100_continue",
        "flow",
        "headers",
        "parser",
        "pipeline",
        "scheme",
        "scope",
        "server",
        "timeout_keep_alive_task",
        "transport",
        "url",
    )

    #: What the ``_WORKER_WIDE`` attributes the class holds were made from: (config, server
    #: state, app state, loop); () until its first connection.
    _worker: ClassVar[tuple[object, ...]] = ()
    #: A scope's ``asgi`` entry (the ASGI version): the same on every request of a worker,
    #: so one dict serves them all (apps read it; none of ours writes it).
    _asgi: dict[str, str]
    #: The done-callback of every request task of the worker (``_request_done`` on its ``tasks``).
    _request_done: Callable[[asyncio.Task[None]], None]
    #: The last server address and client host seen (``_addresses``).
    _last_server: ClassVar[tuple[str, int] | None] = None
    _last_host: ClassVar[str | None] = None
    #: The keep-alive (and subclasses' other) deadlines of this class's connections, per event loop.
    _deadlines: ClassVar[Deadlines | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        loop = _loop or asyncio.get_event_loop()
        worker = self._worker
        if not (
            worker
            and worker[0] is config
            and worker[1] is server_state
            and worker[2] is app_state
            and worker[3] is loop
        ):
            self._share(config, server_state, app_state, loop)
        #: Made when the first bytes are fed (``_new_parser``).
        self.parser = cast("httptools.HttpRequestParser", None)
        self.transport = cast("asyncio.Transport", None)
        self.flow = cast("Flow", None)
        self.server = self.client = self.scheme = None
        self.pipeline = _NONE_QUEUED
        self.scope = cast("HTTPScope", None)
        self.headers = cast("list[tuple[bytes, bytes]]", None)
        self.cycle = cast("RequestResponseCycle", None)
        self.url = b""
        self.expect_100_continue = False
        self.timeout_keep_alive_task = None  # uvicorn's; the deadline is ``_keep_alive_in``
        #: The ``Deadlines`` bucket of this idle connection's keep-alive deadline; None: none.
        self._keep_alive_in: set[Callable[[], None]] | None = None
        #: The request whose app runs now (uvicorn runs a connection's requests one at a time).
        self._running: RequestResponseCycle | None = None

    def _share(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Set the ``_WORKER_WIDE`` attributes as uvicorn does: on the class for its first
        connection, on this connection alone if another server (another config or loop)
        uses the class too."""
        if not config.loaded:
            config.load()
        access_logger = logging.getLogger("uvicorn.access")
        values = {
            "access_log": access_logger.hasHandlers(),
            "access_logger": access_logger,
            "app": config.loaded_app,
            "app_state": app_state,
            "asgi_version": config.asgi_version,
            "config": config,
            "connections": server_state.connections,
            "limit_concurrency": config.limit_concurrency,
            "logger": logging.getLogger("uvicorn.error"),
            "loop": loop,
            "root_path": config.root_path,
            "server_state": server_state,
            "tasks": server_state.tasks,
            "_request_done": functools.partial(_request_done, server_state.tasks),
            "_asgi": {"version": config.asgi_version, "spec_version": "2.3"},
            "timeout_keep_alive": config.timeout_keep_alive,
            "ws_protocol_class": config.ws_protocol_class,
        }
        target: object = type(self) if "_worker" not in type(self).__dict__ else self
        for name in _WORKER_WIDE:
            setattr(target, name, values[name])
        setattr(target, "_worker", (config, server_state, app_state, loop))  # noqa: B010 - a ClassVar, or this one's

    def _new_parser(self) -> httptools.HttpRequestParser:
        """A parser for this connection, at the start of a request, as uvicorn makes it."""
        parser = self.parser = httptools.HttpRequestParser(self)
        if _LENIENT:  # answer the first of pipelined requests that follow a ``Connection: close``
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's asks the socket for both addresses (a Python socket object and system
        # calls per connection); uvloop's transport has them, read with the first request.
        self.connections.add(self)
        self.transport = transport
        self.flow = Flow(transport)
        self.server = self.client = self.scheme = None

    def _addresses(self) -> None:
        """Fill ``server``, ``client`` and ``scheme`` from the transport.

        Every connection of a listening address has the same server address, and most
        clients share a host: the first such tuple and host string are kept for the class
        and given to the next connections that have equal ones (a request scope holds both
        for as long as the request runs)."""
        transport = self.transport
        server = _address(transport.get_extra_info("sockname"))
        if server is not None:
            if server == self._last_server:
                server = self._last_server
            else:
                type(self)._last_server = server
        self.server = server
        client = _address(transport.get_extra_info("peername"))
        if client is not None:
            if client[0] == self._last_host:
                client = (self._last_host, client[1])
            else:
                type(self)._last_host = client[0]
        self.client = client
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"

    def _peer(self) -> str | None:
        """The client's address, for a log line."""
        if self.scheme is None and self.transport is not None:
            self._addresses()
        client = self.client
        return None if client is None else f"{client[0]}:{client[1]}"

    def _family(self) -> int:
        """The socket's address family, told by the form of its address (2-tuple: IPv4)."""
        sockname = self.transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            return socket.AF_INET if len(sockname) == 2 else socket.AF_INET6
        return 0

    def _keep_paused(self) -> None:
        if self.flow.read_paused and not self.transport.is_closing():
            self.transport.pause_reading()

    def shutdown(self) -> None:
        """Drain (uvicorn calls it on each connection at SIGTERM): never raises, so one broken
        connection cannot stop the drain of the others; it is cut instead."""
        try:
            super().shutdown()
        except Exception:
            log.exception("a connection failed to shut down; cut it", extra={"client": self._peer()})
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        running = self._running
        if running is not None and not running.response_complete:
            # uvicorn marks only the last request parsed, which is not the one running when
            # a pipelined request is queued: the running app would then "forget" to answer
            # and uvicorn would try a 500 on the closed transport.
            running.disconnected = True
            running.message_event.set()
        self.connections.discard(self)
        if self.logger.isEnabledFor(TRACE_LOG_LEVEL):
            self.logger.log(TRACE_LOG_LEVEL, "%s - HTTP connection lost", self._peer())
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self._unset_keepalive_if_required()  # also after an error: the deadline would only keep this alive
        self.parser = cast("httptools.HttpRequestParser", None)

    def _deadline(self, delay: float, callback: Callable[[], None]) -> set[Callable[[], None]]:
        """Call ``callback`` in ``delay`` seconds (to ``Deadlines``' tick); returns its bucket."""
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not self.loop:
            deadlines = type(self)._deadlines = Deadlines(self.loop)
        return deadlines.add(delay, callback)

    def _unset_keepalive_if_required(self) -> None:
        if self._keep_alive_in is not None:
            self._keep_alive_in.discard(self.timeout_keep_alive_handler)
            self._keep_alive_in = None

    def on_message_begin(self) -> None:
        """A request begins: uvicorn's scope."""
        self.url = b""
        self.expect_100_continue = False
        if self.scheme is None:
            self._addresses()
        self.headers = headers = cast("list[tuple[bytes, bytes]]", [])
        # Made whole at once (the keys the head's end fills in are there already, and
        # ``extensions`` for a subclass to fill): one table, not a resize per request.
        self.scope = cast(
            "HTTPScope",
            {
                "type": "http",
                "asgi": self._asgi,
                "http_version": "1.1",
                "server": self.server,
                "client": self.client,
                "scheme": self.scheme,
                "root_path": self.root_path,
                "headers": headers,
                "state": self.app_state.copy(),
                "extensions": {},
                "method": None,
                "path": None,
                "raw_path": None,
                "query_string": None,
            },
        )

    def _start_request(self) -> None:
        """uvicorn's end of a request head: the scope's method, version, path and query, a
        response cycle, and its app started, or queued behind the request still being
        answered. Nothing for a WebSocket upgrade (the data callback hands it over)."""
        parser = self.parser
        scope = cast("dict[str, Any]", self.scope)
        http_version = parser.get_http_version()
        method = parser.get_method()
        scope["method"] = _METHODS.get(method) or method.decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        scope["path"] = root + path if root else path
        scope["raw_path"] = root.encode("ascii") + raw_path if root else raw_path
        scope["query_string"] = url.query or b""
        limit = self.limit_concurrency
        app = self.app
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        previous = self.cycle
        cycle = self.cycle = Cycle(
            scope,
            self.transport,
            self.flow,
            self.logger,
            self.access_logger,
            self.access_log,
            self.server_state.default_headers,
            self.expect_100_continue,
            http_version != "1.0" and parser.should_keep_alive(),
            self.on_response_complete,
        )
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: it starts once the response before it is complete
            self.flow.pause_reading()
            if not self.pipeline:  # uvicorn's deque allocates ~760 bytes up front: a list
                self.pipeline = cast("deque[tuple[RequestResponseCycle, Any]]", Pipeline())
            self.pipeline.appendleft((cycle, app))

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Run the app for ``cycle``: its coroutine is the request's task (see the module)."""
        self._running = cycle
        try:
            handler = app(cycle.scope, cycle.receive, cycle.send)
            if not isinstance(handler, Coroutine):
                handler = _awaiting(handler)
        except BaseException as exc:  # in uvicorn's ``run_asgi`` the call fails inside the task: so here
            handler = _raising(exc)
        # uvicorn's opt-in ``reset_contextvars``: each request in a fresh context.
        context = contextvars.Context() if self.config.reset_contextvars else None
        task = _RequestTask(handler, loop=self.loop, context=context, name=_TASK_NAME)
        task.cycle = cast("Cycle", cycle)
        task.add_done_callback(self._request_done, context=_DONE_CONTEXT)
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        """The response is sent: start the next pipelined request, or wait for one (closed
        after ``timeout_keep_alive``)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._keep_alive_in = self._deadline(self.timeout_keep_alive, self.timeout_keep_alive_handler)


def _address(info: object) -> tuple[str, int] | None:
    """A TCP transport's ``sockname``/``peername`` as uvicorn's scope has it: (host, port);
    an IPv6 address's flow info and scope id are left out."""
    if type(info) is tuple and len(info) == 2 and type(info[0]) is str and type(info[1]) is int:
        return info  # already that (uvloop's IPv4 form)
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


class _RequestTask(asyncio.Task[None]):
    """A request's task, running the app's coroutine; ``cycle`` is its request's, for the
    epilogue (``_request_done``), then None."""

    __slots__ = ("cycle",)

    cycle: Cycle | None


#: The name of every request task: one string for all (asyncio formats a fresh ``Task-N`` per task).
_TASK_NAME: Final = "ringpipe-request"
#: The context request tasks' done-callbacks run in (they read no context variable): one for
#: all, where ``add_done_callback`` would copy the caller's for each task.
_DONE_CONTEXT: Final = contextvars.Context()


def _request_done(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    """A request's task ended: the server forgets it, and its cycle runs uvicorn's epilogue;
    a 500 that epilogue owes goes out from a task of its own (it may wait for the transport)."""
    tasks.discard(task)
    cycle = cast("_RequestTask", task).cycle
    if cycle is None:
        return
    cast("_RequestTask", task).cycle = None
    answer = cycle.app_ended(task)
    if answer is not None:
        follow = task.get_loop().create_task(answer)
        tasks.add(follow)
        follow.add_done_callback(tasks.discard)


async def _awaiting(handler: Awaitable[None]) -> None:
    """An app's awaitable that is not a coroutine, as one (a task runs coroutines only)."""
    return await handler


async def _raising(exc: BaseException) -> None:
    """The task of an app whose call itself failed: it fails the same way."""
    raise exc
