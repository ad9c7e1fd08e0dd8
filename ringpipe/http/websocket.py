"""WebSocket receivers (SPEC 2.1): a GET with ``Upgrade: websocket`` on a pipe path is a receiver.

It counts toward ``n`` like any receiver and lives the same life in ``receiver.py``; this
module is its ``Reader``. uvicorn's ``websockets-sansio`` protocol does the WebSocket work (handshake,
framing, and a ping every ``heartbeat`` seconds: ``worker.py`` sets ``ws_ping_interval``);
ringpipe sees ASGI ``websocket.*`` messages.

- ``?format=raw`` (default): one **binary** message per chunk taken from the ring;
- ``?format=lines``: one **text** message per producer line, without its line end
  (``framing.LineSplitter``: a partial line waits for its end);
- ``?format=text``: one **text** message per chunk, as soon as it arrives (LLM tokens), a
  UTF-8 character never split, invalid bytes as U+FFFD.

The handshake is accepted once the pipe's owner admits the reader (SPEC 2.4), so every
refusal (bad ``?n``, unknown ``?format``, the owner's: a conflicting ``?n``, an established
path, a limit) is an HTTP answer in the piping error form, and an admitted reader knows it is
registered and gets pings while it waits for the producer. How it ended is the close code
(``CLOSE_CODES``): 1000 done, 4001 aborted (also a waiting reader turned away after its
handshake, e.g. by the wait timeout, with the reason), 4002 cancelled, 4003 lagged (evicted,
or a watcher that fell out of the replay window). Messages from the client are read (to
notice it leaving) and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ringpipe.core.control_frames import Start
from ringpipe.core.errors import Gap, PeerGone
from ringpipe.core.framing import LineSplitter, Utf8Text
from ringpipe.http.readers.base import Reader, ReadOptions, ReadStart, part_headers
from ringpipe.http.responses import HEADERS_IN_RING, TEXT_HEADERS
from ringpipe.mesh.relay import Consumer
from ringpipe.ops import metrics

__all__ = [
    "CLOSE_CODES",
    "HandshakeLogFilter",
    "WebSocketProtocol",
    "WebSocketReader",
    "refuse_websocket",
]

#: The close code per ending (SPEC 2.2).
CLOSE_CODES: Final = {"done": 1000, "aborted": 4001, "cancelled": 4002, "lagged": 4003}
#: A close reason is at most 123 bytes (RFC 6455, 5.5: control frames carry ≤ 125).
_REASON_BYTES: Final = 123


class HandshakeLogFilter(logging.Filter):
    """Drops uvicorn's line per WebSocket handshake (``"WebSocket /p?..." [accepted]``).

    That line carries the query string, where a read key (``?key=``) or a signed URL's
    ``rp_sig`` may be, and no secret may reach a log (SPEC Part 4); it would also be one
    line per reader, as HTTP access lines are, which ringpipe turns off.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith('%s - "WebSocket %s"'))


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, safe against what a client may do to it.

    - Bytes before the handshake is answered (RFC 6455, 4.1: a client sends no frame before
      the 101; they may come in the same read as the upgrade request): ``websockets`` parses
      them as frames and fails with no close frame sent, which uvicorn's handler asserts
      never happens. Such a client is dropped, and the app sees ``websocket.disconnect``.
    - ``shutdown`` (drain) never raises: a connection that cannot be shut down is cut, so
      one broken connection cannot stop a worker's drain.
    """

    def handle_parser_exception(self) -> None:
        if self.conn.close_sent is not None:
            super().handle_parser_exception()
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1002})
        self.transport.close()

    def shutdown(self) -> None:
        try:
            super().shutdown()
        except Exception:
            logging.getLogger("ringpipe.websocket").exception("a WebSocket failed to shut down; cut it")
            self.transport.abort()


def _reason(text: str) -> str:
    return text.encode()[:_REASON_BYTES].decode("utf-8", "ignore")


class WebSocketReader(Reader):
    """One WebSocket receiver (see the module docstring)."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, options: ReadOptions) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.options = options
        self.connected = False
        self.accepted = False
        self.closed = False
        self.lost = False

    async def _connect(self) -> None:
        if not self.connected:
            self.connected = True
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                self.lost = True

    async def reject(self, status: int, message: str) -> None:
        metrics.REJECTIONS.labels(code=str(status)).inc()
        if self.accepted:
            await self._close(CLOSE_CODES["aborted"], message)
            return
        await self._connect()
        if self.lost or self.closed:
            return
        body = f"[ERROR] {message}\n".encode()
        headers = [*TEXT_HEADERS, (b"content-length", str(len(body)).encode())]
        self.closed = True
        with contextlib.suppress(OSError):  # uvicorn's ClientDisconnected: nobody to tell
            await self.send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await self.send({"type": "websocket.http.response.body", "body": body})

    async def admitted(self) -> None:
        if self.accepted or self.closed or self.lost:
            return
        self.accepted = True
        try:
            await self.send({"type": "websocket.accept"})
        except OSError:  # uvicorn's ClientDisconnected: the hang-up callback ends this reader
            self.lost = True

    @contextlib.asynccontextmanager
    async def session(self, on_hangup: Callable[[], None]) -> AsyncIterator[None]:
        await self._connect()
        listener: asyncio.Task[None] | None = None
        if self.lost:
            asyncio.get_running_loop().call_soon(on_hangup)
        else:  # the handshake waits for the owner (``admitted``); a hang-up is noticed meanwhile
            listener = asyncio.create_task(self._listen(on_hangup))
        try:
            yield
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self, on_hangup: Callable[[], None]) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                self.lost = True
                on_hangup()
                return

    async def _close(self, code: int, reason: str = "") -> None:
        if self.closed or self.lost:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            await self.send({"type": "websocket.close", "code": code, "reason": _reason(reason)})

    async def relay(self, consumer: Consumer, start: Start, begin: ReadStart) -> bool:
        content_type = dict(start.receiver_headers).get("content-type")
        if (HEADERS_IN_RING, "1") in start.receiver_headers and consumer.offset == 0:
            part = await part_headers(consumer)
            if part is None:
                await self._close(CLOSE_CODES["aborted"], "the producer vanished")
                return False
            content_type = part.get("content-type")
        del content_type  # binary frames carry any bytes; text formats decode as UTF-8
        fmt = self.options.format
        lines = LineSplitter() if fmt == "lines" else None
        text = Utf8Text() if fmt == "text" else None
        try:
            while True:
                try:
                    views, next_seq = await consumer.views()
                except Gap:
                    await self._close(CLOSE_CODES["lagged"], "fell out of the replay window")
                    return False
                except PeerGone as gone:
                    await self._close(CLOSE_CODES.get(gone.ending, CLOSE_CODES["aborted"]), str(gone))
                    return False
                if not views:
                    if lines is not None:
                        for line in lines.end():
                            await self.send({"type": "websocket.send", "text": line})
                    elif text is not None:
                        tail = text.decode(b"", final=True)
                        if tail:
                            await self.send({"type": "websocket.send", "text": tail})
                    await self._close(CLOSE_CODES["done"], "done")
                    return True
                data = b"".join(views)
                for view in views:
                    view.release()
                if lines is not None:
                    for line in lines.feed(data):
                        await self.send({"type": "websocket.send", "text": line})
                elif text is not None:
                    decoded = text.decode(data)
                    if decoded:
                        await self.send({"type": "websocket.send", "text": decoded})
                else:
                    await self.send({"type": "websocket.send", "bytes": data})
                consumer.commit(next_seq, len(data))
        except OSError:  # uvicorn's ClientDisconnected: the client is gone
            self.lost = True
            return False
        finally:
            replaced = (lines.replaced if lines else 0) + (text.replaced if text else 0)
            if replaced:
                metrics.invalid_utf8("websocket", replaced)

    async def finish(self, completed: bool, ending: str | None = None) -> None:
        if self.accepted and not completed:
            code = CLOSE_CODES.get(ending or "aborted", CLOSE_CODES["aborted"])
            await self._close(code, f"the transfer ended: {ending or 'aborted'}")


async def refuse_websocket(receive: Receive, send: Send, status: int, message: str) -> None:
    """Answer a WebSocket handshake with an HTTP rejection in the piping error form."""
    scope: Scope = {"type": "websocket"}
    await WebSocketReader(scope, receive, send, ReadOptions()).reject(status, message)
