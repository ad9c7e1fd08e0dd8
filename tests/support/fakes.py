"""Stand-ins for the parts of a worker a unit under test talks to but does not need."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ringpipe.core.control_frames import RelayInfo
from ringpipe.mesh.relay import DirectSink


class NullRouter:
    """A ``relay.WakeRouter`` whose wake-ups go nowhere: for tests that poll the ring themselves."""

    index = -1  # no ring's producer is here: no reader takes bytes directly

    def wake(self, info: RelayInfo, slot: int) -> None: ...

    def wake_many(self, info: RelayInfo, slots: list[int]) -> None: ...

    def wake_watchers(self, info: RelayInfo, workers: list[int]) -> None: ...

    def register(self, segment: str, slot: int, callback: Callable[[], None]) -> None: ...

    def unregister(self, segment: str, slot: int, callback: Callable[[], None] | None = None) -> None: ...

    def direct_sinks(self, segment: str) -> list[DirectSink]:
        return []

    def drop_direct_sinks(self, segment: str, sinks: list[DirectSink]) -> None: ...


class RecordingTransport(asyncio.Transport):
    """A transport that records what is written to it, for driving a protocol without a socket.

    ``broken`` makes every write fail as after ``write_eof``; ``sockname``/``peername`` are
    what ``get_extra_info`` tells; reading and buffer limits are accepted and ignored."""

    def __init__(
        self,
        *,
        broken: bool = False,
        sockname: tuple[str, int] = ("127.0.0.1", 1234),
        peername: tuple[str, int] = ("127.0.0.1", 1234),
    ) -> None:
        super().__init__()
        self.written = b""
        self.closing = False
        self.aborted = False
        self.broken = broken
        self._names = {"sockname": sockname, "peername": peername}

    def write(self, data: Any) -> None:
        if self.broken:
            raise RuntimeError("Cannot call write() after write_eof()")
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._names.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
