"""Stand-ins for the parts of a worker a unit under test talks to but does not need."""

from __future__ import annotations

from collections.abc import Callable

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
