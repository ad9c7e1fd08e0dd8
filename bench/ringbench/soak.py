"""A soak: a swarm of token streams against ringpipe alone for a long time (20 minutes by
default), with ``kill -9`` of a random worker every ``kill_every_s``; then what must hold:

- the only streams that failed are those of a killed worker: a stream is *exposed* to a kill
  when its life overlaps the kill's window (the kill -> the replacement worker ready, plus
  ``grace_s``) and the killed slot is its path's owner, or served one of its parties
  (``Ringpipe-Worker``), or may have: a party that had no response head yet at the kill sat
  on whichever worker accepted it; every stream that was not exposed must be intact (every
  record checked);
- the workers' RSS is flat after warm-up: for each worker process that lived long enough, its
  RSS at its end against its RSS once warmed up (``warmup_s`` after it was first seen), less
  than ``max_growth``;
- no shared-memory segment of the server is left, neither a killed worker's (checked a few
  seconds after each kill) nor any at all after the SIGTERM, and the server exits 0.

The load is continuous: each client process keeps its share of ``streams`` going, starting a
new stream as soon as one ends, so pipes are set up and torn down all the time (at the
defaults, 250 x 25 tokens/s, 100 tokens each: about 62 new streams per second). 250 streams is
about half of what the 2-core VM carries before the tail collapses (500, issue 15).
``run_soak`` is importable: the test suite runs a one-minute version of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ringpipe.core.paths import owner_of

from .clients import Clients, Ctl, outcomes
from .measure import cpu_self, process_tree, pss_bytes, rss_bytes, tree_cpu_seconds
from .scenarios.swarm import default_procs
from .servers import start_ringpipe
from .tokens import FRAMINGS, Runner, Stream, Tally

LOG_BASE = math.log(1.02)  # latency histogram buckets: 2 % wide


@dataclass
class SoakConfig:
    duration_s: float = 1200.0
    kill_every_s: float = 120.0
    streams: int = 250  # concurrent, kept up all along
    readers: int = 1
    #: The streams' framings in turn (each stream's readers all read one): what LLM front ends read.
    framings: tuple[str, ...] = FRAMINGS
    rate: float = 25.0
    records: int = 100
    workers: int | None = None  # ringpipe's own default: the CPU count
    warmup_s: float = 60.0
    sample_every_s: float = 5.0
    grace_s: float = 1.0
    max_growth: float = 0.10
    procs: int = field(default_factory=default_procs)
    seed: int | None = None
    logdir: str | None = None  # the server's log goes here (a temporary folder if None)


def _bucket(ns: int) -> int:
    return int(math.log(max(ns, 1)) / LOG_BASE)


def hist_percentile(hist: Counter[int], q: float) -> float | None:
    """The q-quantile (ms) of a latency histogram, to 2 %."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = math.ceil(q * total), 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return math.exp((b + 0.5) * LOG_BASE) / 1e6
    return None


async def soak_client(
    ctl: Ctl,
    port: int,
    index: int,
    procs: int,
    concurrent: int,
    n: int,
    records: int,
    rate: float,
    duration_s: float,
    tag: str,
    framings: tuple[str, ...] = ("raw",),
) -> dict[str, Any]:
    """Keep ``concurrent`` streams going until ``duration_s`` after go, then let them end.

    Returns every stream as (id, path, t_open, t_end, t_heads, ok, error, slots), times in
    seconds (CLOCK_MONOTONIC; t_heads 0 if some party never got its response head), and the
    token latencies as a histogram."""
    tally = Tally()
    hist: Counter[int] = Counter()
    done: list[tuple[int, str, float, float, float, bool, str | None, str]] = []
    interval_ns = int(1e9 / rate)
    rng = random.Random(index)
    state = {"next": 0, "live": 0}
    stopping = asyncio.get_running_loop().create_future()
    t_stop_ns = 0

    def start(t_open_ns: int) -> None:
        sid = index + procs * state["next"]
        state["next"] += 1
        state["live"] += 1
        t_put = t_open_ns + 50_000_000  # readers first
        t_first = t_put + int(rng.random() * interval_ns)  # a random phase
        query = f"?n={n}" if n > 1 else ""
        framing = framings[sid % len(framings)]
        path = f"/soak-{tag}-{sid}-{framing}{query}"
        runner.add(Stream(sid, path, n, records, interval_ns, t_open_ns, t_put, t_first, framing=framing))

    def on_end(stream: Stream) -> None:
        state["live"] -= 1
        slots = ",".join(sorted(stream.slots))
        path = stream.target.split("?", 1)[0]
        times = (stream.t_open / 1e9, stream.t_end / 1e9, stream.t_heads / 1e9)
        error = None if stream.error is None else f"[{stream.framing}] {stream.error}"
        done.append((stream.sid, path, *times, stream.ok, error, slots))
        now = time.monotonic_ns()
        if now < t_stop_ns:
            start(now)
        elif state["live"] == 0 and not stopping.done():
            stopping.set_result(None)

    runner = Runner(port, tally, on_end)
    ctl.send("ready")
    t_go: float = await ctl.expect("go")
    cpu0 = cpu_self()
    base = int(t_go * 1e9)
    t_stop_ns = base + int(duration_s * 1e9)
    lifetime_ns = int(records / rate * 1e9)
    for k in range(concurrent):  # the first streams spread over one stream's lifetime
        start(base + lifetime_ns * k // max(1, concurrent))

    async def drain() -> None:  # latencies into the histogram, so memory stays flat
        while True:
            await asyncio.sleep(2.0)
            for x in tally.lat:
                hist[_bucket(x)] += 1
            del tally.lat[:]
            del tally.first[:]
            del tally.late[:]

    drainer = asyncio.create_task(drain())
    deadline = t_go + duration_s + records / rate + 90
    try:
        await asyncio.wait_for(stopping, max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        runner.abort("deadline")
    drainer.cancel()
    for x in tally.lat:
        hist[_bucket(x)] += 1
    await asyncio.sleep(0.05)
    return {"streams": done, "hist": dict(hist), "delivered": tally.delivered, "cpu_run_s": cpu_self() - cpu0}


class LogTail:
    """The server's JSON log, read as it grows: which pid serves which slot, deaths, readiness."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.slots: dict[int, int] = {}  # pid -> slot
        self.died: list[tuple[float, int, int, int]] = []  # (seen at, slot, pid, rings swept)
        self.ready: list[tuple[float, int, int]] = []  # (seen at, slot, pid) of replacements

    def poll(self) -> None:
        with contextlib.suppress(OSError), open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        now = time.monotonic()
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event") if isinstance(event, dict) else None
            if kind == "ready":
                self.slots.update({int(pid): int(slot) for slot, pid in event["workers"].items()})
            elif kind == "worker_ready":
                self.slots[int(event["worker_pid"])] = int(event["slot"])
                self.ready.append((now, int(event["slot"]), int(event["worker_pid"])))
            elif kind == "worker_died":
                self.died.append((now, int(event["slot"]), int(event["worker_pid"]), int(event["rings_swept"])))


def segments(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except FileNotFoundError:
        return []


@dataclass
class Kill:
    t: float
    slot: int
    pid: int
    t_ready: float | None = None
    segments_left: list[str] | None = None  # the killed worker's, looked at 5 s after the kill


def rss_growth(samples: list[tuple[float, dict[int, int]]], warmup_s: float) -> dict[int, dict[str, float]]:
    """Per worker pid that was sampled for at least ``warmup_s`` past its own warm-up: RSS
    once warmed up (the first sample ``warmup_s`` after the pid was first seen), RSS at its
    last sample, and the growth between them."""
    series: dict[int, list[tuple[float, int]]] = {}
    for t, by_pid in samples:
        for pid, rss in by_pid.items():
            series.setdefault(pid, []).append((t, rss))
    out = {}
    for pid, points in series.items():
        t0 = points[0][0]
        warm = [(t, r) for t, r in points if t >= t0 + warmup_s]
        if len(warm) < 2 or warm[-1][0] - warm[0][0] < warmup_s:
            continue
        first, last = warm[0][1], warm[-1][1]
        out[pid] = {
            "rss_warm_mib": first / 2**20,
            "rss_last_mib": last / 2**20,
            "rss_max_mib": max(r for _t, r in warm) / 2**20,
            "growth": last / first - 1,
            "span_s": warm[-1][0] - warm[0][0],
        }
    return out


def run_soak(cfg: SoakConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak and return its report (a JSON-able dict); ``report["passed"]`` says whether
    every property held."""
    rng = random.Random(cfg.seed)
    logdir = Path(cfg.logdir or tempfile.mkdtemp(prefix="ringpipe-soak-"))
    server = start_ringpipe(cfg.workers, logdir / "ringpipe-soak.log")
    sup = server.pid
    prefix = f"ringpipe-{sup}-"
    tail = LogTail(server.log_path)
    tail.poll()
    workers = len(tail.slots)
    say(
        f"soak: ringpipe pid {sup} on :{server.port}, {workers} workers; {cfg.streams} streams x {cfg.readers} "
        f"{'/'.join(cfg.framings)} reader(s) x {cfg.rate:g}/s, {cfg.records} records each, for {cfg.duration_s:.0f} s, "
        f"kill -9 every {cfg.kill_every_s:.0f} s"
    )
    kills: list[Kill] = []
    samples: list[tuple[float, dict[int, int]]] = []
    pss: list[tuple[float, int]] = []
    tag = uuid.uuid4().hex[:8]
    procs = max(1, min(cfg.streams, cfg.procs))
    shares = [cfg.streams // procs + (1 if i < cfg.streams % procs else 0) for i in range(procs)]
    cpu0 = tree_cpu_seconds(sup)[0]
    try:
        with Clients() as cl:
            for i, share in enumerate(shares):
                cl.spawn(
                    "soak",
                    soak_client,
                    fast_loop=True,
                    port=server.port,
                    index=i,
                    procs=procs,
                    concurrent=share,
                    n=cfg.readers,
                    records=cfg.records,
                    rate=cfg.rate,
                    duration_s=cfg.duration_s,
                    tag=tag,
                    framings=cfg.framings,
                )
            cl.expect_all("ready", 60)
            t_go = time.monotonic() + 0.3
            cl.broadcast("go", t_go)
            next_sample, next_kill = t_go, t_go + cfg.kill_every_s
            while time.monotonic() < t_go + cfg.duration_s:
                time.sleep(0.2)
                tail.poll()
                now = time.monotonic()
                for kill in kills:
                    if kill.t_ready is None:
                        kill.t_ready = next((t for t, slot, _p in tail.ready if slot == kill.slot and t > kill.t), None)
                if now >= next_sample:
                    next_sample += cfg.sample_every_s
                    pids = [p for p in process_tree(sup) if p != sup]
                    samples.append((now - t_go, {p: r for p in pids if (r := rss_bytes(p)) is not None}))
                    pss.append((now - t_go, sum(pss_bytes(p) or 0 for p in [sup, *pids])))
                    for kill in kills:
                        if now - kill.t > 5 and kill.segments_left is None:
                            kill.segments_left = segments(f"{prefix}{kill.pid}-")
                if now >= next_kill and now < t_go + cfg.duration_s - 5:
                    next_kill += cfg.kill_every_s
                    tree = set(process_tree(sup))
                    live = {p: s for p, s in tail.slots.items() if p in tree}
                    if live:
                        pid = rng.choice(sorted(live))
                        kills.append(Kill(time.monotonic(), live[pid], pid))
                        os.kill(pid, signal.SIGKILL)
                        say(f"  t={now - t_go:6.1f}s  kill -9 worker slot {live[pid]} (pid {pid})")
            say("  load stopped; waiting for the last streams to end")
            children = cl.finish(t_go + cfg.duration_s + cfg.records / cfg.rate + 180)
        by_kind, proc_cpu, errors = outcomes(children)
        tail.poll()
        for kill in kills:
            if kill.t_ready is None:
                kill.t_ready = next((t for t, slot, _p in tail.ready if slot == kill.slot and t > kill.t), None)
            if kill.segments_left is None:
                kill.segments_left = segments(f"{prefix}{kill.pid}-")
        server_cpu = tree_cpu_seconds(sup)[0] - cpu0
    finally:
        exit_code = server.stop()
    left = segments(prefix)
    parts = by_kind.get("soak", [])
    streams = [s for p in parts for s in p["streams"]]
    hist: Counter[int] = Counter()
    for p in parts:
        hist.update({int(k): v for k, v in p["hist"].items()})
    report = judge(cfg, workers, t_go, kills, streams, samples, left, exit_code)
    delivered = sum(p["delivered"] for p in parts)
    report.update(
        config=asdict(cfg),
        server_pid=sup,
        server_log=str(server.log_path),
        client_errors=errors,
        client_proc_cpu_s=proc_cpu,
        tokens_delivered=delivered,
        server_cpu_us_per_token=1e6 * server_cpu / delivered if delivered else None,
        latency_p50_ms=hist_percentile(hist, 0.5),
        latency_p99_ms=hist_percentile(hist, 0.99),
        latency_max_ms=hist_percentile(hist, 1.0),
        pss_mib=[(round(t, 1), round(m / 2**20, 1)) for t, m in pss],
        rss_mib=[(round(t, 1), {str(p): round(r / 2**20, 1) for p, r in by.items()}) for t, by in samples],
    )
    report["passed"] = report["passed"] and not errors
    return report


def judge(
    cfg: SoakConfig,
    workers: int,
    t_go: float,
    kills: list[Kill],
    streams: list[tuple[int, str, float, float, float, bool, str | None, str]],
    samples: list[tuple[float, dict[int, int]]],
    left: list[str],
    exit_code: int | None,
) -> dict[str, Any]:
    """Which streams were exposed to a kill, which failed, and whether every property held."""
    windows = [(k.slot, k.t, (k.t_ready or k.t + 5.0) + cfg.grace_s) for k in kills]
    exposed_ids: set[int] = set()
    failed_exposed: list[str] = []
    failed_unexposed: list[str] = []
    for sid, path, t_open, t_end, t_heads, ok, error, slots in streams:
        mine = {owner_of(path, workers)} | {int(s) for s in slots.split(",") if s}
        # a party without its response head may sit on any worker (the one that accepted it,
        # before the hand-off to the owner): such a stream is exposed to every kill meanwhile
        hit = any(
            (slot in mine or not t_heads or t_heads > t0) and t_open <= t1 and t_end >= t0 for slot, t0, t1 in windows
        )
        if hit:
            exposed_ids.add(sid)
        if not ok:
            (failed_exposed if hit else failed_unexposed).append(
                f"{path} [{t_open - t_go:.1f}-{t_end - t_go:.1f}s]: {error}"
            )
    growth = rss_growth(samples, cfg.warmup_s)
    max_growth = max((g["growth"] for g in growth.values()), default=None)
    killed_left = [s for k in kills for s in k.segments_left or []]
    report: dict[str, Any] = {
        "workers": workers,
        "kills": [
            {
                "t_s": round(k.t - t_go, 1),
                "slot": k.slot,
                "pid": k.pid,
                "replaced_after_s": None if k.t_ready is None else round(k.t_ready - k.t, 2),
                "segments_left": k.segments_left or [],
            }
            for k in kills
        ],
        "streams": len(streams),
        "streams_ok": sum(1 for s in streams if s[5]),
        # per framing (the path's last part): [intact, all]
        "streams_by_framing": {
            framing: [
                sum(1 for s in streams if s[5] and s[1].endswith(f"-{framing}")),
                sum(1 for s in streams if s[1].endswith(f"-{framing}")),
            ]
            for framing in cfg.framings
        },
        "exposed": len(exposed_ids),
        "failed_exposed": len(failed_exposed),
        "failed_unexposed": failed_unexposed[:50],
        "failed_unexposed_count": len(failed_unexposed),
        "failed_exposed_examples": failed_exposed[:5],
        "rss_growth": {str(pid): g for pid, g in growth.items()},
        "rss_growth_max": max_growth,
        "segments_left_after_kill": killed_left,
        "segments_left_at_end": left,
        "server_exit": exit_code,
    }
    report["passed"] = (
        not failed_unexposed
        and max_growth is not None
        and max_growth < cfg.max_growth
        and not killed_left
        and not left
        and exit_code == 0
    )
    return report


def describe(report: dict[str, Any]) -> str:
    """The report as text."""
    lines = [
        f"streams: {report['streams']} ({report['streams_ok']} intact); exposed to a kill: {report['exposed']}, "
        f"of which failed: {report['failed_exposed']}; failed without exposure: {report['failed_unexposed_count']}",
        "by framing (intact/all): "
        + ", ".join(f"{name} {ok}/{n}" for name, (ok, n) in report.get("streams_by_framing", {}).items()),
    ]
    lines += [f"  unexposed failure: {x}" for x in report["failed_unexposed"][:10]]
    lines += [f"  exposed failure (expected): {x}" for x in report["failed_exposed_examples"][:3]]
    for k in report["kills"]:
        lines.append(
            f"kill t={k['t_s']:.1f}s slot {k['slot']} pid {k['pid']}: replaced after {k['replaced_after_s']} s, "
            f"its segments left: {len(k['segments_left'])}"
        )
    for pid, g in report["rss_growth"].items():
        lines.append(
            f"worker pid {pid}: RSS {g['rss_warm_mib']:.1f} MiB warm -> {g['rss_last_mib']:.1f} MiB "
            f"({100 * g['growth']:+.1f} %) over {g['span_s']:.0f} s, max {g['rss_max_mib']:.1f}"
        )
    pss = report.get("pss_mib") or []
    if pss:
        step = max(1, len(pss) // 12)
        lines.append("server PSS MiB over time: " + "  ".join(f"{t:.0f}s:{m:.0f}" for t, m in pss[::step]))
    lat = (report.get("latency_p50_ms"), report.get("latency_p99_ms"), report.get("latency_max_ms"))
    if lat[0] is not None:
        lines.append(f"token latency p50 {lat[0]:.2f} ms, p99 {lat[1]:.2f} ms, max {lat[2]:.1f} ms (2 % buckets)")
    if report.get("server_cpu_us_per_token"):
        lines.append(f"server CPU per token {report['server_cpu_us_per_token']:.1f} us (setups and kills included)")
    lines.append(
        f"segments left: after kills {len(report['segments_left_after_kill'])}, at the end "
        f"{len(report['segments_left_at_end'])}; server exit {report['server_exit']}"
    )
    growth = report["rss_growth_max"]
    lines.append(
        f"max RSS growth after warm-up: {'-' if growth is None else f'{100 * growth:.1f} %'}; "
        f"{'PASSED' if report['passed'] else 'FAILED'}"
    )
    return "\n".join(lines)
