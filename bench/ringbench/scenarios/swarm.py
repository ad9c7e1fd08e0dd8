"""``swarm``: S concurrent token streams (default 500), each one path with n readers; its
producer sends T records (100) of 24 bytes at R records/s (25), each its own HTTP chunk.

Stream starts are spread evenly over ``--ramp`` seconds; a stream's readers connect first, its
producer ``--swarm-lead`` later (and never before all its readers' GETs are written). Phases
are offset so that records do not go out in bursts: stream i's record times fall at
``frac(i * golden ratio)`` of the record interval. Every record is checked at every reader
(``tokens``). The streams are split over ``--swarm-procs`` client processes, each owning its
share of streams, both ends.

Measured: server CPU (whole process tree, from "go" until every client reported) per token
delivered; token latency (every record but a stream's first, at every reader, pooled) p50 /
p90 / p99 / max; first-token latency (record 0, which includes the pipe's setup: the producer
does not wait for ``Start sending``); server PSS peak (sampled every 0.5 s) and its growth over
the idle server per stream; each client process's CPU, per token it handled; streams failed.
A run with failed streams is not ok (exit status 1), but its metrics are still tabled: the
capacity runs (``--streams 10000 --rate 1``) are about how many streams each server served.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ringpipe.core.paths import owner_of

from ..clients import Clients, Ctl, outcomes
from ..common import MIB, percentile
from ..measure import MemorySampler, Meter, cpu_self, tree_cpu_seconds, tree_memory
from ..tokens import Runner, Stream, Tally
from .base import Case, Record, Scenario, Target

GOLDEN = 0.6180339887498949
GO_DELAY_S = 0.3  # "go" is sent this long before the plan's time 0, so every process is there


def plan(streams: int, rate: float, ramp_s: float, lead_s: float) -> list[tuple[float, float, float]]:
    """Per stream: (readers connect, producer connects, first record), seconds after time 0."""
    interval = 1.0 / rate
    out = []
    for sid in range(streams):
        t_open = ramp_s * sid / streams
        t_put = t_open + lead_s
        slot = (sid * GOLDEN) % 1.0 * interval
        out.append((t_open, t_put, t_put + (slot - t_put) % interval))
    return out


def slack_s(records: int, rate: float) -> float:
    """How long past its last scheduled record a run may take before its streams are failed."""
    return 60.0 + 0.5 * records / rate


async def swarm_client(
    ctl: Ctl,
    port: int,
    streams: list[tuple[int, str, float, float, float]],
    n: int,
    records: int,
    rate: float,
    framing: str = "raw",
) -> dict[str, Any]:
    """Run this process's share of the plan: (stream id, target, t_open, t_put, t_first)."""
    tally = Tally()
    ended: list[Stream] = []
    all_ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_end(stream: Stream) -> None:
        ended.append(stream)
        if len(ended) == len(streams) and not all_ended.done():
            all_ended.set_result(None)

    runner = Runner(port, tally, on_end)
    ctl.send("ready")
    t_go: float = await ctl.expect("go")
    cpu0 = cpu_self()
    base = int(t_go * 1e9)
    interval_ns = int(1e9 / rate)
    for sid, target, t_open, t_put, t_first in streams:
        runner.add(
            Stream(
                sid,
                target,
                n,
                records,
                interval_ns,
                base + int(t_open * 1e9),
                base + int(t_put * 1e9),
                base + int(t_first * 1e9),
                framing=framing,
            )
        )
    last_due = max((s[4] for s in streams), default=0.0) + records / rate
    deadline = t_go + last_due + slack_s(records, rate)
    if streams:
        try:
            await asyncio.wait_for(all_ended, max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            runner.abort("deadline")
    t_done = time.monotonic()
    await asyncio.sleep(0.05)  # let the last closes go out
    failed = [s for s in ended if not s.ok]
    return {
        "streams": len(streams),
        "ok": sum(1 for s in ended if s.ok),
        "failed": len(failed) + (len(streams) - len(ended)),
        "errors": [f"stream {s.sid}: {s.error}" for s in failed[:10]],
        "lat": tally.lat,
        "first": tally.first,
        "late": tally.late,
        "delivered": tally.delivered,
        "sent": tally.sent,
        "t_go": t_go,
        "t_done": t_done,
        "t_last_end": max((s.t_end for s in ended), default=0) / 1e9,
        "cpu_run_s": cpu_self() - cpu0,
    }


def _ms(values: list[int], q: float) -> float | None:
    v = percentile(values, q)
    return None if v is None else v / 1e6


def run_swarm(case: Case, target: Target, args: argparse.Namespace) -> Record:
    streams, n, records, rate = case["streams"], case["readers"], case["records"], case["rate"]
    # piping-server has only the raw framing: against a text framing of ringpipe, it serves raw
    framing = case.get("framing", "raw") if target.spec.kind == "ringpipe" else "raw"
    procs = max(1, min(streams, args.swarm_procs))
    tag = uuid.uuid4().hex[:10]
    query = f"?n={n}" if n > 1 else ""
    times = plan(streams, rate, args.ramp, args.swarm_lead)
    shares: list[list[tuple[int, str, float, float, float]]] = [[] for _ in range(procs)]
    paths = _paths(f"/swarm-{tag}-", _owner_workers(target, args) if args.swarm_one_owner else 1)
    for sid, (t_open, t_put, t_first) in enumerate(times):
        shares[sid % procs].append((sid, f"{next(paths)}{query}", t_open, t_put, t_first))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    conns_per_proc = max(len(s) for s in shares) * (n + 1)
    record: dict[str, Any] = {
        "streams": streams,
        "readers": n,
        "records": records,
        "rate": rate,
        "framing": framing,
        "ramp_s": args.ramp,
        "client_procs": procs,
        "rlimit_nofile": nofile,
        "client_conns_per_proc": conns_per_proc,
        "ok": False,
    }
    budget = max(t[2] for t in times) + records / rate + slack_s(records, rate) + 60
    mem0, kind, _ = tree_memory(target.pid)
    with Clients() as cl:
        for share in shares:
            cl.spawn(
                "swarm",
                swarm_client,
                fast_loop=True,
                port=target.port,
                streams=share,
                n=n,
                records=records,
                rate=rate,
                framing=framing,
            )
        cl.expect_all("ready", 60)
        with MemorySampler(target.pid) as sampler:
            meter = Meter(target.pid)
            t_go = time.monotonic() + GO_DELAY_S
            steady = SteadyWindow(target.pid, t_go, steady_window(times, records, rate))
            cl.broadcast("go", t_go)
            children = cl.finish(t_go + budget)
            steady.join()
    by_kind, proc_cpu, errors = outcomes(children)
    parts = by_kind.get("swarm", [])
    record.update(meter.stop(sum(proc_cpu)))
    served = sum(p["ok"] for p in parts)
    failed = streams - served
    errors += [e for p in parts for e in p["errors"]][:20]
    lat = sorted(x for p in parts for x in p["lat"])
    first = sorted(x for p in parts for x in p["first"])
    late = sorted(x for p in parts for x in p["late"])
    delivered = sum(p["delivered"] for p in parts)
    # the run's window for the clients: from time 0 of the plan to the last stream's end
    window = max((p["t_last_end"] for p in parts), default=t_go) - t_go
    run_cpu = [p["cpu_run_s"] for p in parts]
    handled = [p["delivered"] + p["sent"] for p in parts]
    us_per_token = [1e6 * c / h if h else None for c, h in zip(run_cpu, handled, strict=True)]
    record.update(
        errors=errors,
        error_count=len(errors),
        streams_served=served,
        streams_failed=failed,
        tokens_expected=streams * n * records,
        tokens_delivered=delivered,
        tokens_sent=sum(p["sent"] for p in parts),
        client_proc_cpu_s=proc_cpu,
        client_proc_run_cpu_s=run_cpu,
        client_proc_us_per_token=us_per_token,
        mem_kind=sampler.kind,
        server_mem_before=mem0,
        server_mem_peak=sampler.peak,
        server_mem_samples=len(sampler.samples),
    )
    if parts and delivered and window > 0:
        busiest = max(run_cpu)
        record.update(
            measured=True,
            window_run_s=window,
            cpu_us_per_token=1e6 * record["server_cpu_s"] / delivered,
            p50_ms=_ms(lat, 0.5),
            p90_ms=_ms(lat, 0.9),
            p99_ms=_ms(lat, 0.99),
            max_ms=lat[-1] / 1e6 if lat else None,
            first_p50_ms=_ms(first, 0.5),
            first_p99_ms=_ms(first, 0.99),
            first_max_ms=first[-1] / 1e6 if first else None,
            sender_late_p50_ms=_ms(late, 0.5),
            sender_late_p99_ms=_ms(late, 0.99),
            sender_late_max_ms=late[-1] / 1e6 if late else None,
            pss_peak_mib=sampler.peak / MIB,
            pss_kib_per_stream=max(0, sampler.peak - mem0) / streams / 1024,
            client_max_proc_pct=100 * busiest / window,
            # a client process saturates one core at this many tokens/s (sent + delivered)
            client_limit_tokens_s=min(1e6 / u for u in us_per_token if u) if any(us_per_token) else None,
            tokens_s=sum(handled) / window,
        )
        if steady.cpu_s is not None and steady.span_s:
            # every stream is between its first and last record: n tokens per stream per 1/rate
            record.update(
                steady_window_s=steady.span_s,
                steady_cpu_us_per_token=1e6 * steady.cpu_s / (streams * n * rate * steady.span_s),
                setup_cpu_ms_per_stream=max(
                    0.0, record["server_cpu_s"] - steady.cpu_s * delivered / (streams * n * rate * steady.span_s)
                )
                * 1e3
                / streams,
            )
    if failed == 0 and delivered == streams * n * records and not errors:
        record.update(ok=True, verified=True)
    elif failed:
        errors.insert(0, f"{failed} of {streams} streams failed (served {served})")
    elif delivered != streams * n * records:
        errors.insert(0, f"{delivered} of {streams * n * records} tokens delivered")
    return record


def steady_window(times: list[tuple[float, float, float]], records: int, rate: float) -> tuple[float, float] | None:
    """The stretch (plan seconds) when every stream is between its first and last record,
    trimmed 0.25 s at each end; None when it is shorter than a second."""
    start = max(t_first for _, _, t_first in times) + 0.25
    end = min(t_first for _, _, t_first in times) + (records - 1) / rate - 0.25
    return (start, end) if end - start >= 1.0 else None


class SteadyWindow(threading.Thread):
    """Server CPU over ``steady_window``: the per-token cost with no pipe setting up or
    ending (``setup_cpu_ms_per_stream`` is the rest of the run's CPU, per stream)."""

    def __init__(self, pid: int, t_go: float, window: tuple[float, float] | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.t_go, self.window = pid, t_go, window
        self.cpu_s: float | None = None
        self.span_s = 0.0
        self.start()

    def run(self) -> None:
        if self.window is None:
            return
        start, end = (self.t_go + t for t in self.window)
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0, t0 = tree_cpu_seconds(self.pid)[0], time.monotonic()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu1, t1 = tree_cpu_seconds(self.pid)[0], time.monotonic()
        self.cpu_s, self.span_s = cpu1 - cpu0, t1 - t0


def _paths(prefix: str, workers: int) -> Iterator[str]:
    """``prefix0``, ``prefix1``, ... — those whose owner (ringpipe's ``owner_of``) is
    worker 0 of ``workers``."""
    for i in itertools.count():
        path = f"{prefix}{i}"
        if workers <= 1 or owner_of(path, workers) == 0:
            yield path


def _owner_workers(target: Target, args: argparse.Namespace) -> int:
    """ringpipe's worker count (as it reported it at start), for ``--swarm-one-owner``;
    piping-server gets paths chosen the same way (for it they are just paths)."""
    workers = target.server.info.get("workers") if target.spec.kind == "ringpipe" else None
    return int(workers or args.workers or len(os.sched_getaffinity(0)))


def swarm_cases(args: argparse.Namespace) -> list[Case]:
    rate = f"{args.rate:g}/s"
    name = f"swarm {args.streams}x{rate} n={args.readers} T={args.records}"
    if args.framing != "raw":
        name += f" {args.framing} (piping-server: raw)"
    if args.swarm_one_owner:
        name += " one owner"
    return [
        {
            "name": name,
            "scenario": "swarm",
            "framing": args.framing,
            "streams": args.streams,
            "readers": args.readers,
            "records": args.records,
            "rate": args.rate,
        }
    ]


def default_procs() -> int:
    """2 to 4 client processes: enough that no single one is the limit on a small machine,
    not so many that they crowd out the server on 2 cores."""
    return max(2, min(4, os.cpu_count() or 1))


SWARM = Scenario(
    name="swarm",
    metrics=[
        ("cpu_us_per_token", "srv CPU us/token", 1),
        ("steady_cpu_us_per_token", "steady us/token", 1),
        ("setup_cpu_ms_per_stream", "setup ms/stream", 2),
        ("p50_ms", "p50 ms", 3),
        ("p90_ms", "p90 ms", 3),
        ("p99_ms", "p99 ms", 2),
        ("max_ms", "max ms", 1),
        ("first_p99_ms", "1st p99 ms", 1),
        ("pss_peak_mib", "srv PSS peak MiB", 1),
        ("pss_kib_per_stream", "KiB/stream", 1),
        ("client_max_proc_pct", "client max proc %", 0),
        ("sender_late_p99_ms", "late p99 ms", 2),
        ("streams_failed", "failed", 0),
    ],
    note="swarm: srv CPU us/token = the server tree's CPU from go to the last client's report / tokens\n"
    "delivered (every reader's). steady us/token: the same over the stretch when every stream is\n"
    "between its first and last record (no pipe setting up or ending), per token scheduled;\n"
    "setup ms/stream: the rest of the run's server CPU, per stream (set-up, teardown, idle).\n"
    "p50..max: latency of every token but a stream's first, at every reader (recv time - send\n"
    "time); 1st p99: the first token's, which includes the pipe's setup. srv PSS peak: the server\n"
    "tree's memory ({kind}) sampled every 0.5 s; KiB/stream: (peak - idle server) / streams.\n"
    "client max proc %: the busiest client process's CPU / the run (100% = it was the limit).\n"
    "late p99: how far behind schedule the producers wrote. failed: streams with any record\n"
    "lost, wrong, late to end or cut (its metrics still count what was delivered).",
    cases=swarm_cases,
    run=run_swarm,
    no_ratio=frozenset({"sender_late_p99_ms", "client_max_proc_pct", "streams_failed"}),
)
