"""The lean HTTP protocol keeps uvicorn's behaviour with less held per connection: a parser
only while it parses, no per-connection copies of worker-wide state, one frame per callback.

Driven with a recording transport: requests one after another on a keep-alive connection
are each served; after ``Connection: close`` what follows is not a request; a waiting
request holds no parser; connections of a worker share their class's worker-wide state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from ringpipe.http.connection import EXTENSION, Connection
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
