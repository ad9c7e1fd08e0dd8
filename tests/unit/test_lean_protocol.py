"""The lean HTTP protocol keeps uvicorn's behaviour with less held per connection: a parser
only while it parses, no per-connection copies of worker-wide state, one frame per callback.

Driven with a recording transport: requests one after another on a keep-alive connection
are each served; after ``Connection: close`` what follows is not a request; a waiting
request holds no parser; connections of a worker share their class's worker-wide state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from ringpipe.http.connection import EXTENSION, Connection
from ringpipe.http.cycle import Cycle, Flow
from ringpipe.http.limits import EdgeLimits
from ringpipe.http.protocol import RingpipeHttpProtocol
from tests.support.fakes import RecordingTransport


class _App:
    """Answers each request with its path; a path ``/wait`` waits until released."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["path"] == "/wait":
            await self.release.wait()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def _serve(app: _App, state: ServerState) -> tuple[RingpipeHttpProtocol, RecordingTransport]:
    config = uvicorn.Config(app, lifespan="off", log_config=None, timeout_keep_alive=30)
    config.load()
    cls = RingpipeHttpProtocol.configured(EdgeLimits(header_timeout=0))
    protocol = cls(config=config, server_state=state, app_state={})
    transport = RecordingTransport(sockname=("127.0.0.1", 8080), peername=("127.0.0.1", 5555))
    protocol.connection_made(transport)
    return protocol, transport


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_keep_alive_requests_are_each_served_and_a_waiting_one_holds_no_parser() -> None:
    async def main() -> None:
        app = _App()
        protocol, transport = _serve(app, ServerState())
        protocol.data_received(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        await _settle()
        assert app.scopes[0]["path"] == "/wait" and transport.written == b""
        assert protocol.parser is None  # the request is complete: nothing left to parse
        scope = app.scopes[0]
        assert scope["method"] == "GET" and scope["query_string"] == b"" and scope["raw_path"] == b"/wait"
        assert scope["server"] == ("127.0.0.1", 8080) and scope["client"] == ("127.0.0.1", 5555)
        assert isinstance(scope["extensions"][EXTENSION], Connection)
        app.release.set()
        await _settle()
        protocol.data_received(b"GET /second?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await _settle()
        assert transport.written.count(b"HTTP/1.1 200 OK") == 2
        assert transport.written.endswith(b"/second")
        assert app.scopes[1]["query_string"] == b"x=1"
        protocol.connection_lost(None)

    asyncio.run(main())


def test_after_connection_close_what_follows_is_not_a_request() -> None:
    async def main() -> None:
        app = _App()
        protocol, transport = _serve(app, ServerState())
        protocol.data_received(b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        protocol.data_received(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        await _settle()
        assert [scope["path"] for scope in app.scopes] == ["/one"]
        assert transport.written.count(b"HTTP/1.1 200 OK") == 1 and transport.closing
        protocol.connection_lost(None)

    asyncio.run(main())


def test_connections_share_the_worker_wide_state_on_their_class() -> None:
    async def main() -> None:
        app, state = _App(), ServerState()
        first, _ = _serve(app, state)
        cls = type(first)
        config = first.config
        second = cls(config=config, server_state=state, app_state=first.app_state)
        assert "config" not in vars(second) and second.config is config and second.tasks is state.tasks
        other = cls(config=config, server_state=ServerState(), app_state={})  # another server: its own
        assert other.server_state is not state and "server_state" in vars(other)
        first.connection_lost(None)

    asyncio.run(main())


def test_an_app_that_fails_or_breaks_its_response_is_answered_as_uvicorn_does() -> None:
    """The app's coroutine is the request's task; its end gets uvicorn's ``run_asgi`` epilogue:
    a 500 where no response started, else a close, each logged; the request is forgotten."""

    async def app(scope: Any, receive: Any, send: Any) -> Any:
        path = scope["path"]
        if path == "/raise":
            raise ValueError("boom")
        if path in ("/none", "/value"):
            return 5 if path == "/value" else None
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        if path == "/late":
            raise ValueError("late")
        if path == "/ok":
            await send({"type": "http.response.body", "body": b"ok"})
        return None

    records: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Recorder()
    logging.getLogger("uvicorn.error").addHandler(handler)

    async def one(path: str) -> tuple[bytes, bool, ServerState]:
        state = ServerState()
        protocol, transport = _serve(app, state)  # type: ignore[arg-type]
        protocol.data_received(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await _settle()
        protocol.connection_lost(None)
        return transport.written, transport.closing, state

    try:
        answers = {path: asyncio.run(one(path)) for path in ("/ok", "/raise", "/none", "/value", "/half", "/late")}
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    five_hundred = b"HTTP/1.1 500 Internal Server Error\r\n"
    for path in ("/raise", "/none"):
        written, closing, state = answers[path]
        assert written.startswith(five_hundred) and written.endswith(b"\r\n\r\nInternal Server Error") and closing
        assert state.total_requests == 1
    for path in ("/value", "/half", "/late"):
        written, closing, state = answers[path]
        assert five_hundred not in written and closing and state.total_requests == 0
    written, _closing, state = answers["/ok"]
    assert written.endswith(b"\r\n\r\nok") and state.total_requests == 1 and not state.tasks
    logged = [(r.getMessage().strip(), r.exc_info[1].args if r.exc_info and r.exc_info[1] else None) for r in records]
    assert logged == [
        ("Exception in ASGI application", ("boom",)),
        ("ASGI callable returned without starting response.", None),
        ("ASGI callable should return None, but returned '5'.", None),
        ("ASGI callable returned without completing response.", None),
        ("Exception in ASGI application", ("late",)),
    ]


def test_trailers_after_a_head_the_connection_let_go_of_are_parsed() -> None:
    async def main() -> None:
        app = _App()
        protocol, transport = _serve(app, ServerState())
        body = b"1\r\na\r\n0\r\nX-Trailer: 1\r\n\r\n"
        protocol.data_received(b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        await _settle()
        protocol.data_received(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        await _settle()
        assert transport.written.count(b"HTTP/1.1 200 OK") == 2 and transport.written.endswith(b"/after")
        assert protocol.scope is None and protocol.headers is None  # a served request's head is not kept
        protocol.connection_lost(None)

    asyncio.run(main())


class _Written(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = b""

    def write(self, data: Any) -> None:
        self.data += bytes(data)

    def is_closing(self) -> bool:
        return False


def _cycle(cls: type, method: str, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> Any:
    transport = _Written()
    logger = logging.getLogger("test")
    if cls is Cycle:
        flow = Flow(transport)
        return Cycle(
            {"method": method}, transport, flow, logger, logger, False, default_headers, False, keep_alive, _none
        )
    return RequestResponseCycle(
        scope={"method": method},  # type: ignore[typeddict-item]
        transport=transport,
        flow=FlowControl(transport),
        logger=logger,
        access_logger=logger,
        access_log=False,
        default_headers=default_headers,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=_none,
    )


def _none() -> None:
    pass


_NAMES = [b"Content-Type", b"content-length", b"Transfer-Encoding", b"Connection", b"x-a", b"bad name", b"X-A"]
_VALUES = [b"text/plain", b"12", b"chunked", b"gzip", b"Keep-Alive, Close", b"close", b"a\nb", b"", b"\tok"]


def test_the_lean_response_head_is_uvicorns_head() -> None:
    """``Cycle``'s own head writer (a dict of header lines it has checked before) writes the
    bytes uvicorn's ``send`` writes, leaves the same framing and keep-alive state, and refuses
    what uvicorn refuses, for any headers, twice over (the second time from its dict)."""
    pair = st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES))

    async def start(cycle: Any, status: int, headers: list[Any]) -> tuple[Any, ...]:
        try:
            await cycle.send({"type": "http.response.start", "status": status, "headers": headers})
        except (RuntimeError, ValueError) as exc:  # ValueError: a Content-Length that is no number
            return ("raised", type(exc).__name__, str(exc))
        state = (cycle.chunked_encoding, cycle.expected_content_length, cycle.keep_alive, cycle.response_started)
        return (cycle.transport.data, state)

    @settings(max_examples=300, deadline=None)
    @given(
        status=st.sampled_from([200, 204, 304, 404]),
        method=st.sampled_from(["GET", "HEAD"]),
        keep_alive=st.booleans(),
        defaults=st.lists(pair, max_size=2),
        headers=st.lists(st.one_of(pair, pair.map(list)), max_size=6),
    )
    def check(status: int, method: str, keep_alive: bool, defaults: list[Any], headers: list[Any]) -> None:
        for _ in range(2):
            theirs = asyncio.run(start(_cycle(RequestResponseCycle, method, defaults, keep_alive), status, headers))
            ours = asyncio.run(start(_cycle(Cycle, method, defaults, keep_alive), status, headers))
            assert ours == theirs

    check()
