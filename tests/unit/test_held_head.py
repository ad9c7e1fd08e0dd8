"""What a response cycle writes inside ``OneWrite`` and ``HeldHead`` blocks (``uvicorn_shims``):
gathered into one write at the end, or held for the caller; written anyway if the block fails."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ringpipe.http.uvicorn_shims import HeldHead, OneWrite


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


class _Cycle:
    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport


def _cycle() -> tuple[RequestResponseCycle, _Transport]:
    transport = _Transport()
    return cast("RequestResponseCycle", _Cycle(transport)), transport


def test_one_write_gathers_the_block_into_one_write() -> None:
    cycle, transport = _cycle()
    with OneWrite(cycle):
        cycle.transport.write(b"head")
        cycle.transport.write(b"body")
        assert transport.writes == []
    assert transport.writes == [b"headbody"]
    assert cycle.transport is transport


def test_held_head_is_the_callers_to_write() -> None:
    cycle, transport = _cycle()
    held = HeldHead(cycle)
    with held:
        cycle.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert cycle.transport is transport
    assert transport.writes == []
    assert held.take() == b"HTTP/1.1 200 OK\r\n\r\n"
    assert held.take() is None


def test_held_head_is_written_if_the_block_fails() -> None:
    cycle, transport = _cycle()
    held = HeldHead(cycle)
    with pytest.raises(RuntimeError), held:
        cycle.transport.write(b"head")
        raise RuntimeError("send failed")
    assert transport.writes == [b"head"]
    assert held.take() is None


def test_without_a_cycle_nothing_is_held() -> None:
    held = HeldHead(None)
    with held:
        pass
    assert held.take() is None
