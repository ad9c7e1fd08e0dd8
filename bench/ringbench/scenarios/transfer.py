"""``throughput`` (1 sender -> 1 receiver) and ``fanout`` (1 -> n, ``?n=N``): bulk bytes, every
one checked at every receiver.

The receivers connect and send their GET first, split over ``min(n, --client-procs)``
processes; the sender, in its own process, starts ``SETTLE_S`` after the last GET was written.
MB/s = n x size / (the sender's first byte -> the last receiver's last byte); server CPU is
counted per GB *delivered*, over the whole process tree.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from ..clients import Clients, Ctl, guard, outcomes, run_receivers, watch
from ..common import MB, MIB, SETTLE_S, STALL_S, budget_for, fmt_size, split_even
from ..measure import Meter, cpu_self
from ..receiver import Receiver
from ..wire import SendResult, connect, send_and_check, send_body
from .base import Case, Metric, Record, Scenario, Target

METRICS: list[Metric] = [
    ("mb_s", "MB/s", 0),
    ("server_cpu_s_per_gb", "srv CPU s/GB", 2),
    ("client_cpu_s", "client CPU s", 2),
    ("client_max_proc_pct", "client max proc %", 0),
    ("busy_cores", "busy cores", 2),
]


async def bulk_receivers(ctl: Ctl, port: int, target: str, count: int, size: int, budget_s: float) -> dict[str, Any]:
    recvs = [Receiver(port, target, size) for _ in range(count)]
    await run_receivers(ctl, recvs, budget_s)
    return {"receivers": [r.res.__dict__ for r in recvs]}


async def bulk_sender(ctl: Ctl, port: int, target: str, size: int, chunk: int, budget_s: float) -> dict[str, Any]:
    res = SendResult()
    sock = await connect(port)
    try:
        ctl.send("ready")
        await ctl.expect("go")
        cpu0 = cpu_self()
        task = asyncio.create_task(
            guard(res, send_and_check(sock, res, send_body(sock, port, target, size, chunk, res)))
        )
        await watch([task], lambda: res.nbytes + len(res.log), time.monotonic() + budget_s, [res])
    finally:
        sock.close()
    return {"sender": res.__dict__, "cpu_after_go_s": cpu_self() - cpu0}


def run_transfer(port: int, pid: int, n: int, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """throughput and fanout: 1 sender -> n receivers of ``size`` bytes; receivers connect first."""
    target = f"/bench-{uuid.uuid4().hex[:12]}" + (f"?n={n}" if n > 1 else "")
    budget = budget_for(n * size)
    nprocs = max(1, min(n, args.client_procs))
    record: dict[str, Any] = {"n": n, "size": size, "target": target, "receiver_procs": nprocs, "ok": False}
    with Clients() as cl:
        for count in split_even(n, nprocs):
            cl.spawn("receiver", bulk_receivers, port=port, target=target, count=count, size=size, budget_s=budget)
        si = cl.spawn("sender", bulk_sender, port=port, target=target, size=size, chunk=args.chunk, budget_s=budget)
        cl.expect_all("ready", 30)  # every receiver has written its GET; the sender is connected
        time.sleep(SETTLE_S)
        meter = Meter(pid)
        cl.send(si, "go")
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    receivers = [r for part in by_kind.get("receiver", []) for r in part["receivers"]]
    sender = by_kind["sender"][0]["sender"] if "sender" in by_kind else {}
    record.update(meter.stop(sum(proc_cpu)))
    errors += [f"receiver: {r['error']}" for r in receivers if not r["ok"]]
    if sender and not sender["ok"]:
        errors.append(f"sender: {sender['error']}")
    if len(receivers) != n:
        errors.append(f"{len(receivers)} receiver results for n={n}")
    record.update(sender=sender, receivers=receivers, errors=errors, client_proc_cpu_s=proc_cpu)
    if not errors and sender.get("t_start"):
        t_end = max(r["t_last"] for r in receivers)
        elapsed = t_end - sender["t_start"]
        srv = record["server_cpu_s"]
        record.update(
            ok=True,
            verified=True,
            elapsed_s=elapsed,
            mb_s=n * size / elapsed / MB,
            server_cpu_s_per_gb=srv / (n * size / 1e9),
            client_cpu_s=sum(proc_cpu),
            client_max_proc_pct=100 * max(proc_cpu) / elapsed,
            busy_cores=(srv + sum(proc_cpu)) / elapsed,
            framing=sorted({r["framing"] for r in receivers}),
            sender_log=sender.get("log", ""),
            # both servers say so when every receiver was already waiting as the sender arrived
            receivers_were_waiting=f"{n} receiver(s) has/have been connected" in sender.get("log", ""),
        )
    record["receivers"] = receivers[:4]  # keep the JSON small; errors are kept above
    return record


def fanout_size(args: argparse.Namespace, n: int) -> int:
    if args.fanout_size:
        return int(args.fanout_size)
    return max(32 * MIB, min(1 << 30, (8 << 30) // n))


def throughput_cases(args: argparse.Namespace) -> list[Case]:
    return [{"name": f"throughput 1->1 {fmt_size(args.size)}", "scenario": "throughput", "n": 1, "size": args.size}]


def fanout_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for n in args.fanout_n:
        size = fanout_size(args, n)
        cases.append({"name": f"fanout 1->{n} {fmt_size(size)}/rcv", "scenario": "fanout", "n": n, "size": size})
    return cases


def run_case(case: Case, target: Target, args: argparse.Namespace) -> Record:
    return run_transfer(target.port, target.pid, case["n"], case["size"], args)


THROUGHPUT = Scenario(
    name="throughput",
    metrics=METRICS,
    note="MB/s: bytes delivered / (sender's first byte -> last receiver's last byte), every byte verified.\n"
    "srv CPU s/GB: utime+stime of the server's whole process tree (/proc) per GB delivered.\n"
    "client CPU s: all client processes (getrusage); client max proc: the busiest client process's\n"
    "CPU / elapsed (100% = one core: that process would be the bottleneck). busy cores: (server +\n"
    "client CPU) / elapsed.",
    cases=throughput_cases,
    run=run_case,
)
FANOUT = Scenario(
    name="fanout",
    metrics=METRICS,
    note="fanout: MB/s is the aggregate (n x size / time); the same columns as throughput.",
    cases=fanout_cases,
    run=run_case,
)
