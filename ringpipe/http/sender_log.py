"""The sender's response: a live log of ``[INFO]`` lines while its body is relayed (SPEC Part 3).

What a sender reads back is a stream of log lines (piping-server's protocol: the receivers it
waits for, the start, the end or the error), so an upload from ``curl -T -`` shows progress.
``SenderLog`` writes that log: as lines happen, in as few writes as the lines allow, held
back entirely until the body is read in ``late`` mode (a relay behind nginx), or as one body
for HTTP/1.0.
"""

from __future__ import annotations

import functools

from starlette.types import Send

from ringpipe.http.connection import Connection
from ringpipe.http.responses import STREAM_HEADERS, TEXT_HEADERS, reject, worker_header
from ringpipe.http.uvicorn_shims import OneWrite

__all__ = ["SenderLog"]


@functools.cache
def _log_headers(worker: int) -> tuple[tuple[bytes, bytes], ...]:
    """The head of worker ``worker``'s sender logs (immutable: every log of the worker shares it).

    nosniff: browsers would otherwise hold a text/plain response back to sniff its type,
    and a page showing the live log would see nothing until the upload ended.
    """
    return (*TEXT_HEADERS, *STREAM_HEADERS, (b"x-content-type-options", b"nosniff"), worker_header(worker))


class SenderLog:
    """The sender's response: a live log of ``[INFO]`` lines (one body at the end for HTTP/1.0).

    With ``late`` (``--sender-response late``, SPEC Part 3) nothing of the response is sent
    until ``body_read()``: the log lines are held, then the status line and every held line
    go out at once and the log is live from there on. nginx stops forwarding a request body
    once the upstream has answered, so a relay behind it must not answer before the body
    is in. An error before that is answered at once with its own status (``fail``).

    Invariant: ``started`` is True exactly when the response is committed to be the 200
    log (its head is on the wire, or goes out with the next line after a ``start`` with
    ``more_coming``, or, for HTTP/1.0, at ``end``); until then an error may still become a
    rejection with its own status.

    Lines that follow each other at once go out in one write, with the head if it is still
    due (``start``'s lines; a line or start with ``more_coming`` and the next one; a late
    log's held ones; an HTTP/1.0 body): a syscall and a wake-up of the client less each,
    the same bytes on the wire. ``more_coming`` promises another line (or the end) before
    the caller next waits, so nothing is held back in time.
    """

    __slots__ = (
        "_conn",
        "_head_due",
        "_headers",
        "_held",
        "_holding",
        "_http10",
        "_pending",
        "_send",
        "ended",
        "started",
    )

    def __init__(
        self, send: Send, *, http10: bool, worker: int, late: bool = False, conn: Connection | None = None
    ) -> None:
        self._send = send
        self._conn = conn
        self._http10 = http10
        self._headers = _log_headers(worker)
        # The lines are tuples, () while there are none (all share it): a held log has none.
        self._held: tuple[bytes, ...] = ()
        #: Late mode, head not yet sent: lines go to ``_held``.
        self._holding = late and not http10
        #: Lines that go out with the next one (``more_coming``), after the head if it is due.
        self._pending: tuple[bytes, ...] = ()
        #: Started, and the head not sent yet: it goes out with the pending lines.
        self._head_due = False
        self.started = False
        self.ended = False

    def _one_write(self) -> OneWrite:
        """The response messages sent in the ``with`` block go out as one write (``OneWrite``)."""
        return OneWrite(None if self._conn is None else self._conn.unstarted_cycle())

    async def start(self, *lines: str, more_coming: bool = False) -> None:
        """Commit to the log, opening with ``lines``.

        ``more_coming``: the caller logs another line (or ends the log) before it next
        waits, so the head and these lines wait for it, to go out in the same write.
        """
        opening = tuple((text + "\n").encode() for text in lines)
        if self._holding or self._http10:
            if not self._holding:
                self.started = True
            self._held += opening
            return  # late: the head waits for ``body_read``; HTTP/1.0: for ``end``
        self.started = True
        self._head_due = True
        self._pending += opening
        if not more_coming:
            await self._flush(b"", more_body=True)

    async def _flush(self, data: bytes, *, more_body: bool) -> None:
        """The head if due, the pending lines and ``data``, in one write."""
        body, self._pending = b"".join((*self._pending, data)), ()
        if not self._head_due:
            if body or not more_body:
                await self._send({"type": "http.response.body", "body": body, "more_body": more_body})
            return
        self._head_due = False
        with self._one_write():
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers})
            if body or not more_body:
                await self._send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def body_read(self) -> None:
        """The whole request body is in: a late log sends its head and held lines now."""
        if not self._holding or self.started:
            return
        self.started = True  # before any await: a concurrent ``end`` must not send a second head
        with self._one_write():
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers})
            while self._held:  # lines logged while we were sending are held too, in order
                body, self._held = b"".join(self._held), ()
                await self._send({"type": "http.response.body", "body": body, "more_body": True})
        self._holding = False

    async def line(self, text: str, *, more_coming: bool = False) -> None:
        data = (text + "\n").encode()
        if self._http10 or self._holding:
            self._held += (data,)
        elif more_coming:
            self._pending += (data,)
        else:
            await self._flush(data, more_body=True)

    async def end(self, text: str) -> None:
        if not self._http10 and not self._holding:
            # The last line and the final chunk in one write (one syscall, one wake-up of
            # the client) instead of two: the same bytes on the wire.
            self.ended = True
            await self._flush((text + "\n").encode(), more_body=False)
            return
        await self.line(text)
        self.ended = True
        if self._http10:
            body = b"".join(self._held)
            headers = [*self._headers, (b"content-length", str(len(body)).encode())]
            with self._one_write():
                await self._send({"type": "http.response.start", "status": 200, "headers": headers})
                await self._send({"type": "http.response.body", "body": body})
            return
        await self.body_read()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def fail(self, status: int, message: str) -> None:
        """End with ``[ERROR] message``: as the log's last line once the log has started,
        else (late mode, body not read yet) as a rejection with ``status``, at once."""
        if self.ended:
            return
        if self.started or not self._holding:
            await self.end(f"[ERROR] {message}")
            return
        self.ended = self.started = True
        await reject(self._send, status, message, close=True)
