"""A sender's body read from its socket straight into the ring.

The fastest way for bytes to enter the ring is for the kernel to copy them there: while
the upload is in a data stretch (all of a ``Content-Length`` body, or the inside of a
chunk), ``RawBody.get_buffer`` hands the event loop (uvloop reads into a buffered
protocol's buffer) a free span of the ring itself, and ``buffer_updated`` publishes what
arrived. Only framing bytes (chunk-size lines, CRLFs, trailers) go to a small scratch buffer
and through ``chunked.BodyFraming``; data bytes that arrive with them are copied into the
ring like any other. Compared with uvicorn's path (a ``bytes`` object per socket read, one
more per ``on_body`` slice, then the copy into the ring) this removes every copy in user
space on the way in.

Between large chunks the framing read asks for only as many bytes as the last chunk's
framing took (``BodyFraming.framing_hint``): with a client that sends equal chunks, every
data byte then goes straight to the ring and each chunk is one publish, instead of ~4 KiB
of it being copied through the scratch and published on its own. Small chunks (tokens) keep
full scratch reads, so several records still arrive in one read.

``RawBody`` is the transport's protocol only for the length of one body; then the HTTP
protocol gets the transport back with a fresh parser, and any bytes read past the body (a
pipelined next request) are fed to it. Backpressure is unchanged: a full ring means the
data goes to the ``Ingest``'s pending buffer, which pauses reading until there is room.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, Protocol

from ringpipe.core.chunked import BodyFraming, FramingError
from ringpipe.ops import metrics

if TYPE_CHECKING:
    from ringpipe.mesh.ingest import Ingest

__all__ = ["HttpLender", "RawBody", "raw_body_framing"]

log = logging.getLogger("ringpipe.rawbody")

#: Scratch for framing bytes. Small, so that little chunk data is read here (and copied)
#: rather than straight into the ring; large enough for a token-sized chunk and its frame.
SCRATCH_BYTES: Final = 4096

#: The one scratch of this process, shared by every ``RawBody``: the event loop fills the
#: buffer ``get_buffer`` returned and calls ``buffer_updated`` before it reads any other
#: socket, and ``_framing_bytes`` is done with the bytes when it returns (``BodyFraming``
#: keeps no view, ``Ingest.feed`` copies what it keeps, the leftover is copied). So no
#: scratch content outlives one read, and a held sender costs no 4 KiB buffer of its own.
_SCRATCH: Final = memoryview(bytearray(SCRATCH_BYTES))


class HttpLender(Protocol):
    """The HTTP protocol that lends its transport to a ``RawBody`` and gets it back at the end.

    That is ``protocol.RingpipeHttpProtocol``, named here by its shape: it builds the
    ``RawBody``, so this module cannot import it.
    """

    def end_raw_body(self, raw: RawBody, leftover: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class RawBody(asyncio.BufferedProtocol):
    """The transport's protocol while one diverted request body is read into the ring."""

    # Slots: a token stream's read touches this object once per token, among ~250 other
    # streams' objects; its attributes in the object itself are a cache line less to fetch.
    __slots__ = ("_finished", "_scratch", "_span", "failed", "framing", "http", "ingest")

    def __init__(self, http: HttpLender, ingest: Ingest, framing: BodyFraming) -> None:
        self.http = http
        self.ingest = ingest
        self.framing = framing
        self._scratch = _SCRATCH
        self._span: memoryview | None = None
        self._finished = False
        #: The framing broke: ``ingest`` heard ``lost`` (with ``error`` set); input is dropped.
        self.failed = False

    # -- before the switch: bytes the HTTP protocol read past the head --

    def take(self, data: bytes) -> bool:
        """Process bytes already read; True if they completed the body (not if they broke it)."""
        if data:
            self._framing_bytes(memoryview(data))
        return self._finished and not self.failed

    # -- asyncio.BufferedProtocol --

    def get_buffer(self, sizehint: int) -> memoryview:
        framing = self.framing
        if framing.data_left:
            ingest = self.ingest
            if not ingest.pending and not ingest.moving and not self._finished:
                span = ingest.producer.free_span(framing.data_left)
                if span is not None:
                    self._span = span
                    return span
        if framing.hint and not self._finished:  # just the framing, so the next chunk lands in the ring whole
            return self._scratch[: framing.hint]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        span, self._span = self._span, None
        if span is not None:  # uvloop still holds the buffer: dropping our reference is enough
            del span
            self.framing.took_data(nbytes)
            self.ingest.received += nbytes
            self.ingest.producer.publish(nbytes)
            if self.framing.done:
                self._finish(b"")
            return
        view = self._scratch[:nbytes]
        if not self._finished:
            data = self.framing.whole_chunk(view)  # a token: one chunk per read, parsed in one step
            if data is not None:
                self.ingest.feed(data)
                return
        self._framing_bytes(view)

    def eof_received(self) -> bool:
        if not self._finished:  # the client shut its side before the body ended
            self.ingest.lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._span = None
        if not self._finished:
            self._finished = True
            self.ingest.lost()
        self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()

    # -- internals --

    def _framing_bytes(self, view: memoryview) -> None:
        if self._finished:
            return  # after a framing error: dropped until the endpoint has answered and closed
        try:
            spans, used = self.framing.feed(view)
        except FramingError as exc:
            # Not an abort: the endpoint writes ``ingest.error`` to the client (the sender's
            # log, or a 400 if nothing was sent yet) and closes; input is read and dropped
            # until then, so the client is not reset before it can read that answer.
            log.info("malformed request body: %s", exc, extra={"event": "refused", "status": 400})
            metrics.REJECTIONS.labels(code="400").inc()
            self._finished = self.failed = True
            self.ingest.error = f"The request body is malformed: {exc}."
            self.ingest.lost()
            return
        if len(spans) == 1:  # data goes to the ring straight from the read (``feed`` copies what it keeps)
            start, end = spans[0]
            self.ingest.feed(view[start:end])
        elif spans:  # several chunks in one read: one write into the ring, one wake-up of the readers
            self.ingest.feed(b"".join([view[start:end] for start, end in spans]))
        if self.framing.done:
            self._finish(bytes(view[used:]))

    def _finish(self, leftover: bytes) -> None:
        self._finished = True
        self.ingest.end()
        self.http.end_raw_body(self, leftover)


def raw_body_framing(method: str, headers: list[tuple[bytes, bytes]]) -> BodyFraming | None:
    """The body framing of a request whose body may go straight into a ring, else None.

    Only PUT/POST with a plain ``Content-Length`` (> 0) or ``Transfer-Encoding: chunked``
    body qualify; multipart forms and other encodings take uvicorn's path.
    """
    if method not in ("PUT", "POST"):
        return None
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                return None
            chunked = True
        elif name == b"content-type" and value.lower().startswith(b"multipart/"):
            return None
        elif name == b"upgrade":
            return None
    if chunked:
        return BodyFraming(content_length=None) if length is None else None
    if length is not None and length > 0:
        return BodyFraming(content_length=length)
    return None
