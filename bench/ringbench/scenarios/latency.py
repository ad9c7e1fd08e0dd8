"""``latency``: 64-byte records every 2 ms through one pipe to n receivers, n = 1 and 16.

The sender waits until its log says ``Start sending to N receiver(s)!``, then writes one HTTP
chunk per record (``40\\r\\n<64 bytes>\\r\\n``, one ``sendmsg``) on an absolute schedule. A
record is ``seq (u64) | send time (u64, time.monotonic_ns() just before the sendmsg) | 48
bytes of the pattern at seq x 48``. Receivers parse records out of the byte stream whatever the
server's chunking, stamp ``time.monotonic_ns()`` as each ``recv`` returns, and require every
record, in order, with the right filler. CLOCK_MONOTONIC is system-wide, so the sender's and
the receivers' clocks (different processes) agree.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import struct
import time
import uuid
from typing import Any

from ..clients import Clients, Ctl, guard, outcomes, run_receivers, watch
from ..common import PATTERN2, PERIOD, SETTLE_S, STALL_S, BenchError, percentile, split_even
from ..measure import Meter
from ..receiver import Receiver
from ..wire import CRLF, SendResult, connect, put_head, send_and_check, sendmsg_all, wait_log
from .base import Case, Record, Scenario, Target

REC = 64  # latency record: seq u64, send time u64 (ns, CLOCK_MONOTONIC), 48 bytes of pattern
REC_FILL = REC - 16
REC_HEAD = memoryview(f"{REC:x}\r\n".encode())


def record_filler(seq: int) -> memoryview:
    off = (seq * REC_FILL) % PERIOD
    return PATTERN2[off : off + REC_FILL]


class LatencyReceiver(Receiver):
    """Parses the body as 64-byte records (whatever the HTTP chunking): each must carry the next
    sequence number and its pattern filler; latency = time the recv returned - send time."""

    def __init__(self, port: int, target: str, records: int) -> None:
        super().__init__(port, target, records * REC, bufsize=64 * 1024)
        self.pending = bytearray()
        self.seq = 0
        self.lat_ns: list[int] = []

    def verify(self, start: int, length: int) -> None:
        res = self.res
        if res.nbytes + length > self.expected:
            raise BenchError(f"more data than expected: {res.nbytes + length} > {self.expected}")
        if res.t_first is None:
            res.t_first = time.monotonic()
        pending = self.pending
        pending += self.view[start : start + length]
        res.nbytes += length
        whole = len(pending) - len(pending) % REC
        for off in range(0, whole, REC):
            seq, t_sent = struct.unpack_from("<QQ", pending, off)
            if seq != self.seq:
                raise BenchError(f"record {self.seq}: got sequence number {seq} (lost, repeated or reordered)")
            if not pending.startswith(record_filler(seq), off + 16, off + REC):
                raise BenchError(f"record {seq}: content mismatch")
            self.lat_ns.append(self.t_recv_ns - t_sent)
            self.seq += 1
        del pending[:whole]


async def send_records(
    sock: socket.socket, port: int, target: str, records: int, interval_s: float, res: SendResult, late_ns: list[int]
) -> None:
    """One 64-byte record per chunk every ``interval_s``, once the log says the transfer started."""
    await sendmsg_all(sock, [put_head(port, target)])
    res.t_req = time.monotonic()
    await wait_log(res, "Start sending")
    res.t_start = time.monotonic()
    interval_ns = int(interval_s * 1e9)
    t0 = time.monotonic_ns()
    for seq in range(records):
        due = t0 + seq * interval_ns
        now = time.monotonic_ns()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
        filler = record_filler(seq)
        t_sent = time.monotonic_ns()
        record = struct.pack("<QQ", seq, t_sent) + filler
        await sendmsg_all(sock, [REC_HEAD, memoryview(record), CRLF])
        late_ns.append(t_sent - due)
        res.nbytes += REC
    await sendmsg_all(sock, [memoryview(b"0\r\n\r\n")])
    res.t_body_done = time.monotonic()


async def latency_receivers(
    ctl: Ctl, port: int, target: str, count: int, records: int, budget_s: float
) -> dict[str, Any]:
    recvs = [LatencyReceiver(port, target, records) for _ in range(count)]
    await run_receivers(ctl, recvs, budget_s)
    return {"receivers": [{**r.res.__dict__, "records": r.seq, "lat_ns": r.lat_ns} for r in recvs]}


async def latency_sender(
    ctl: Ctl, port: int, target: str, records: int, interval_s: float, budget_s: float
) -> dict[str, Any]:
    res = SendResult()
    late: list[int] = []
    sock = await connect(port)
    try:
        ctl.send("ready")
        await ctl.expect("go")
        body = send_records(sock, port, target, records, interval_s, res, late)
        task = asyncio.create_task(guard(res, send_and_check(sock, res, body)))
        await watch([task], lambda: res.nbytes + len(res.log), time.monotonic() + budget_s, [res])
    finally:
        sock.close()
    late.sort()
    return {
        "sender": res.__dict__,
        "late_p50_ms": (percentile(late, 0.5) or 0) / 1e6,
        "late_p99_ms": (percentile(late, 0.99) or 0) / 1e6,
        "late_max_ms": (late[-1] if late else 0) / 1e6,
    }


def run_latency(port: int, pid: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    target = f"/bench-lat-{uuid.uuid4().hex[:12]}" + (f"?n={n}" if n > 1 else "")
    records, interval = args.latency_records, args.latency_interval_ms / 1000
    budget = records * interval + 60
    nprocs = max(1, min(n, args.client_procs))
    record: dict[str, Any] = {"n": n, "records": records, "interval_ms": args.latency_interval_ms, "ok": False}
    with Clients() as cl:
        for count in split_even(n, nprocs):
            cl.spawn(
                "receiver", latency_receivers, port=port, target=target, count=count, records=records, budget_s=budget
            )
        si = cl.spawn(
            "sender", latency_sender, port=port, target=target, records=records, interval_s=interval, budget_s=budget
        )
        cl.expect_all("ready", 30)
        time.sleep(SETTLE_S)
        meter = Meter(pid)
        cl.send(si, "go")
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    receivers = [r for part in by_kind.get("receiver", []) for r in part["receivers"]]
    sent = by_kind["sender"][0] if "sender" in by_kind else {}
    sender = sent.get("sender", {})
    record.update(meter.stop(sum(proc_cpu)))
    errors += [f"receiver: {r['error']}" for r in receivers if not r["ok"]]
    errors += [
        f"receiver: {r['records']} of {records} records" for r in receivers if r["ok"] and r["records"] != records
    ]
    if sender and not sender["ok"]:
        errors.append(f"sender: {sender['error']}")
    if len(receivers) != n:
        errors.append(f"{len(receivers)} receiver results for n={n}")
    lat = sorted(x / 1e6 for r in receivers for x in r["lat_ns"])
    record.update(errors=errors, sender=sender, client_proc_cpu_s=proc_cpu)
    if not errors and lat:
        duration = sender["t_body_done"] - sender["t_start"]
        record.update(
            ok=True,
            verified=True,
            samples=len(lat),
            p50_ms=percentile(lat, 0.5),
            p90_ms=percentile(lat, 0.9),
            p99_ms=percentile(lat, 0.99),
            max_ms=lat[-1],
            min_ms=lat[0],
            mean_ms=statistics.fmean(lat),
            send_duration_s=duration,
            sender_late_p50_ms=sent["late_p50_ms"],
            sender_late_p99_ms=sent["late_p99_ms"],
            sender_late_max_ms=sent["late_max_ms"],
            server_cpu_pct=100 * record["server_cpu_s"] / record["window_s"],
            client_cpu_s=sum(proc_cpu),
            # per receiver: p99 in ms (how even the fan-out is)
            per_receiver_p99_ms=[percentile(sorted(x / 1e6 for x in r["lat_ns"]), 0.99) for r in receivers],
        )
    for r in receivers:
        del r["lat_ns"]
    record["receivers"] = receivers[:4]
    return record


def latency_cases(args: argparse.Namespace) -> list[Case]:
    return [
        {"name": f"latency 1->{n} {args.latency_records}x64B", "scenario": "latency", "n": n} for n in args.latency_n
    ]


def run_case(case: Case, target: Target, args: argparse.Namespace) -> Record:
    return run_latency(target.port, target.pid, case["n"], args)


LATENCY = Scenario(
    name="latency",
    metrics=[
        ("p50_ms", "p50 ms", 3),
        ("p99_ms", "p99 ms", 3),
        ("max_ms", "max ms", 2),
        ("sender_late_p99_ms", "sender late p99 ms", 2),
        ("server_cpu_pct", "srv CPU %", 1),
        ("client_cpu_s", "client CPU s", 2),
    ],
    note="latency: receive time (recv returned) - send time (stamped just before sendmsg) of every 64-byte\n"
    "record at every receiver, pooled; CLOCK_MONOTONIC is system-wide. sender late: how far behind its\n"
    "2 ms schedule the sender itself ran (high = the client was not scheduled: machine noise, not the\n"
    "server). srv CPU %: over the run.",
    cases=latency_cases,
    run=run_case,
    no_ratio=frozenset({"sender_late_p99_ms"}),
)
