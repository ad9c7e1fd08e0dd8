"""``pairs``: many concurrent independent pipes (500 x 1 MiB), both parties of each at once.

Each pipe's sender (chunked PUT) and receiver (GET) live in the same client process, pipes
spread over ``--client-procs`` processes. On "go" every process starts all its parties at once
in a random order: connect, write the request head, then the sender writes its body and reads
its log, the receiver reads and checks its body. pipes/s counts connects too.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from ..clients import Clients, Ctl, guard, outcomes, watch
from ..common import MB, SEED, STALL_S, budget_for, fmt_size, percentile
from ..measure import Meter
from ..receiver import Receiver
from ..wire import SendResult, connect, send_and_check, send_body
from .base import Case, Record, Scenario, Target


async def pairs_client(
    ctl: Ctl, port: int, paths: list[str], size: int, chunk: int, budget_s: float, seed: int
) -> dict[str, Any]:
    """Both parties of each of ``paths``, all started at once in a random order."""
    recvs = [Receiver(port, p, size, bufsize=256 * 1024) for p in paths]
    sends = [SendResult() for _ in paths]
    socks: list[socket.socket] = []

    async def sender(path: str, res: SendResult) -> None:
        sock = await connect(port)
        socks.append(sock)
        await send_and_check(sock, res, send_body(sock, port, path, size, chunk, res))
        sock.close()

    async def receiver(r: Receiver) -> None:
        await r.open()
        await r.run()
        r.close()

    ctl.send("ready")
    await ctl.expect("go")
    t_go = time.monotonic()
    coros: list[tuple[Any, Awaitable[None]]] = [(r.res, receiver(r)) for r in recvs]
    coros += [(s, sender(p, s)) for p, s in zip(paths, sends, strict=True)]
    random.Random(seed).shuffle(coros)
    try:
        tasks = [asyncio.create_task(guard(res, coro)) for res, coro in coros]
        await watch(
            tasks,
            lambda: sum(r.res.nbytes for r in recvs) + sum(s.nbytes for s in sends),
            t_go + budget_s,
            [r.res for r in recvs] + sends,
        )
    finally:
        for r in recvs:
            r.close()
        for s in socks:
            s.close()
    return {
        "t_go": t_go,
        "pipes": [
            {"path": p, "receiver": r.res.__dict__, "sender": s.__dict__}
            for p, r, s in zip(paths, recvs, sends, strict=True)
        ],
    }


def run_pairs(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    npipes, size = args.pairs, args.pairs_size
    paths = [f"/bench-pair-{uuid.uuid4().hex}" for _ in range(npipes)]
    nprocs = max(1, min(npipes, args.client_procs))
    budget = budget_for(npipes * size)
    record: dict[str, Any] = {"pipes": npipes, "size": size, "client_procs": nprocs, "ok": False}
    with Clients() as cl:
        for i in range(nprocs):
            cl.spawn(
                "pairs",
                pairs_client,
                port=port,
                paths=paths[i::nprocs],
                size=size,
                chunk=args.chunk,
                budget_s=budget,
                seed=SEED + i,
            )
        cl.expect_all("ready", 60)
        time.sleep(0.2)
        meter = Meter(pid)
        cl.broadcast("go")
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    parts = by_kind.get("pairs", [])
    pipes = [p for part in parts for p in part["pipes"]]
    record.update(meter.stop(sum(proc_cpu)))
    for p in pipes:
        if not p["receiver"]["ok"]:
            errors.append(f"receiver {p['path']}: {p['receiver']['error']}")
        if not p["sender"]["ok"]:
            errors.append(f"sender {p['path']}: {p['sender']['error']}")
    if len(pipes) != npipes:
        errors.append(f"{len(pipes)} pipe results of {npipes}")
    record.update(errors=errors[:20], error_count=len(errors), client_proc_cpu_s=proc_cpu)
    if not errors:
        t_go = min(part["t_go"] for part in parts)
        wall = max(p["receiver"]["t_last"] for p in pipes) - t_go
        rv = sorted(
            1000 * (p["receiver"]["t_first"] - max(p["receiver"]["t_req"], p["sender"]["t_req"])) for p in pipes
        )
        head = sorted(
            1000 * (p["receiver"]["t_head"] - max(p["receiver"]["t_req"], p["sender"]["t_req"])) for p in pipes
        )
        done = sorted(1000 * (p["receiver"]["t_last"] - t_go) for p in pipes)
        record.update(
            ok=True,
            verified=True,
            wall_s=wall,
            pipes_s=npipes / wall,
            mb_s=npipes * size / wall / MB,
            rendezvous_p50_ms=percentile(rv, 0.5),
            rendezvous_p99_ms=percentile(rv, 0.99),
            rendezvous_max_ms=rv[-1],
            # go -> the last request head written: how long the clients took to get every party in
            requests_out_ms=1000 * (max(max(p["receiver"]["t_req"], p["sender"]["t_req"]) for p in pipes) - t_go),
            head_p50_ms=percentile(head, 0.5),
            done_p50_ms=percentile(done, 0.5),
            server_cpu_ms_per_pipe=1000 * record["server_cpu_s"] / npipes,
            client_cpu_s=sum(proc_cpu),
        )
    return record


def pairs_cases(args: argparse.Namespace) -> list[Case]:
    return [{"name": f"pairs {args.pairs}x{fmt_size(args.pairs_size)}", "scenario": "pairs"}]


def run_case(case: Case, target: Target, args: argparse.Namespace) -> Record:
    return run_pairs(target.port, target.pid, args)


PAIRS = Scenario(
    name="pairs",
    metrics=[
        ("pipes_s", "pipes/s", 0),
        ("rendezvous_p50_ms", "rendezvous p50 ms", 1),
        ("rendezvous_p99_ms", "rendezvous p99 ms", 1),
        ("requests_out_ms", "all requests out ms", 0),
        ("server_cpu_ms_per_pipe", "srv CPU ms/pipe", 2),
        ("client_cpu_s", "client CPU s", 2),
    ],
    note="pairs: pipes/s = pipes / (go -> last receiver's last byte), connects included. rendezvous: the\n"
    "receiver's first body byte - the later of the two request heads written (under this load it is\n"
    "mostly queueing behind the other pipes). all requests out: go -> the last request head written.",
    cases=pairs_cases,
    run=run_case,
    no_ratio=frozenset({"requests_out_ms"}),
)
