"""A finished connection is freed by reference counting, not left to the cyclic collector.

The protocol holds its ``Connection`` (and so does each request scope); if the connection
held the protocol strongly, every connection would be a reference cycle, freed only by a
full pass of the cyclic collector, which a busy worker seldom runs: its memory crept by
some KiB per finished stream (issue 15).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ringpipe.http.connection import Connection


class _Protocol:
    """Stands in for ``RingpipeHttpProtocol``: it holds its connection, as the real one does."""

    def __init__(self) -> None:
        self.cycle = None
        self.connection = Connection(object(), self)  # type: ignore[arg-type]
        self.scope = {"extensions": {"ringpipe.connection": self.connection}}


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _connections() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Connection)


def test_a_dropped_protocol_and_its_connection_are_freed_at_once(no_cyclic_gc: None) -> None:
    before = _connections()
    protocol = _Protocol()
    gone = weakref.ref(protocol)
    assert protocol.connection.protocol is protocol and _connections() == before + 1
    del protocol
    assert gone() is None and _connections() == before  # freed without the cyclic collector


def test_a_connection_whose_protocol_is_gone_says_so() -> None:
    protocol = _Protocol()
    connection = protocol.connection
    del protocol
    gc.collect()
    with pytest.raises(ConnectionResetError):
        _ = connection.protocol
