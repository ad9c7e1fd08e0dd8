"""The control mesh's links between two workers, in one process on uvloop (as the workers run).

Two ``Mesh`` instances on real Unix sockets in a temporary runtime folder: frames arrive in
the order they were sent, with the sender's index; a peer that sends garbage is dropped with
one error line and counted gone; a peer that closes is gone exactly once; and stopping both
ends while frames flow logs nothing at error level. (The anyio socket streams the mesh used
before logged ``InvalidStateError`` from a cancelled wait under uvloop after a 500-pipe bench
round in 3 runs of 6; this small in-process stop does not reproduce that race on the old
code, so it checks that the links stop cleanly, not the race itself.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import anyio
import pytest
import uvloop

from ringpipe.core import control_frames
from ringpipe.core.control_frames import Broken, Frame, Hello
from ringpipe.core.rendezvous.events import PartyId
from ringpipe.mesh.control import Mesh, socket_path


class Peer:
    """One mesh and what its callbacks saw."""

    def __init__(self, index: int, runtime: Path) -> None:
        self.frames: list[tuple[int, Frame]] = []
        self.gone: list[tuple[int, int]] = []
        self.mesh = Mesh(
            index=index,
            runtime_dir=runtime,
            on_frame=lambda worker, frame: self.frames.append((worker, frame)),
            on_peer_gone=lambda worker, pid: self.gone.append((worker, pid)),
            on_peer_unreachable=lambda worker: None,
        )


def run_on_uvloop(main: object) -> None:
    anyio.run(main, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop})  # type: ignore[arg-type]


async def wait_until(check: object, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.01)


def test_frames_arrive_in_order_and_a_stop_under_load_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A thousand frames each way, sent over several loop turns, arrive in order; then both
    ends stop while more are in flight, with no error-level log line."""
    caplog.set_level(logging.WARNING)
    zero, one = Peer(0, tmp_path), Peer(1, tmp_path)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(zero.mesh.run)
            await tg.start(one.mesh.run)
            for serial in range(1000):
                zero.mesh.send(1, Broken(PartyId(0, 1, serial)))
                one.mesh.send(0, Broken(PartyId(1, 2, serial)))
                if serial % 50 == 0:
                    await anyio.sleep(0)
            await wait_until(lambda: len(zero.frames) == 1000 and len(one.frames) == 1000)
            for serial in range(1000, 3000):  # still flowing when both stop
                zero.mesh.send(1, Broken(PartyId(0, 1, serial)))
                one.mesh.send(0, Broken(PartyId(1, 2, serial)))
            zero.mesh.draining = one.mesh.draining = True
            tg.cancel_scope.cancel()

    run_on_uvloop(main)
    assert [frame.party.serial for _w, frame in one.frames[:1000]] == list(range(1000))  # type: ignore[union-attr]
    assert {w for w, _f in one.frames} == {0} and {w for w, _f in zero.frames} == {1}
    assert [frame.party.serial for _w, frame in zero.frames[:1000]] == list(range(1000))  # type: ignore[union-attr]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_a_peer_that_sends_garbage_is_dropped_and_counted_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hello, then bytes that are no frame: one error line, the link closed, the peer gone
    once; the listener still serves the next peer."""
    caplog.set_level(logging.INFO)
    one = Peer(1, tmp_path)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(one.mesh.run)
            loop = asyncio.get_running_loop()
            for pid in (4242, 4343):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                await loop.sock_connect(sock, str(socket_path(tmp_path, 1)))
                hello = await loop.sock_recv(sock, 4096)
                assert control_frames.decode(hello)[0] == [Hello(1, os.getpid())]
                await loop.sock_sendall(sock, control_frames.encode(Hello(0, pid)))
                await wait_until(lambda pid=pid: one.mesh.peer_pids.get(0) == pid)
                if pid == 4242:
                    await loop.sock_sendall(sock, b"\xff" * 64)
                    assert await loop.sock_recv(sock, 4096) == b""  # dropped
                else:
                    await loop.sock_sendall(sock, control_frames.encode(Broken(PartyId(0, pid, 7))))
                    await wait_until(lambda: one.frames)
                sock.close()
                await wait_until(lambda pid=pid: (0, pid) in one.gone)
            tg.cancel_scope.cancel()

    run_on_uvloop(main)
    assert one.gone == [(0, 4242), (0, 4343)]
    assert one.frames == [(0, Broken(PartyId(0, 4343, 7)))]
    dropped = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(dropped) == 1 and dropped[0].startswith("control link from worker 0 dropped: malformed control frame")
