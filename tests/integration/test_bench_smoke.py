"""The benchmark still runs: ``bench/run.py --quick`` against ringpipe and piping-server.

It checks what the benchmark must get right whatever the machine — every scenario ran on both
servers and every byte, record and waiting connection checked out — never a timing. The
benchmark installs piping-server with npm on its first run (``node`` and ``npm`` on PATH).
Every process it starts carries a marker in its environment, so the test can prove that none
is left behind (and end those, by pid, if the benchmark itself was killed).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ROOT, shm_segments

SCENARIOS = ("throughput", "fanout", "latency", "pairs", "idle", "slow-reader", "swarm", "churn")
SERVERS = ("ringpipe", "piping-server")
MARKER = "BENCH_SMOKE_MARKER"  # not RINGPIPE_*: the benchmark strips those from ringpipe's environment


def marked_processes(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``MARKER=tag``."""
    needle = f"{MARKER}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry))
    return found


def run_bench(tmp_path: Path, *extra: str) -> dict[str, object]:
    out = tmp_path / "bench.json"
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_")}
    env[MARKER] = tag
    cmd = [sys.executable, "bench/run.py", "--quick", "--out", str(out), *extra]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
        )
        # the benchmark stops its servers itself; give the last exits a moment to be reaped
        deadline = time.monotonic() + 10
        while marked_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = marked_processes(tag)
    finally:
        for pid in marked_processes(tag):  # only what this test started (it carries our marker)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    tail = (proc.stdout[-6000:] + "\n--- stderr ---\n" + proc.stderr[-3000:]).strip()
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}:\n{tail}"
    assert not left, f"processes left behind by the benchmark: {left}\n{tail}"
    data: dict[str, object] = json.loads(out.read_text())
    servers = data["servers"]
    assert isinstance(servers, dict)
    for name, info in servers.items():
        if name.startswith("ringpipe"):
            assert not shm_segments(f"ringpipe-{info['pid']}-"), f"{name} left shared memory behind"
    return data


def check_runs(data: dict[str, object], scenarios: tuple[str, ...], servers: tuple[str, ...]) -> None:
    assert data["status"] == 0
    runs = data["runs"]
    cases = data["cases"]
    assert isinstance(runs, list) and isinstance(cases, list)
    assert {c["scenario"] for c in cases} == set(scenarios)
    for case in cases:
        for server in servers:
            mine = [r for r in runs if r["case"] == case["name"] and r["server"] == server]
            assert mine, f"no run of {case['name']!r} on {server}"
            for r in mine:
                assert r["ok"], (case["name"], server, r.get("errors"))
                assert r["verified"], (case["name"], server)


@pytest.mark.slow(35)
@pytest.mark.timeout(900)
def test_quick_benchmark_runs_every_scenario_on_both_servers(tmp_path: Path) -> None:
    data = run_bench(tmp_path)
    check_runs(data, SCENARIOS, SERVERS)
    runs = data["runs"]
    assert isinstance(runs, list)
    for r in runs:  # the byte checks ran, not only the timers
        if r["scenario"] in ("throughput", "fanout"):
            assert r["framing"] and r["n"] >= 1
        elif r["scenario"] == "latency":
            assert r["samples"] == r["n"] * r["records"]
        elif r["scenario"] == "idle":
            assert r["sampled_transfers"] > 0
        elif r["scenario"] == "slow-reader":
            assert r["sender_total"] and r["sender_total"] > 0
        elif r["scenario"] == "swarm":  # every token of every stream checked at its reader
            assert r["streams_failed"] == 0
            assert r["tokens_delivered"] == r["tokens_expected"] == r["streams"] * r["readers"] * r["records"]
        elif r["scenario"] == "churn":
            check_churn(r)
    summary = data["summary"]
    assert isinstance(summary, list)
    assert {s["scenario"] for s in summary} == set(SCENARIOS)


def check_churn(r: dict[str, Any]) -> None:
    """Every stream of a churn run served, every token checked at its reader, and measured."""
    assert r["streams_failed"] == 0 and r["streams_served"] == r["streams"]
    assert r["tokens_delivered"] == r["tokens_expected"] == r["streams"] * r["tokens"]
    assert r["server_cpu_ms_per_stream"] is not None and r["p99_ms"] is not None


@pytest.mark.slow(5)
@pytest.mark.timeout(900)
def test_quick_churn(tmp_path: Path) -> None:
    """A few dozen short streams after a warm-up, on both servers."""
    data = run_bench(tmp_path, "--scenarios", "churn", "--churn-streams", "30", "--churn-warmup", "5")
    check_runs(data, ("churn",), SERVERS)
    runs = data["runs"]
    assert isinstance(runs, list) and len(runs) == len(SERVERS)
    for r in runs:
        assert r["streams"] == 30 and r["warmup"] == 5
        check_churn(r)


@pytest.mark.slow(7)
@pytest.mark.timeout(900)
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
def test_quick_swarm_in_a_text_framing(tmp_path: Path, framing: str) -> None:
    """ringpipe's readers read SSE events or NDJSON records (text tokens, every one checked:
    record, offset, epoch, the done ending); piping-server's read raw, as it has no framing."""
    data = run_bench(tmp_path, "--scenarios", "swarm", "--readers", "2", "--framing", framing)
    check_runs(data, ("swarm",), SERVERS)
    runs = data["runs"]
    assert isinstance(runs, list) and len(runs) == len(SERVERS)
    for r in runs:
        assert r["framing"] == (framing if r["server"] == "ringpipe" else "raw")
        assert r["streams_failed"] == 0
        assert r["tokens_delivered"] == r["tokens_expected"] == r["streams"] * r["readers"] * r["records"]


@pytest.mark.slow(6)
@pytest.mark.timeout(900)
def test_quick_workers_sweep(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "--workers-sweep", "1,2", "--scenarios", "pairs")
    check_runs(data, ("pairs",), ("ringpipe w=1", "ringpipe w=2", "piping-server"))
    sweep = data["sweep"]
    assert isinstance(sweep, dict) and sweep, "no scaling table"


def test_one_owner_paths_are_owned_by_worker_0() -> None:
    """``--swarm-one-owner`` gives every stream a path of its own that the server's
    ``owner_of`` puts on worker 0, for any worker count."""
    from bench.ringbench.scenarios.swarm import _paths
    from ringpipe.core.paths import owner_of

    for workers in (1, 2, 3, 16):
        paths = _paths("/swarm-check-", workers)
        chosen = [next(paths) for _ in range(200)]
        assert len(set(chosen)) == 200
        assert all(owner_of(path, workers) == 0 for path in chosen)


def test_a_text_reader_checks_records_however_the_events_cut_the_text() -> None:
    """SPEC 2.1 *chunks*: an SSE event (or NDJSON record) is what one read of the pipe held,
    usually one of the producer's records, several after a stall, part of one if a read cut
    it. The benchmark's reader rebuilds the text from the events and checks every record whole
    and in order and every event's offset; a corrupt record or a wrong offset fails the stream."""
    from bench.ringbench.tokens import TEXT_LEN, TEXT_RECORD, EventReader, Stream, Tally, check_word

    records = [
        base64.b64encode(TEXT_RECORD.pack(7, seq, time.monotonic_ns(), check_word(7, seq) & 0xFFFF)) for seq in range(4)
    ]
    assert all(len(record) == TEXT_LEN for record in records)

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    def read(events: list[tuple[bytes, int]], *, done: int = 4 * TEXT_LEN) -> tuple[Stream, EventReader]:
        stream = Stream(sid=7, target="/t", n=1, records=4, interval_ns=1, t_open=0, t_put=0, t_first=0, framing="sse")
        reader = EventReader(stream, 0, Tally(), port=1)
        stream.readers.append(reader)
        reader.data_received(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        reader.data_received(chunk(b"retry: 1000\n\n"))
        for data, offset in events:
            reader.data_received(chunk(b"id: 5-%d\ndata: %s\n\n" % (offset, data)))
        reader.data_received(chunk(b'event: done\nid: 5-%d\ndata: {"ending":"done"}\n\n' % done) + b"0\r\n\r\n")
        return stream, reader

    r0, r1, r2, r3 = records
    stream, reader = read([(r0, 24), (r1 + r2, 72), (r3[:10], 82), (r3[10:], 96)])
    assert stream.error is None and reader.t_done and reader.tally.delivered == 4

    stream, _ = read([(r0, 24), (r1 + r2, 72), (r3, 95)])
    assert stream.error is not None and "event at offset 95" in stream.error

    stream, _ = read([(r0, 24), (r1[:-2] + b"!!", 48), (r2 + r3, 96)])
    assert stream.error is not None and "not a base64 record" in stream.error

    stream, _ = read([(r0, 24), (r2, 48), (r1 + r3, 96)])
    assert stream.error is not None and "record 1: got stream 7 seq 2" in stream.error
