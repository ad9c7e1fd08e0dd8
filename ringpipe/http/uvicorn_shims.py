"""Stand-ins for pieces of uvicorn's httptools protocol: its queue of pipelined requests (a
list, not a deque), the transport an HTTP/1.0 request's response cycle writes its head to (an
``HTTP/1.0`` status line), both swapped in by ``protocol.py``, a transport that gathers a
few response messages into one write (``OneWrite``), or holds a response head back for the
first body bytes (``HeldHead``)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["HeldHead", "Http10StatusLine", "OneWrite", "Pipeline"]


class Pipeline(list[tuple[RequestResponseCycle, Any]]):
    """uvicorn's queue of pipelined requests (``appendleft`` in, ``pop`` out) as a list: an
    empty deque is a ~760-byte block, held by every connection, and the queue is almost
    always empty."""

    __slots__ = ()

    def appendleft(self, item: tuple[RequestResponseCycle, Any]) -> None:
        self.insert(0, item)


class Http10StatusLine(asyncio.Transport):
    """The transport as the response cycle of an HTTP/1.0 request sees it.

    uvicorn writes ``HTTP/1.1`` in every status line; piping-server answers an HTTP/1.0
    request with ``HTTP/1.0`` (SPEC 1.1 item 6, and clients of that age may care). This
    rewrites the version of the head uvicorn writes (and of an interim ``100 Continue``),
    then hands the cycle its real transport back, so the body never passes through here.
    """

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport) -> None:
        super().__init__()
        self._cycle = cycle
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, bytes) and data.startswith(b"HTTP/1.1 "):
            if not data.startswith(b"HTTP/1.1 1"):  # the final head: step out of the way
                self._cycle.transport = self._transport
            data = b"HTTP/1.0 " + data[9:]
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class _Gathered(asyncio.Transport):
    """The transport as a response cycle sees it inside ``OneWrite``: writes are kept, in
    order, until the block ends (or the cycle closes the connection after its last message)."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        super().__init__()
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.parts.append(bytes(data))

    def flush(self) -> None:
        if self.parts:
            data, self.parts = b"".join(self.parts), []
            self.transport.write(data)  # type: ignore[attr-defined]

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


class _Diverted:
    """Within the ``with`` block, what ``cycle`` writes goes to a ``_Gathered`` transport;
    the block's end gives the cycle its transport back (before any flush: the HTTP/1.0 shim
    hands over its own transport). ``None``: no cycle, writes go out as they come. (A class,
    not a generator-based context manager: it runs for every response head.)"""

    __slots__ = ("_cycle", "_gathered", "_real")

    def __init__(self, cycle: RequestResponseCycle | None) -> None:
        self._cycle = cycle
        self._real: asyncio.Transport | None = None
        self._gathered: _Gathered | None = None

    def __enter__(self) -> None:
        cycle = self._cycle
        if cycle is not None:
            self._real = cycle.transport
            self._gathered = cycle.transport = _Gathered(self._real)

    def _restore(self) -> _Gathered | None:
        """Give the cycle its transport back; what was gathered (None: nothing was diverted)."""
        cycle, gathered, real = self._cycle, self._gathered, self._real
        if cycle is None or gathered is None or real is None:
            return None
        if cycle.transport is gathered:
            cycle.transport = real
        return gathered


class OneWrite(_Diverted):
    """Within the ``with`` block, what ``cycle`` writes (a response head and its first body
    chunks) goes out as one write at its end: one syscall and one wake-up of the client
    instead of one per message, the same bytes on the wire. The messages sent inside must
    not wait on the client (uvicorn's send only waits while the real transport's buffer is
    full, and nothing reaches that buffer before the block ends).
    """

    __slots__ = ()

    def __exit__(self, *exc_info: object) -> None:
        gathered = self._restore()
        if gathered is not None:
            gathered.flush()


class HeldHead(_Diverted):
    """``with HeldHead(cycle):`` what ``cycle`` writes in the block (a response head) is held
    back rather than written; ``take`` returns it, for the caller to write with the first
    body bytes (one syscall and one wake-up of the client instead of two, the same bytes on
    the wire) or alone. Invariant: the caller writes what it took before anything else
    writes to the connection and before it next waits, so the head is never late. If the
    block fails, what it held is written at its end, as it would have been. ``None``: no
    cycle to hold for, writes go out as they come and ``take`` gives None.
    """

    __slots__ = ()

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        gathered = self._restore()
        if gathered is not None and exc_type is not None:
            gathered.flush()

    def take(self) -> bytes | None:
        """The bytes held (None: none); the caller now owes their write."""
        gathered = self._gathered
        if gathered is None or not gathered.parts:
            return None
        data, gathered.parts = b"".join(gathered.parts), []
        return data
