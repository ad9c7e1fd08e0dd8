"""Stand-ins for two pieces of uvicorn's httptools protocol, swapped in by ``protocol.py``:
its queue of pipelined requests (a list, not a deque) and the transport an HTTP/1.0
request's response cycle writes its head to (an ``HTTP/1.0`` status line)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["Http10StatusLine", "Pipeline"]


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
