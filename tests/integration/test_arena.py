"""Ring memory as an operator sees it: what the arenas hold while pipes run and when they do
not, a killed worker's arena, thousands of small pipes under the default limits, and a full
``/dev/shm``. Real server processes on loopback, real ``/dev/shm`` (or a small private tmpfs
in a mount namespace); time bounds are generous.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ringpipe.core.errors import WouldBlock
from ringpipe.core.paths import owner_of
from ringpipe.shm.arena import Arena
from ringpipe.shm.layout import data_offset
from tests.support.containers import CONTAINER, Attached, namespaces_work
from tests.support.pipes import Response, fresh, get, pattern, put
from tests.support.rings import arena_mappings, held, read_nowait, scratch_arena
from tests.support.servers import ROOT, Server, children_of, metric, shm_held, stop_and_check


def run(coro, timeout: float = 120):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def mapped_rings(pid: int) -> dict[str, int]:
    """Ring mappings of a process and the resident kB of each (``/proc/PID/smaps``)."""
    rings: dict[str, int] = {}
    current = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 6 and "/dev/shm/ringpipe-" in line:
            current = f"{fields[0]} {fields[5]}"
            rings[current] = 0
        elif "-" in fields[0]:
            current = None
        elif current is not None and fields[0] == "Rss:":
            rings[current] = int(fields[1])
    return rings


async def paced(chunks: list[bytes], every: float) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(every)


def test_an_idle_server_holds_no_ring_pages(server: Server) -> None:
    """Bulk, fan-out, token and watched pipes come and go: while they run the arenas hold
    pages; afterwards no arena holds a page, no worker maps a ring (an owner's empty chunk
    goes a second after its last ring), the gauge says 0."""
    bulk, fan, tokens, watched = fresh(), fresh(), fresh(), fresh()
    data = pattern(3_000_000)
    records = [f"data: token {i}\n\n".encode() for i in range(50)]

    async def scenario() -> tuple[int, list[Response]]:
        readers = [
            asyncio.create_task(get(server.port, bulk)),
            *(asyncio.create_task(get(server.port, fan + "?n=3")) for _ in range(3)),
            asyncio.create_task(get(server.port, tokens, [("Accept", "text/event-stream")])),
            asyncio.create_task(get(server.port, watched)),
        ]
        await asyncio.sleep(0.3)
        watcher = asyncio.create_task(get(server.port, watched + "?watch=1"))
        await asyncio.sleep(0.2)
        senders = [
            asyncio.create_task(put(server.port, bulk, data)),
            asyncio.create_task(put(server.port, fan + "?n=3", data)),
            asyncio.create_task(put(server.port, tokens, paced(records, 0.02), [("Content-Type", "text/plain")])),
            asyncio.create_task(put(server.port, watched, paced([data[:200_000]] * 5, 0.1))),
        ]
        await asyncio.sleep(0.3)
        during = sum(shm_held(f"ringpipe-{server.pid}-").values())
        for sender in senders:
            assert (await sender).text.endswith("received successfully.\n")
        return during, [await r for r in readers] + [await watcher]

    during, got = run(scenario())
    assert during > 0
    assert [r.body for r in got[:4]] == [data] * 4
    assert all(f"token {i}" in got[4].text for i in range(50))
    assert got[5].body == got[6].body == data[:200_000] * 5
    deadline = time.monotonic() + 10
    while (
        server.stray_shm() or metric(server, "ringpipe_ring_bytes") or any(map(mapped_rings, server.workers()))
    ) and time.monotonic() < deadline:
        time.sleep(0.1)  # an owner unmaps its empty chunks a second after its last ring went
    assert not server.stray_shm()
    assert metric(server, "ringpipe_ring_bytes") == 0
    arenas = shm_held(f"ringpipe-{server.pid}-")
    assert arenas and all(name.endswith("-arena") and held == 0 for name, held in arenas.items())
    assert {worker: mapped_rings(worker) for worker in server.workers()} == {w: {} for w in server.workers()}


def test_kill_9_of_a_worker_leaves_no_segment_of_it(server: Server) -> None:
    """Pipes owned by both workers run; kill -9 of one: its arena is swept at once, the other
    worker's pipes finish, and then no arena holds a page."""
    victim_slot = 1
    victim = server.workers_by_slot()[victim_slot]
    paths = [fresh() for _ in range(12)]
    assert {owner_of(p, 2) for p in paths} == {0, 1}
    chunk = pattern(50_000)

    async def scenario() -> list[Response]:
        readers = [asyncio.create_task(get(server.port, p)) for p in paths]
        await asyncio.sleep(0.3)
        senders = [asyncio.create_task(put(server.port, p, paced([chunk] * 40, 0.05))) for p in paths]
        await asyncio.sleep(0.8)
        assert f"ringpipe-{server.pid}-{victim}-arena" in shm_held(f"ringpipe-{server.pid}-")
        os.kill(victim, signal.SIGKILL)
        for sender in senders:
            try:
                await sender
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
        return [await r for r in readers]

    got = run(scenario())
    server.wait_log(lambda r: r.get("event") == "worker_ready")
    assert not [name for name in shm_held(f"ringpipe-{server.pid}-") if f"-{victim}-" in name]
    for path, response in zip(paths, got, strict=True):
        if owner_of(path, 2) != victim_slot and response.complete:
            assert response.body == chunk * 40
    assert any(r.complete for r in got), "no pipe of the surviving worker finished"
    deadline = time.monotonic() + 10
    while server.stray_shm() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.stray_shm()


@pytest.mark.slow(5)
def test_three_thousand_concurrent_token_pipes_fit_the_default_limits(server: Server) -> None:
    """3000 token streams established at once, default flags: none is refused (at 1 MiB a
    ring, the default --max-memory stopped at about 2000), and they hold a few KiB each."""
    count = 3000
    paths = [fresh() for _ in range(count)]
    go = asyncio.Event()

    async def tokens(i: int) -> AsyncIterator[bytes]:
        yield f"first {i}\n".encode()
        await go.wait()
        yield f"last {i}\n".encode()

    async def scenario() -> tuple[float, float, list[Response], list[Response]]:
        readers = []
        for start in range(0, count, 200):
            readers += [asyncio.create_task(get(server.port, p)) for p in paths[start : start + 200]]
            await asyncio.sleep(0.05)
        senders = []
        for start in range(0, count, 200):
            batch = enumerate(paths[start : start + 200], start)
            senders += [asyncio.create_task(put(server.port, p, tokens(i))) for i, p in batch]
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 120
        while await in_thread(metric, server, "ringpipe_pipes") < count:
            assert time.monotonic() < deadline, "not every pipe was established"
            assert not any(s.done() for s in senders), [s.result() for s in senders if s.done()][:3]
            await asyncio.sleep(1)
        established = await in_thread(metric, server, "ringpipe_pipes")
        reserved = await in_thread(metric, server, "ringpipe_ring_bytes")
        go.set()
        return established, reserved, [await s for s in senders], [await r for r in readers]

    established, reserved, logs, got = run(scenario(), timeout=300)
    assert established == count
    assert reserved <= count * 4096  # one page each: the header and a 2 KiB first ring share it
    assert all(log.text.endswith("received successfully.\n") for log in logs), [
        log.text for log in logs if not log.text.endswith("received successfully.\n")
    ][:3]
    assert [r.body for r in got] == [f"first {i}\nlast {i}\n".encode() for i in range(count)]


# -- a full /dev/shm ----------------------------------------------------------------------------

SMALL_SHM = 1536 << 10


@pytest.fixture
def cramped() -> Iterator[Server]:
    """A server (one worker, default limits) whose /dev/shm is a private 1.5 MiB tmpfs."""
    if not namespaces_work():
        pytest.skip("mount namespaces are not permitted here")
    init = f'mount -t tmpfs -o size={SMALL_SHM},mode=1777 shm /dev/shm && exec "$@"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_") and k != "PORT"}
    env["PYTHONUNBUFFERED"] = "1"
    serve = [sys.executable, "-m", "ringpipe", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1"]
    wrapper = subprocess.Popen(
        [*CONTAINER, init, "sh", *serve], cwd=ROOT, env=env, stderr=subprocess.PIPE, start_new_session=True
    )
    server = Server(wrapper)
    threading.Thread(target=server._pump, daemon=True).start()
    try:
        assert server._ready.wait(60), "\n".join(server.raw_lines[-30:])
        (inner,) = children_of(wrapper.pid)
        server.proc = Attached(inner, wrapper)  # type: ignore[assignment]
        yield server
        assert not stop_and_check(server)
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait(10)
        if wrapper.stderr is not None:
            wrapper.stderr.close()


def test_a_full_dev_shm_refuses_pipes_with_503_and_never_faults(cramped: Server) -> None:
    """Three bulk pipes grow their rings into a 1.5 MiB /dev/shm: two to 512 KiB (twice the
    replay window), the third stops at 256 KiB when /dev/shm is full. Then 100 token pipes:
    the ones that fit run, the others are refused with a 503 that names /dev/shm. Every
    admitted pipe is intact and the worker never dies (a page nobody could allocate would
    have been a SIGBUS)."""
    server = cramped
    (worker,) = server.workers()
    bulk = [fresh() for _ in range(3)]
    small = [fresh() for _ in range(100)]
    data = pattern(4_000_000)
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]  # 4 s of upload
    hold = asyncio.Event()

    async def token(i: int) -> AsyncIterator[bytes]:
        yield f"token {i}\n".encode()
        await hold.wait()

    async def scenario() -> tuple[list[Response], list[Response], list[Response], list[Response]]:
        bulk_readers = [asyncio.create_task(get(server.port, p)) for p in bulk]
        await asyncio.sleep(0.3)
        bulk_senders = [asyncio.create_task(put(server.port, p, paced(chunks, 0.1))) for p in bulk]  # fmt: skip
        await asyncio.sleep(1.0)  # the rings have grown as far as /dev/shm lets them
        readers = [asyncio.create_task(get(server.port, p)) for p in small]
        await asyncio.sleep(0.3)
        senders = [asyncio.create_task(put(server.port, p, token(i))) for i, p in enumerate(small)]
        await asyncio.sleep(2.0)
        hold.set()
        return (
            [await s for s in bulk_senders],
            [await r for r in bulk_readers],
            [await s for s in senders],
            [await r for r in readers],
        )

    bulk_logs, bulk_got, logs, got = run(scenario())
    assert all(log.text.endswith("received successfully.\n") for log in bulk_logs)
    assert [r.body for r in bulk_got] == [data] * 3
    served = [i for i, r in enumerate(got) if r.status == 200]
    refused = [i for i, r in enumerate(got) if r.status != 200]
    assert served and refused, (len(served), len(refused))
    for i in served:
        assert got[i].complete and got[i].body == f"token {i}\n".encode()
        assert logs[i].text.endswith("received successfully.\n")
    for i in refused:
        assert got[i].status == 503 and "/dev/shm" in got[i].text, got[i]
        assert "/dev/shm" in logs[i].text
    assert server.workers() == [worker]
    assert not [r for r in server.logs if r.get("event") == "worker_died"]
    assert metric(server, "ringpipe_ring_refusals_total") >= len(refused) + 1  # and a refused growth
    shm = Path(f"/proc/{worker}/root/dev/shm")
    deadline = time.monotonic() + 10
    while [f.stat().st_blocks for f in shm.iterdir()] != [0] and time.monotonic() < deadline:
        time.sleep(0.1)  # the last rings' pages go back a second after they ended
    assert [f.stat().st_blocks for f in shm.iterdir()] == [0]  # the arena, holding nothing


# -- a ring in an arena, mapped by another process --------------------------------------------

PAGE = 4096
HEADER = data_offset(1)


@pytest.fixture
def arena() -> Iterator[Arena]:
    with scratch_arena() as made:
        yield made


_CHILD_WRITER = """
import sys
from ringpipe.shm import segment
ring = segment.RingSegment.attach(sys.argv[1])
assert ring.region.own_mapping and ring.region.base == 0 and len(ring.region.mm) == int(sys.argv[2])
assert ring.write_nowait(b"from another process") == 20
ring.finish_writing()
ring.close()
"""


def test_a_party_in_another_process_maps_just_its_ring_by_name(arena: Arena) -> None:
    """A ring in a later chunk, written by a process that maps only that ring's slot."""
    arena.chunk_slots = 2
    rings = [arena.create_ring(i + 1, n_readers=1, capacity=PAGE, window=0) for i in range(3)]
    length = HEADER + arena.ring_bytes
    subprocess.run([sys.executable, "-c", _CHILD_WRITER, rings[2].name, str(length)], check=True, timeout=60)
    assert read_nowait(rings[2], 0, PAGE) == b"from another process"
    assert read_nowait(rings[2], 0, PAGE) == b""  # the end the child published
    assert not rings[2].has_users()  # its users byte went with its handle
    with pytest.raises(WouldBlock):
        read_nowait(rings[1], 0, PAGE)  # its neighbour saw nothing of it
    for ring in rings:
        arena.free(ring)
    assert held(arena) == 0 and arena_mappings(arena) == 0
