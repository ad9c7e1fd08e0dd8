"""A sender's body on its way into the ring (``Ingest``), and the header block a multipart
upload's first part puts ahead of its data.

Backpressure is "don't read more": bytes that do not fit in the ring wait in
``Ingest.pending`` (at most one socket read) and the sender's socket is not read until they
are in, so TCP slows the uploader (see ``relay.py`` for the ring side).
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Final, Protocol

from ringpipe.core.multipart import FirstPart, MultipartError
from ringpipe.mesh.relay import Producer
from ringpipe.shm.flag import Flag

log = logging.getLogger("ringpipe.relay")

__all__ = ["HEADER_BLOCK", "HEADER_MAGIC", "Ingest", "ReadControl", "header_block", "parse_header_block"]


class Ingest:
    """The sink of a diverted sender body: HTTP parser → ring, with no await in between.

    ``feed`` runs inside the parser's callback. What fits goes into the ring at once; the
    rest waits in ``pending`` and the socket stops being read until ``run`` has moved it
    into the ring. So at most one socket read (uvicorn reads up to 256 KiB) sits outside
    the ring per sender, and TCP holds back the rest: backpressure without a queue.

    Invariant: while ``pending`` is non-empty or ``run`` is moving it, reading is paused and
    ``feed`` appends to ``pending`` (bytes stay in order). Whoever starts the flow (see
    ``Connection.divert_body``) resumes reading only if ``pending`` is empty.
    """

    # Slots: ``feed`` runs per token (see ``RawBody``'s).
    __slots__ = (
        "_changed",
        "ended",
        "error",
        "first_part",
        "moving",
        "pending",
        "producer",
        "reading",
        "received",
        "vanished",
    )

    def __init__(self, producer: Producer, reading: ReadControl, *, first_part: FirstPart | None = None) -> None:
        """``first_part``: relay only the first part of this multipart body, its headers first
        (as a ``header_block``, which the receivers read before they answer)."""
        self.producer = producer
        self.reading = reading
        self.first_part = first_part
        self.pending = bytearray()
        self.moving = False
        self.ended = False
        self.vanished = False
        self.received = 0
        #: Why the body was refused (malformed), as the sender's log should say it.
        self.error: str | None = None
        self._changed = Flag()  # not an anyio.Event: its deque is ~0.7 KiB a held upload keeps

    def feed(self, body: bytes | memoryview) -> None:
        """Body bytes from the parser or the socket; a view is used only during the call."""
        size = len(body)
        self.received += size
        if self.first_part is not None:
            body = self._first_part_only(self.first_part, bytes(body))
            size = len(body)
            if not size:
                return
        if self.pending or self.moving:
            self.pending += body
            return
        written = self.producer.offer(body)
        if written < size:
            self.pending += memoryview(body)[written:]
            self.reading.pause_reading()
            self._changed.set()

    def _first_part_only(self, part: FirstPart, body: bytes) -> bytes:
        try:
            data = part.feed(body)
        except MultipartError as exc:
            log.warning("malformed multipart upload: %s", exc)
            self.first_part = None
            self.error = f"The multipart upload is malformed: {exc}."
            self.lost()
            return b""
        headers = part.take_headers()
        return data if headers is None else header_block(headers) + data

    def end(self) -> None:
        if self.first_part is not None and not self.first_part.done:
            log.warning("multipart upload ended inside its first part")
            self.error = "The multipart upload ended inside its first part."
            self.lost()
            return
        self.ended = True
        self._changed.set()

    def lost(self) -> None:
        self.vanished = True
        self._changed.set()

    async def run(self) -> bool:
        """Move the body into the ring until it ends (True) or the sender vanishes (False)."""
        while True:
            if self.pending:
                data, self.pending = self.pending, bytearray()
                self.moving = True
                try:
                    await self.producer.write(data)
                finally:
                    self.moving = False
                if not self.pending and not (self.ended or self.vanished):
                    self.reading.resume_reading()
                continue
            if self.vanished:
                return False
            if self.ended:
                return True
            await self._changed.wait()
            self._changed.clear()


#: Marks a header block at the start of a ring (multipart uploads), then its length.
HEADER_BLOCK: Final = struct.Struct(">3sI")
HEADER_MAGIC: Final = b"RPH"


def header_block(headers: list[tuple[str, str]]) -> bytes:
    """Response headers for the receivers, carried in the ring ahead of the data."""
    payload = json.dumps(headers).encode()
    return HEADER_BLOCK.pack(HEADER_MAGIC, len(payload)) + payload


def parse_header_block(payload: bytes) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in json.loads(payload)]


class ReadControl(Protocol):
    """Pauses and resumes reading a sender's socket (``connection.Connection``)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...
