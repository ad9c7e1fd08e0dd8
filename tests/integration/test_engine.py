"""The multi-process engine as an operator sees it: owners, backpressure, faults, leaks, drain.

Every test runs a real supervisor and real workers on a loopback port and talks to them over
real sockets; the shared memory is real ``/dev/shm``. Time bounds are generous (noisy 2-core
CI machines): they catch hangs and busy loops, they do not measure speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ringpipe.core.paths import owner_of
from tests.support.pipes import Response, fresh, get, pattern, put, run
from tests.support.servers import ServerFactory, kill_group, metric, shm_segments, start_server, wake_ups


def kernel_max(path: str) -> int:
    """The largest size the kernel may grow a socket buffer to (``tcp_rmem``/``tcp_wmem``)."""
    return int(Path(path).read_text().split()[2])


# -- 5. owners ----------------------------------------------------------------------------------


def test_parties_of_one_pipe_meet_across_four_workers(server_factory: ServerFactory) -> None:
    """120 concurrent n=3 pipes on 4 workers: every byte intact, and pipes spanned workers
    (no hand-off to the owner: this is about parties meeting across workers)."""
    server = server_factory("--workers", "4", "--colocate-max-n", "0")
    pipes = 120
    paths = [fresh() for _ in range(pipes)]
    payloads = [pattern(30_000 + i * 101, seed=i) for i in range(pipes)]

    async def one_pipe(i: int) -> tuple[Response, list[Response]]:
        url = paths[i] + "?n=3"
        receivers = [asyncio.create_task(get(server.port, url)) for _ in range(3)]
        log = await put(server.port, url, payloads[i])
        return log, [await r for r in receivers]

    async def scenario() -> list[tuple[Response, list[Response]]]:
        return list(await asyncio.gather(*(one_pipe(i) for i in range(pipes))))

    results = run(scenario())
    spanning = 0
    for i, (log, receivers) in enumerate(results):
        assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n"), log.text
        for response in receivers:
            assert response.status == 200 and response.complete
            assert response.body == payloads[i], f"pipe {i}: bytes differ"
        workers = {log.header("ringpipe-worker")} | {r.header("ringpipe-worker") for r in receivers}
        spanning += len(workers) > 1
    assert spanning > 0, "no pipe had parties on different workers"

    # The owner logs a transfer once every party's Leave has reached it, which can trail the
    # clients' complete responses on a loaded machine (seen: 118 of 120 logged at first look).
    ours = set(paths)
    deadline = time.monotonic() + 10
    while len(transfers := [t for t in server.transfers() if t["path"] in ours]) < pipes:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(transfers) == pipes
    assert all(t["ending"] == "done" and t["bytes"] == len(payloads[paths.index(str(t["path"]))]) for t in transfers)
    across = [t for t in transfers if len({t["sender_worker"], *t["receiver_workers"]}) > 1]  # type: ignore[misc]
    assert across, "transfer logs show no pipe across workers"
    assert all(t["owner_worker"] == owner_of(str(t["path"]), 4) for t in transfers)
    assert metric(server, "ringpipe_transfers_across_workers_total") >= len(across)


# -- 6. idle CPU ---------------------------------------------------------------------------------


def test_an_idle_server_with_100_waiting_pipes_burns_no_cpu(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2")

    async def scenario() -> float:
        tasks = [asyncio.create_task(get(server.port, fresh())) for _ in range(50)]
        tasks += [asyncio.create_task(put(server.port, fresh(), b"x" * 10)) for _ in range(50)]
        await asyncio.sleep(2)  # let every party be accepted
        before = server.cpu_seconds()
        await asyncio.sleep(5)
        used = server.cpu_seconds() - before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return used

    used = run(scenario())
    # 5 s of wall time on 3 processes: busy polling would burn seconds; we allow 5 %.
    assert used < 0.25, f"idle server used {used:.2f} CPU-seconds in 5 s"


def test_an_idle_server_sleeps_until_something_happens(server_factory: ServerFactory) -> None:
    """No process of an idle server ticks: the supervisor waits for signals, a worker for
    clients, peers and signals (the Date header is made when asked for, the supervisor's
    death comes through a pipe). uvicorn's own loop woke each worker 10 times a second."""
    server = server_factory("--workers", "2")
    first = run(get(server.port, "/help"))
    time.sleep(2)  # let whatever the request scheduled (metric flushes, keep-alive) run out
    pids = server.all_pids()
    before = {pid: wake_ups(pid) for pid in pids}
    time.sleep(6)
    woken = {pid: wake_ups(pid) - before[pid] for pid in pids}
    assert all(count <= 2 for count in woken.values()), f"wake-ups in 6 idle seconds, by pid: {woken}"
    later = run(get(server.port, "/help"))  # the Date header is still made, and moves on
    assert first.header("date") != later.header("date")
    assert (later.header("date") or "").endswith(" GMT")


def test_workers_drain_and_exit_when_the_supervisor_is_killed() -> None:
    """``kill -9`` of the supervisor: each worker sees its lifeline pipe close, logs it,
    drains and exits; no worker is left orphaned and no ring segment stays behind."""
    server = start_server("--workers", "2")  # not the fixture's: its teardown expects a clean exit
    workers = server.workers()
    try:
        assert len(workers) == 2
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(10)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived their supervisor"
        gone = server.wait_log(lambda r: "is gone" in str(r.get("msg")), timeout=5)
        assert gone["level"] == "error"
        assert not shm_segments(f"ringpipe-{server.pid}-")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group is normally gone by now
            kill_group(server.proc)


# -- 7. backpressure -----------------------------------------------------------------------------


class CountingUpload:
    """An endless upload over a raw socket with a small send buffer; counts what the kernel took."""

    def __init__(self, *, head_alone: bool = False) -> None:
        self.sent = 0
        self.head_alone = head_alone

    async def body(self) -> AsyncIterator[bytes]:
        chunk = b"z" * 16_384
        if self.head_alone:  # the server's first read is the request head alone
            await asyncio.sleep(0.1)
        while True:
            yield chunk
            self.sent += len(chunk)


async def stalled_reader(port: int, path: str, rcvbuf: int) -> tuple[socket.socket, int]:
    """A receiver that reads its response head and then stops reading, with a small buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


async def sent_when_stalled(upload: CountingUpload, settle: float = 1.5, timeout: float = 30) -> tuple[int, int]:
    """Wait until the upload stops making progress; return (bytes at the stall, bytes later)."""
    deadline = time.monotonic() + timeout
    last = -1
    while upload.sent != last and time.monotonic() < deadline:
        last = upload.sent
        await asyncio.sleep(settle)
    await asyncio.sleep(2)
    return last, upload.sent


@pytest.mark.parametrize("sender_first", [False, True], ids=["receivers-first", "sender-first"])
def test_a_stalled_receiver_stalls_the_upload_within_ring_and_socket_buffers(
    server_factory: ServerFactory, sender_first: bool
) -> None:
    """With the sender first, more of its body is already read than the ring holds when the
    transfer starts (the ring is only 4 KiB): the reading must stay paused until it fits."""
    ring = 4096 if sender_first else 65_536
    server = server_factory("--workers", "2", "--ring-bytes", str(ring))
    path = fresh() + "?n=2"
    upload = CountingUpload()

    async def scenario() -> tuple[int, int, int, int]:
        if sender_first:
            sender = asyncio.create_task(put(server.port, path, upload.body()))
            await asyncio.sleep(0.5)
        stalled, rcvbuf = await stalled_reader(server.port, path, 32_768)
        reading = asyncio.create_task(get(server.port, path))
        await asyncio.sleep(0.5)
        if not sender_first:
            sender = asyncio.create_task(put(server.port, path, upload.body()))
        at_stall, later = await sent_when_stalled(upload)
        read_by_stalled = drain_now(stalled)
        stalled.close()
        sender.cancel()
        reading.cancel()
        await asyncio.gather(sender, reading, return_exceptions=True)
        return at_stall, later, read_by_stalled, rcvbuf

    at_stall, later, read_by_stalled, rcvbuf = run(scenario())
    assert at_stall == later, "the upload kept flowing although a receiver stopped reading"
    # What the server can hold of the upload: the ring, its own socket buffers both ways (the
    # kernel may auto-tune them up to tcp_rmem/tcp_wmem max), the sender's send buffer, one
    # read and one write in flight in the worker, and the stalled reader's own buffer.
    bound = (
        ring
        + kernel_max("/proc/sys/net/ipv4/tcp_rmem")
        + kernel_max("/proc/sys/net/ipv4/tcp_wmem") * 2
        + rcvbuf
        + 2 * 256 * 1024
    )
    assert at_stall - read_by_stalled <= bound, (at_stall, read_by_stalled, bound)
    assert at_stall < 64 * 1024 * 1024, "the upload ran far ahead of the stalled receiver"


def drain_now(sock: socket.socket) -> int:
    """Read what a non-blocking socket holds right now; return how many bytes that was."""
    total = 0
    try:
        while data := sock.recv(1 << 20):
            total += len(data)
    except (BlockingIOError, ConnectionError):
        pass
    return total


def test_a_sender_nobody_reads_is_not_read(server_factory: ServerFactory) -> None:
    """SPEC 1.1.1: while a sender waits for receivers, its body stays in the kernel, also
    when its connection was handed to the path's owner (several senders: the kernel puts
    some on the other worker, which hands them over with the bytes it read)."""
    server = server_factory("--workers", "2")
    # Only kernel buffers (the client's send buffer, the server's receive buffer) and
    # one paused read (perhaps one more right after a hand-off) may hold it.
    bound = kernel_max("/proc/sys/net/ipv4/tcp_wmem") + kernel_max("/proc/sys/net/ipv4/tcp_rmem") + 512 * 1024

    async def one_sender() -> tuple[int, int]:
        upload = CountingUpload(head_alone=True)
        sender = asyncio.create_task(put(server.port, fresh(), upload.body()))
        at_stall, later = await sent_when_stalled(upload)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        return at_stall, later

    async def scenario() -> tuple[list[tuple[int, int]], Response]:
        stalls = list(await asyncio.gather(*(one_sender() for _ in range(6))))
        return stalls, await get(server.port, "/version")

    stalls, after = run(scenario())
    for at_stall, later in stalls:
        assert at_stall == later
        assert at_stall <= bound, (at_stall, bound)
    assert after.status == 200
    assert metric(server, "ringpipe_handoffs_total") > 0, "no sender was handed off: the test proves less"


# -- 9. faults stay local --------------------------------------------------------------------------


def test_kill_9_of_a_worker_mid_transfer(server_factory: ServerFactory) -> None:
    """The slot is refilled within 1 s; pipes that touched the dead worker end with an error
    at every surviving party; all other pipes finish intact; no ring is left behind."""
    workers = 3
    # Without hand-offs: the case of interest is a pipe whose parties sit on several workers.
    server = server_factory("--workers", str(workers), "--colocate-max-n", "0")
    victim_slot = 1
    pipes = 36
    paths = [fresh() for _ in range(pipes)]
    chunk = pattern(8_192)
    chunks = 60
    expected = chunk * chunks

    async def paced() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield chunk
            await asyncio.sleep(0.05)

    async def sender(path: str) -> Response | None:
        try:
            return await put(server.port, path + "?n=2", paced())
        except (ConnectionError, asyncio.IncompleteReadError):
            return None

    async def receiver(path: str) -> Response | None:
        try:
            return await get(server.port, path + "?n=2")
        except (ConnectionError, asyncio.IncompleteReadError):
            return None

    async def scenario() -> list[tuple[Response | None, list[Response | None]]]:
        # Connections are opened a few ms apart: a burst of connects tends to be accepted by
        # one worker, and the test needs pipes both on and off the victim.
        receivers = []
        for p in paths:
            receivers.append([asyncio.create_task(receiver(p)) for _ in range(2)])
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        senders = []
        for p in paths:
            senders.append(asyncio.create_task(sender(p)))
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # mid-transfer: 3 s of paced body per pipe
        victim = server.workers_by_slot()[victim_slot]
        os.kill(victim, signal.SIGKILL)
        results = []
        for s, rs in zip(senders, receivers, strict=True):
            results.append((await s, [await r for r in rs]))
        return results

    results = run(scenario())
    died = server.wait_log(lambda r: r.get("event") == "worker_died")
    ready = server.wait_log(lambda r: r.get("event") == "worker_ready")
    assert died["slot"] == ready["slot"] == victim_slot
    assert log_time(ready) - log_time(died) < 1.0
    assert len(server.workers()) == workers

    def on_victim(response: Response | None) -> bool:
        return response is None or response.header("ringpipe-worker") == str(victim_slot)

    sender_died = receiver_died = untouched = 0
    for path, (log, receivers) in zip(paths, results, strict=True):
        for r in receivers:  # never a clean-looking truncated body, whatever the pipe
            assert r is None or not r.complete or r.body == expected, f"{path}: truncated but clean"
        survivors = [r for r in receivers if not on_victim(r)]
        success = log is not None and log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")
        if on_victim(log):
            sender_died += 1  # every receiver is cut
            assert all(r is None or not r.complete for r in receivers), f"{path}: looked complete"
        elif owner_of(path, workers) == victim_slot:
            # The rendezvous owner died. It holds no bytes (the ring outlives its creator's
            # mapping): the pipe either finishes for everyone still there, or the sender is
            # told it broke; a success line is never a lie.
            if success:
                assert all(r is not None and r.complete and r.body == expected for r in survivors)
        elif len(survivors) < len(receivers):
            receiver_died += 1  # its connection dropped; the sender is told; the others go on
            assert all(r is None or not r.complete for r in receivers if on_victim(r))
            assert log is not None and "[INFO] A receiver aborted.\n" in log.text, log and log.text
            assert all(r is not None and r.complete and r.body == expected for r in survivors)
        else:
            untouched += 1  # nothing of this pipe was on the dead worker: it finishes intact
            assert success and all(r is not None and r.complete and r.body == expected for r in receivers)
    assert sender_died and receiver_died and untouched, (sender_died, receiver_died, untouched)
    deadline = time.monotonic() + 10
    while server.stray_shm() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.stray_shm()

    # The new worker serves; a pipe on a path it owns works.
    path = next(p for p in (fresh() for _ in range(100)) if owner_of(p, workers) == victim_slot)

    async def again() -> Response:
        r = asyncio.create_task(get(server.port, path))
        await put(server.port, path, b"after the crash")
        return await r

    assert run(again()).body == b"after the crash"


def log_time(record: dict[str, object]) -> float:
    stamp = str(record["ts"])
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1000


@pytest.mark.slow(25)
def test_a_thousand_transfers_leave_no_ring_and_no_growth(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2")

    async def transfers(count: int, concurrency: int = 25) -> int:
        gate = asyncio.Semaphore(concurrency)
        ok = 0

        async def one(i: int) -> None:
            nonlocal ok
            async with gate:
                path, data = fresh(), pattern(20_000, seed=i)
                r = asyncio.create_task(get(server.port, path))
                await put(server.port, path, data)
                got = await r
                ok += got.complete and got.body == data

        await asyncio.gather(*(one(i) for i in range(count)))
        return ok

    def settled() -> None:
        """Until the rings' pages went back and their chunks unmapped (a second each after
        the last transfer), the workers' RSS counts them."""
        time.sleep(1)
        deadline = time.monotonic() + 10
        while server.stray_shm() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.2)

    assert run(transfers(150)) == 150  # warm up allocators and caches
    settled()
    start_rss = server.rss()
    assert run(transfers(1000)) == 1000
    settled()
    grown = server.rss() - start_rss
    assert grown < 24 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB over 1000 transfers"
    assert not server.stray_shm()
    assert metric(server, "ringpipe_ring_bytes") == 0


# -- 4. drain ----------------------------------------------------------------------------------


def test_sigterm_lets_running_transfers_finish_and_refuses_the_waiting(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2")
    path, lonely = fresh(), fresh()
    chunk = pattern(10_000)

    async def paced() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield chunk
            await asyncio.sleep(0.05)

    async def scenario() -> tuple[Response, Response, Response]:
        receiver = asyncio.create_task(get(server.port, path))
        waiting = asyncio.create_task(get(server.port, lonely))
        await asyncio.sleep(0.5)
        sender = asyncio.create_task(put(server.port, path, paced()))
        await asyncio.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        return await sender, await receiver, await waiting

    log, got, refused = run(scenario())
    assert got.complete and got.body == chunk * 30
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")
    assert refused.status == 503 and refused.text.startswith("[ERROR] ")
    assert server.proc.wait(30) == 0
    assert not server.workers()
    assert not shm_segments(f"ringpipe-{server.pid}-")
