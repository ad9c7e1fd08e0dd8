"""``/readyz``'s verdict from the supervisor's fleet file and the workers' control sockets.

Real Unix sockets in a temporary runtime directory stand in for the workers' control
listeners (each says ``Hello`` on connect, as ``control.Mesh`` does); the fleet file is the
one ``Supervisor.publish_fleet`` writes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from ringpipe.core import control_frames
from ringpipe.http.pages import readiness_problems
from ringpipe.mesh.control import socket_path
from ringpipe.ops.fleet import FLEET_FILE, read_fleet


def write_fleet(runtime: Path, workers: dict[int, int], ready: list[int], stopping: bool = False) -> None:
    data = {
        "supervisor_pid": 10,
        "expected": 2,
        "workers": {str(k): v for k, v in workers.items()},
        "ready": ready,
        "stopping": stopping,
    }
    (runtime / FLEET_FILE).write_text(json.dumps(data))


async def with_control_sockets(
    runtime: Path, hellos: dict[int, int], check: Callable[[], Awaitable[list[str]]]
) -> list[str]:
    """Serve a control socket per worker slot that says Hello(slot, pid), run ``check``."""
    servers = []
    for slot, pid in hellos.items():

        async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: int = slot, pid: int = pid):  # type: ignore[no-untyped-def]
            writer.write(control_frames.encode(control_frames.Hello(slot, pid)))
            await writer.drain()
            await reader.read()
            writer.close()

        servers.append(await asyncio.start_unix_server(hello, path=str(socket_path(runtime, slot))))
    try:
        return await check()
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def test_ready_when_every_worker_is_up_and_answers(tmp_path: Path) -> None:
    write_fleet(tmp_path, {0: 100, 1: 101}, [0, 1])
    problems = asyncio.run(with_control_sockets(tmp_path, {0: 100, 1: 101}, lambda: readiness_problems(tmp_path, 2)))
    assert problems == []


def test_names_each_missing_part(tmp_path: Path) -> None:
    write_fleet(tmp_path, {0: 100, 1: 102, 2: 103}, [0, 2])  # slot 1 restarting, slot 3 not forked
    problems = asyncio.run(  # slot 2's socket answers with an older worker's pid
        with_control_sockets(tmp_path, {0: 100, 2: 99}, lambda: readiness_problems(tmp_path, 4))
    )
    assert problems == [
        "worker 1 (pid 102): starting",
        "control mesh: worker 2 (pid 103) does not answer",
        "worker 3: not running",
    ]


def test_not_ready_without_a_fleet_file_or_while_stopping(tmp_path: Path) -> None:
    assert asyncio.run(readiness_problems(tmp_path, 1)) == ["supervisor: no fleet state yet"]
    write_fleet(tmp_path, {0: 100}, [0], stopping=True)
    assert asyncio.run(readiness_problems(tmp_path, 1)) == ["supervisor: shutting down"]


def test_fleet_file_round_trip_and_garbage(tmp_path: Path) -> None:
    write_fleet(tmp_path, {0: 100, 1: 101}, [1])
    fleet = read_fleet(tmp_path)
    assert fleet is not None
    assert (fleet.supervisor_pid, fleet.workers, fleet.ready, fleet.stopping) == (10, {0: 100, 1: 101}, {1}, False)
    (tmp_path / FLEET_FILE).write_text("{not json")
    assert read_fleet(tmp_path) is None
