"""What a client can do to a worker's connections must never raise out of them: the
WebSocket protocol given bytes before its handshake or failing to shut down (on a recording
transport; the hang-up watcher's closed socket is in ``tests/integration/test_edge_sockets.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from ringpipe.http.websocket import WebSocketProtocol
from tests.support.fakes import RecordingTransport

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
#: A text frame without the mask a client must put on every frame (RFC 6455, 5.1).
UNMASKED = b"\x81\x05hello"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await receive()


def _protocol(transport: RecordingTransport) -> WebSocketProtocol:
    config = uvicorn.Config(_app, ws=WebSocketProtocol, lifespan="off", log_config=None)
    config.load()
    protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    return protocol


def test_websocket_bytes_before_the_handshake_drop_the_client() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        protocol = _protocol(transport)
        protocol.data_received(UPGRADE)
        protocol.data_received(UNMASKED)  # uvicorn's own handler fails an assertion here
        assert transport.closing
        assert transport.written == b""  # no handshake answer: the client is just dropped
        messages = [protocol.queue.get_nowait() for _ in range(protocol.queue.qsize())]
        assert messages[0] == {"type": "websocket.connect"}
        assert messages[-1]["type"] == "websocket.disconnect"
        for task in list(protocol.tasks):
            task.cancel()

    asyncio.run(main())


def test_websocket_shutdown_never_raises() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        protocol = _protocol(transport)
        protocol.data_received(UPGRADE)
        transport.broken = True  # the handshake was never answered: uvicorn writes a 500
        protocol.shutdown()
        assert transport.aborted
        for task in list(protocol.tasks):
            task.cancel()

    asyncio.run(main())
