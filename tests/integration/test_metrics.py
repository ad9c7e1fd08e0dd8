"""``/metrics``, ``/healthz``, ``/readyz`` and the transfer log line, against a real multi-worker server.

What an operator checks: the counters add up to the bytes and transfers a client saw, the
live gauges go back to zero, a killed worker's live gauges vanish with it, the text passes
``promtool check metrics`` (Debian's prometheus package), and readiness names what is missing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable

from prometheus_client.parser import text_string_to_metric_families

from ringpipe.core.paths import owner_of
from tests.support.externals import ensure_promtool
from tests.support.pipes import Response, fresh, get, pattern, put, run
from tests.support.servers import Server, ServerFactory

ENDINGS = ("done", "aborted", "cancelled", "lagged", "timeout")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http_get(server: Server, path: str) -> tuple[int, str, str]:
    """Status, Content-Type and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as reply:
            return reply.status, reply.headers.get("content-type", ""), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read().decode()


def scrape(server: Server) -> tuple[str, Samples]:
    status, content_type, text = http_get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_metrics(server: Server, check: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    """Scrape until ``check`` holds (the pipes gauge is recounted a moment after a change)."""
    deadline = time.monotonic() + timeout
    while True:
        _text, samples = scrape(server)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            live = {k: v for k, v in samples.items() if k[0].startswith("ringpipe_") and "_bucket" not in k[0] and v}
            raise AssertionError(f"metrics never matched; non-zero ringpipe samples: {live}")
        time.sleep(0.2)


def idle(samples: Samples) -> bool:
    """No pipe, receiver or ring left anywhere."""
    return (
        value(samples, "ringpipe_pipes", state="waiting") == 0
        and value(samples, "ringpipe_pipes", state="established") == 0
        and value(samples, "ringpipe_receivers", framing="raw") == 0
        and value(samples, "ringpipe_ring_bytes") == 0
    )


def test_counters_add_up_to_what_clients_saw(server: Server) -> None:
    big, small = pattern(1_000_000, seed=1), pattern(200_000, seed=2)
    fan_path, solo_path = fresh(), fresh()

    async def scenario() -> tuple[list[Response], Response, list[Response]]:
        receivers = [asyncio.create_task(get(server.port, fan_path + "?n=3")) for _ in range(3)]
        await asyncio.sleep(0.3)
        await put(server.port, fan_path + "?n=3", big, chunked=True)
        solo = asyncio.create_task(get(server.port, solo_path))
        await asyncio.sleep(0.3)
        await put(server.port, solo_path, small)
        rejected = [await get(server.port, "/x?n=0"), await put(server.port, "/help", b"x")]
        return [await r for r in receivers], await solo, rejected

    fanned, solo, rejected = run(scenario())
    assert all(r.complete and r.body == big for r in fanned) and solo.complete and solo.body == small
    assert [r.status for r in rejected] == [400, 400]

    samples = wait_metrics(server, idle)
    assert value(samples, "ringpipe_bytes_in_total") == len(big) + len(small)
    assert value(samples, "ringpipe_bytes_out_total") == 3 * len(big) + len(small)
    endings = {e: value(samples, "ringpipe_transfers_total", ending=e) for e in ENDINGS}
    assert endings == {"done": 2, "aborted": 0, "cancelled": 0, "lagged": 0, "timeout": 0}
    assert value(samples, "ringpipe_rejections_total", code="400") == 2
    assert value(samples, "ringpipe_fanout_count") == 2 and value(samples, "ringpipe_fanout_sum") == 4
    assert value(samples, "ringpipe_fanout_bucket", le="2.0") == 1  # the n=1 transfer
    assert value(samples, "ringpipe_first_byte_seconds_count") == 4  # one per receiver
    assert value(samples, "ringpipe_rendezvous_wait_seconds_count", role="sender") == 2
    assert value(samples, "ringpipe_rendezvous_wait_seconds_count", role="receiver") == 4
    # receivers waited 0.3 s for their sender; senders found them there
    assert (value(samples, "ringpipe_rendezvous_wait_seconds_sum", role="receiver") or 0) >= 4 * 0.25
    latency_samples = value(samples, "ringpipe_relay_latency_seconds_count") or 0
    assert latency_samples >= 4  # every reader passes at least the first stamp
    assert value(samples, "ringpipe_reader_lag_bytes_count") == latency_samples
    for framing in ("raw", "sse", "ndjson", "websocket"):
        assert value(samples, "ringpipe_receivers", framing=framing) == 0
    assert value(samples, "ringpipe_watchers") == 0
    for reason in ("stall", "window"):
        assert value(samples, "ringpipe_evictions_total", reason=reason) == 0
    assert value(samples, "ringpipe_worker_restarts_total") == 0
    for worker in ("supervisor", "0", "1"):
        assert (value(samples, "process_cpu_seconds_total", worker=worker) or 0) > 0
        assert (value(samples, "process_resident_memory_bytes", worker=worker) or 0) > 1_000_000
        assert (value(samples, "process_open_fds", worker=worker) or 0) > 2

    line = server.wait_log(lambda r: r.get("event") == "transfer" and r.get("path") == fan_path)
    assert line["n"] == 3 and line["bytes"] == len(big) and line["ending"] == "done"
    assert line["framings"] == {"raw": 3} and line["receivers_completed"] == 3
    assert isinstance(line["duration_s"], float) and line["duration_s"] > 0
    assert {"owner_worker", "sender_worker", "receiver_workers", "epoch"} <= set(line)


def test_exposition_passes_promtool(server: Server) -> None:
    promtool = ensure_promtool()
    path = fresh()

    async def scenario() -> Response:
        receiver = asyncio.create_task(get(server.port, path))
        await asyncio.sleep(0.2)
        await put(server.port, path, pattern(50_000))
        await get(server.port, "/x?n=-1")
        return await receiver

    assert run(scenario()).complete
    text, _samples = scrape(server)
    check = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "/" + path.strip("/") not in text  # no path name is ever exported
    for name in (
        "ringpipe_pipes",
        "ringpipe_receivers",
        "ringpipe_watchers",
        "ringpipe_bytes_in_total",
        "ringpipe_bytes_out_total",
        "ringpipe_transfers_total",
        "ringpipe_rejections_total",
        "ringpipe_rendezvous_wait_seconds_bucket",
        "ringpipe_first_byte_seconds_bucket",
        "ringpipe_relay_latency_seconds_bucket",
        "ringpipe_fanout_bucket",
        "ringpipe_reader_lag_bytes_bucket",
        "ringpipe_evictions_total",
        "ringpipe_ring_bytes",
        "ringpipe_worker_restarts_total",
        "process_cpu_seconds_total",
    ):
        assert f"\n{name}" in text, name


def test_live_gauges_follow_pipes(server: Server) -> None:
    """While a transfer runs and another path waits, the gauges say so; then they return to 0."""
    running, waiting = fresh(), fresh()
    chunk = pattern(16_384)

    async def scenario() -> tuple[Samples, list[Response]]:
        release = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield chunk
            await release.wait()
            yield chunk

        receivers = [asyncio.create_task(get(server.port, running + "?n=2")) for _ in range(2)]
        lone = asyncio.create_task(get(server.port, waiting))
        await asyncio.sleep(0.3)
        sender = asyncio.create_task(put(server.port, running + "?n=2", body()))
        loop = asyncio.get_running_loop()
        during = await loop.run_in_executor(
            None,
            wait_metrics,
            server,
            lambda s: (
                value(s, "ringpipe_pipes", state="established") == 1
                and value(s, "ringpipe_pipes", state="waiting") == 1
                and value(s, "ringpipe_receivers", framing="raw") == 2
            ),
        )
        release.set()
        await sender
        lone.cancel()
        return during, [await r for r in receivers]

    during, got = run(scenario())
    assert all(r.complete and r.body == chunk * 2 for r in got)
    # One ring as reserved: its header page and the 16 KiB its first chunk needed (a ring
    # grows from one page as its stream needs; the second chunk is held back).
    assert value(during, "ringpipe_ring_bytes") == 4096 + 16_384
    wait_metrics(server, idle)


def test_a_killed_workers_live_gauges_vanish(server_factory: ServerFactory) -> None:
    """kill -9 of the worker that owns a running pipe: its ring and pipe stop being counted
    once the supervisor reaps it, the restart is counted, and the server is ready again."""
    server = server_factory("--workers", "2")
    victim_slot = 1
    path = next(p for p in (fresh() for _ in range(100)) if owner_of(p, 2) == victim_slot)
    chunk = pattern(8_192)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield chunk
            await asyncio.sleep(0.05)

    async def quietly(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def scenario() -> Samples:
        receiver = asyncio.create_task(quietly(get(server.port, path)))
        await asyncio.sleep(0.2)
        sender = asyncio.create_task(quietly(put(server.port, path, endless())))
        loop = asyncio.get_running_loop()
        before = await loop.run_in_executor(  # (the pipes gauge is recounted up to 0.25 s later)
            None,
            wait_metrics,
            server,
            lambda s: (
                # one ring, growing with the stream: header page + its first chunk, at most
                # twice the replay window (256 KiB by default)
                4096 + 8192 <= value(s, "ringpipe_ring_bytes") <= 4096 + (512 << 10)
                and value(s, "ringpipe_pipes", state="established") == 1
                and value(s, "ringpipe_receivers", framing="raw") == 1
            ),
        )
        os.kill(server.workers_by_slot()[victim_slot], signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(receiver, sender), 20)
        return before

    before = run(scenario())
    assert value(before, "ringpipe_pipes", state="waiting") == 0
    server.wait_log(lambda r: r.get("event") == "worker_ready")
    after = wait_metrics(server, lambda s: idle(s) and value(s, "ringpipe_worker_restarts_total") == 1)
    assert value(after, "ringpipe_transfers_total", ending="done") == 0
    deadline = time.monotonic() + 20
    while http_get(server, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, http_get(server, "/readyz")
        time.sleep(0.2)


def test_health_and_readiness(server: Server) -> None:
    assert http_get(server, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert http_get(server, "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
    frozen = server.workers_by_slot()[1]
    os.kill(frozen, signal.SIGSTOP)  # alive, but its control socket says nothing
    try:
        status, _type, body = http_get(server, "/readyz")  # served by worker 0: 1 cannot accept
        assert status == 503
        assert body == f"not ready\ncontrol mesh: worker 1 (pid {frozen}) does not answer\n"
        assert http_get(server, "/healthz")[0] == 200
    finally:
        os.kill(frozen, signal.SIGCONT)
    answers = [http_get(server, "/readyz") for _ in range(5)]
    assert all(a[0] == 200 for a in answers), answers
    # the probe that gave up on the frozen worker did not hurt it (it once crashed on our hang-up)
    assert server.workers_by_slot()[1] == frozen
    assert not [r for r in server.logs if r.get("event") == "worker_died"]
