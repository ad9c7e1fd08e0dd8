"""``churn``: S short token streams (default 3000), one after another, at most C in flight (50).

What a pipe costs to set up and tear down, apart from what it costs per token: the swarm's
"setup ms/stream" is the run's CPU minus the steady per-token rate, so it also holds whatever
the streams cost while ramping up and down. Here every stream is short, K records (3), so the
set-up and tear-down are most of what the server does.

A stream, as ``tokens`` runs it: its reader dials and writes ``GET /path``; its producer dials
``LEAD_S`` later (never before the reader's GET is written) and writes ``PUT /path`` chunked,
then K records of 24 bytes, each its own chunk, ``INTERVAL_S`` apart (record 0 at once), then
the final 0-chunk. It is done when the reader checked all K records (in order, intact) and a
clean end, and the producer's response ended (200, no ``[ERROR]``). Paths are unique per stream
and per run. A stream not done within ``STREAM_LIMIT_S`` fails and frees its slot.

The streams are split over ``--churn-procs`` client processes (1), each running its share with
its share of C, a new stream the moment one ends. One is enough (~0.3 ms of client CPU per
stream: ~3000 streams/s on a core) and, on a small machine, keeps the server's per-stream CPU
clean: with 2 client processes on 2 cores, ringpipe's rose ~25% (1.0 -> 1.28 ms; sys 0.17 ->
0.28), piping-server's did not. First ``--churn-warmup`` streams (100), not
counted; once the server is quiet, "go": the server tree's CPU (``measure.Meter``: user and
system apart) from go until every client reported plus ``SETTLE_S`` (the last tear-downs), per
stream. Nothing else runs on the server in that window: no stream is in flight at either end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from array import array
from typing import Any

from ..clients import Clients, Ctl, outcomes
from ..common import percentile, split_even
from ..measure import Meter, cpu_self, wait_quiet
from ..tokens import Runner, Stream, Tally
from .base import Case, Record, Scenario, Target

LEAD_S = 0.002  # a stream's producer dials this long after its reader
INTERVAL_S = 0.005  # between a stream's records
STREAM_LIMIT_S = 30.0  # a stream not done by then fails
SETTLE_S = 0.3  # after the last stream: the server's last tear-downs are still the run's


def limit_s(streams: int) -> float:
    """How long a client's share of ``streams`` may take before the rest is failed."""
    return 60.0 + 0.02 * streams


class Churn:
    """Runs streams (sid, target) one after another, at most ``concurrency`` in flight: the next
    starts as one ends. Every stream started ends (ok or failed) within ``STREAM_LIMIT_S``."""

    def __init__(self, port: int, tokens: int, concurrency: int) -> None:
        self.tokens = tokens
        self.concurrency = concurrency
        self.tally = Tally()
        self.loop = asyncio.get_running_loop()
        self.runner = Runner(port, self.tally, self._ended)
        self.todo: list[tuple[int, str]] = []
        self.ended: list[Stream] = []
        self.limits: dict[int, asyncio.TimerHandle] = {}
        self.stopped = False
        self.all_ended: asyncio.Future[None] = self.loop.create_future()

    async def run(self, streams: list[tuple[int, str]], deadline: float) -> list[Stream]:
        """Every stream that ended by ``deadline`` (monotonic s); the others never started or were failed."""
        if not streams:
            return []
        self.todo = streams[::-1]  # popped from the end: in order
        for _ in range(min(self.concurrency, len(streams))):
            self._start_next()
        try:
            await asyncio.wait_for(self.all_ended, max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            self.stopped = True
            self.runner.abort("deadline")
        return self.ended

    def _start_next(self) -> None:
        if self.stopped or not self.todo:
            return
        sid, target = self.todo.pop()
        now = time.monotonic_ns()
        t_put = now + int(LEAD_S * 1e9)
        stream = Stream(sid, target, 1, self.tokens, int(INTERVAL_S * 1e9), now, t_put, t_put)
        self.runner.add(stream)
        self.limits[sid] = self.loop.call_later(STREAM_LIMIT_S, self._overdue, stream)

    def _overdue(self, stream: Stream) -> None:
        parties = [p for p in (*stream.readers, stream.producer) if p is not None and not p.finished]
        stream.fail(
            "timeout", f"not done in {STREAM_LIMIT_S:.0f} s: " + "; ".join(f"{p.who} {p.progress()}" for p in parties)
        )

    def _ended(self, stream: Stream) -> None:
        limit = self.limits.pop(stream.sid, None)
        if limit is not None:
            limit.cancel()
        self.ended.append(stream)
        if not self.todo and not self.limits and not self.all_ended.done():
            self.all_ended.set_result(None)
        else:
            self._start_next()


def summary(streams: int, ended: list[Stream]) -> dict[str, Any]:
    """What a batch's streams came to: counts, the first errors, the ok streams' times (ns)."""
    failed = [s for s in ended if not s.ok]
    times = array("q", (s.readers[0].t_done - s.t_open for s in ended if s.ok))
    return {
        "streams": streams,
        "ok": len(ended) - len(failed),
        "failed": streams - (len(ended) - len(failed)),
        "errors": [f"stream {s.sid}: {s.error}" for s in failed[:10]]
        + ([f"{streams - len(ended)} stream(s) never started (deadline)"] if len(ended) < streams else []),
        "times": times,
        "t_last_end": max((s.t_end for s in ended), default=0) / 1e9,
    }


async def churn_client(
    ctl: Ctl,
    port: int,
    warmup: list[tuple[int, str]],
    streams: list[tuple[int, str]],
    concurrency: int,
    tokens: int,
) -> dict[str, Any]:
    """This process's share: its warm-up streams on "warm", its measured streams on "go"."""
    ctl.send("ready")
    await ctl.expect("warm")
    warm = Churn(port, tokens, concurrency)
    ended = await warm.run(warmup, time.monotonic() + limit_s(len(warmup)))
    await asyncio.sleep(0.05)  # let the last closes go out
    warm_sum = summary(len(warmup), ended)
    ctl.send("warmed", {"failed": warm_sum["failed"], "errors": warm_sum["errors"]})
    await ctl.expect("go")
    t_go = time.monotonic()
    cpu0 = cpu_self()
    churn = Churn(port, tokens, concurrency)
    ended = await churn.run(streams, t_go + limit_s(len(streams)))
    cpu_run = cpu_self() - cpu0
    await asyncio.sleep(0.05)
    return {
        **summary(len(streams), ended),
        "t_go": t_go,
        "cpu_run_s": cpu_run,
        "delivered": churn.tally.delivered,
        "sent": churn.tally.sent,
    }


def run_churn(case: Case, target: Target, args: argparse.Namespace) -> Record:
    streams, concurrency, tokens, warm = case["streams"], case["concurrency"], case["tokens"], case["warmup"]
    procs = max(1, min(concurrency, streams, args.churn_procs))
    tag = uuid.uuid4().hex[:10]
    # sids: the warm-up's 0..W-1, then the measured W..W+S-1; each process takes every procs-th
    warm_all = [(sid, f"/churn-{tag}-{sid}") for sid in range(warm)]
    measured_all = [(sid, f"/churn-{tag}-{sid}") for sid in range(warm, warm + streams)]
    record: dict[str, Any] = {
        "streams": streams,
        "concurrency": concurrency,
        "tokens": tokens,
        "warmup": warm,
        "client_procs": procs,
        "ok": False,
    }
    with Clients() as cl:
        for i, share in enumerate(split_even(concurrency, procs)):
            cl.spawn(
                "churn",
                churn_client,
                fast_loop=True,
                port=target.port,
                warmup=warm_all[i::procs],
                streams=measured_all[i::procs],
                concurrency=share,
                tokens=tokens,
            )
        cl.expect_all("ready", 60)
        cl.broadcast("warm")
        warmed = cl.expect_all("warmed", limit_s(warm) + 30)
        wait_quiet(target.pid, limit_s=5.0, step_s=0.2)  # the warm-up's tail is not the run's
        meter = Meter(target.pid)
        cl.broadcast("go")
        children = cl.finish(time.monotonic() + limit_s(streams) + 30)
        by_kind, proc_cpu, errors = outcomes(children)
        parts = by_kind.get("churn", [])
        run_cpu = [p["cpu_run_s"] for p in parts]
        time.sleep(SETTLE_S)
        record.update(meter.stop(sum(run_cpu)))
    warm_failed = sum(w["failed"] for w in warmed)
    if warm_failed:
        errors.append(
            f"{warm_failed} of {warm} warm-up streams failed: "
            + "; ".join(e for w in warmed for e in w["errors"])[:300]
        )
    served = sum(p["ok"] for p in parts)
    failed = streams - served
    errors += [e for p in parts for e in p["errors"]][:20]
    times = sorted(t for p in parts for t in p["times"])
    delivered = sum(p["delivered"] for p in parts)
    record.update(
        errors=errors,
        error_count=len(errors),
        streams_served=served,
        streams_failed=failed,
        tokens_expected=streams * tokens,
        tokens_delivered=delivered,
        tokens_sent=sum(p["sent"] for p in parts),
        client_proc_cpu_s=proc_cpu,
        client_proc_run_cpu_s=run_cpu,
    )
    window = max((p["t_last_end"] for p in parts), default=0.0) - min((p["t_go"] for p in parts), default=0.0)
    if parts and served and window > 0:
        record.update(
            measured=True,
            window_run_s=window,
            server_cpu_ms_per_stream=1e3 * record["server_cpu_s"] / streams,
            server_user_ms_per_stream=1e3 * record["server_user_s"] / streams,
            server_sys_ms_per_stream=1e3 * record["server_sys_s"] / streams,
            streams_s=served / window,
            p50_ms=_ms(times, 0.5),
            p99_ms=_ms(times, 0.99),
            max_ms=times[-1] / 1e6,
            client_cpu_ms_per_stream=1e3 * sum(run_cpu) / streams,
            client_max_proc_pct=100 * max(run_cpu) / window,
        )
    if failed == 0 and delivered == streams * tokens and not errors:
        record.update(ok=True, verified=True)
    elif failed:
        errors.insert(0, f"{failed} of {streams} streams failed (served {served})")
    elif delivered != streams * tokens:
        errors.insert(0, f"{delivered} of {streams * tokens} tokens delivered")
    return record


def _ms(values: list[int], q: float) -> float | None:
    v = percentile(values, q)
    return None if v is None else v / 1e6


def churn_cases(args: argparse.Namespace) -> list[Case]:
    s, c, k = args.churn_streams, args.churn_concurrency, args.churn_tokens
    return [
        {
            "name": f"churn {s} C={c} K={k}",
            "scenario": "churn",
            "streams": s,
            "concurrency": c,
            "tokens": k,
            "warmup": args.churn_warmup,
        }
    ]


def client_bound(rec: Record) -> str | None:
    pct = rec.get("client_max_proc_pct")
    return (
        "CLIENT-BOUND (a client process near 100% of a core: streams/s is the client's)" if pct and pct >= 90 else None
    )


CHURN = Scenario(
    name="churn",
    metrics=[
        ("server_cpu_ms_per_stream", "srv CPU ms/stream", 3),
        ("server_user_ms_per_stream", "user ms", 3),
        ("server_sys_ms_per_stream", "sys ms", 3),
        ("streams_s", "streams/s", 0),
        ("p50_ms", "p50 ms", 1),
        ("p99_ms", "p99 ms", 1),
        ("client_cpu_ms_per_stream", "client ms/stream", 3),
        ("client_max_proc_pct", "client max proc %", 0),
        ("streams_failed", "failed", 0),
    ],
    note="churn: S short streams one after another, at most C in flight; each: reader GET, producer PUT "
    f"{LEAD_S * 1e3:g} ms\nlater, K records {INTERVAL_S * 1e3:g} ms apart, the end. "
    "srv CPU ms/stream = the server tree's CPU from go (warm-up done,\n"
    f"no stream in flight) until every client reported + {SETTLE_S:g} s, per stream; user / sys: its two parts.\n"
    "This is the per-pipe set-up + tear-down (accept, heads, rendezvous, ring, close, logs) that\n"
    "the swarm pays once per stream (there mixed into its setup ms/stream with the ramps), plus K tokens.\n"
    "streams/s: S / (go -> the last stream's end). p50 / p99: a stream's time, reader dial -> the\n"
    f"reader's clean end ({LEAD_S * 1e3:g} + (K-1) x {INTERVAL_S * 1e3:g} ms of it is the schedule). "
    "client ms/stream: the client\nprocesses' CPU per stream; client max proc %: the busiest one's "
    "CPU / the run (near 100%: the\nclient, not the server, limits streams/s). "
    "failed: streams with a record lost, wrong, cut or late.",
    cases=churn_cases,
    run=run_churn,
    no_ratio=frozenset({"client_cpu_ms_per_stream", "client_max_proc_pct", "streams_failed"}),
    flag=client_bound,
)
