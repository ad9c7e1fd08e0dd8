"""The pipe endpoints of one worker: sender, receiver, ``DELETE`` (cancel) and ``HEAD`` (status).

Raw ASGI callables, not Starlette endpoints, because chunk sizes and flow control matter
here; Starlette serves the reserved paths (``http.pages``). The sender's life is
``http.sender``, the receiver's ``http.receiver``; this module holds the two lifecycle
questions (SPEC 2.3, 2.6), which ask the owner and answer without joining the pipe. Read
keys travel to the owner only as sha256 digests (``request_params.read_key``).
"""

from __future__ import annotations

import logging
from typing import Final

from starlette.types import Receive, Scope, Send

from ringpipe.core.control_frames import Broken, PipeStatus
from ringpipe.core.rendezvous import Answer
from ringpipe.http.hangup import HangupWatcher
from ringpipe.http.receiver import ReceiverEndpoint
from ringpipe.http.request_params import read_key
from ringpipe.http.responses import OWNER_LOST, TEXT_HEADERS, reject, worker_header
from ringpipe.http.sender import SenderEndpoint
from ringpipe.mesh.worker_pipes import WorkerPipes

__all__ = ["PipeEndpoints"]

log = logging.getLogger("ringpipe.edge")

STATUS_HEADERS: Final = b"Ringpipe-State, Ringpipe-Receivers, Ringpipe-Offset, Ringpipe-Epoch"


class PipeEndpoints:
    """Every handler of a pipe path, bound to one worker's ``WorkerPipes``.

    ``hangups`` watches waiting senders' sockets; the worker closes it at shutdown.
    """

    def __init__(self, node: WorkerPipes) -> None:
        self.node = node
        self.hangups = HangupWatcher()
        self.sender = SenderEndpoint(node, self.hangups)
        self.receiver = ReceiverEndpoint(node)

    async def cancel(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """``DELETE /p``: 204 when a waiting or running transfer was cancelled, 404 when free."""
        answer = await self._ask(path, cancel=True, key=read_key(scope))
        if isinstance(answer, Answer) and answer.status == 204:
            log.info("pipe cancelled", extra={"path": path})
            headers = [TEXT_HEADERS[1], worker_header(self.node.index)]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif isinstance(answer, Answer):
            await reject(send, answer.status, answer.message)
        else:
            await reject(send, 503, OWNER_LOST)

    async def status(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """``HEAD /p``: the pipe's state in ``Ringpipe-*`` headers; 404 when free. Registers nobody."""
        answer = await self._ask(path, cancel=False, key=read_key(scope))
        if isinstance(answer, PipeStatus):
            headers = [
                *TEXT_HEADERS,
                (b"cache-control", b"no-cache, no-transform"),
                (b"ringpipe-state", answer.state.encode()),
                (b"ringpipe-receivers", f"{answer.connected}/{answer.n}".encode()),
                (b"ringpipe-offset", str(answer.offset).encode()),
                (b"ringpipe-epoch", answer.epoch.encode()),
                (b"access-control-expose-headers", STATUS_HEADERS),
                (b"content-length", b"0"),
                worker_header(self.node.index),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif isinstance(answer, Answer):
            await reject(send, answer.status, answer.message, head=True)
        else:
            await reject(send, 503, OWNER_LOST, head=True)

    async def _ask(self, path: str, *, cancel: bool, key: str) -> Answer | PipeStatus | None:
        party = self.node.ask(path, cancel=cancel, key=key)
        try:
            async for item in party.inbox:
                if isinstance(item, (Answer, PipeStatus)):
                    return item
                if isinstance(item, Broken):
                    return None
            return None
        finally:
            self.node.forget(party)
