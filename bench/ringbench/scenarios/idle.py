"""``idle``: memory per waiting receiver (2000 GETs on distinct paths, no sender).

For each run a **fresh** server is started (memory freed by earlier scenarios cannot hide the
cost), warmed with one 1 MiB transfer, and left until its CPU is quiet. Then the waiting GETs
are opened (100 connects at a time) and the server is left until quiet again. Checked: every
waiting receiver got no byte and was not closed (``MSG_PEEK``); then a sample of them is served
for real by a sender (every byte checked), the others close.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import uuid
from typing import Any

from ..clients import Clients, Ctl, guard, outcomes, watch
from ..common import MIB, BenchError, split_even
from ..measure import Meter, tree_memory, wait_quiet
from ..receiver import Receiver
from ..servers import start_server
from ..wire import SendResult, connect, send_and_check, send_body
from .base import Case, Record, Scenario, Target
from .transfer import run_transfer


async def idle_client(ctl: Ctl, port: int, paths: list[str], sample: int, size: int, chunk: int) -> dict[str, Any]:
    """Hold one waiting GET per path; on "check", make sure none got a byte or was closed, then
    complete ``sample`` of them with a real sender (every byte checked)."""
    recvs = [Receiver(port, p, size, bufsize=16 * 1024) for p in paths]
    try:
        for i in range(0, len(recvs), 100):  # 100 connects at a time
            await asyncio.gather(*(r.open() for r in recvs[i : i + 100]))
        ctl.send("ready", len(recvs))
        await ctl.expect("check")
        silent, problems = 0, []
        for r in recvs:
            assert r.sock is not None
            try:
                data = r.sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                silent += 1
                continue
            except OSError as exc:
                problems.append(f"{r.target}: {exc!r}")
                continue
            problems.append(f"{r.target}: " + (f"got {data[:40]!r} while waiting" if data else "closed while waiting"))
        picked = recvs[:sample]
        sends = [SendResult() for _ in picked]

        async def sender(r: Receiver, res: SendResult) -> None:
            sock = await connect(port)
            try:
                await send_and_check(sock, res, send_body(sock, port, r.target, size, chunk, res))
            finally:
                sock.close()

        tasks = [asyncio.create_task(guard(r.res, r.run())) for r in picked]
        tasks += [asyncio.create_task(guard(s, sender(r, s))) for r, s in zip(picked, sends, strict=True)]
        await watch(
            tasks,
            lambda: sum(r.res.nbytes for r in picked) + sum(s.nbytes for s in sends),
            time.monotonic() + 60,
            [r.res for r in picked] + sends,
        )
    finally:
        for r in recvs:
            r.close()
    return {
        "connections": len(recvs),
        "silent": silent,
        "problems": problems[:10],
        "problem_count": len(problems),
        "sample": [{"receiver": r.res.__dict__, "sender": s.__dict__} for r, s in zip(picked, sends, strict=True)],
    }


def run_idle(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh server: warm it with one transfer, then hold ``--idle-conns`` waiting receivers."""
    conns = args.idle_conns
    record: dict[str, Any] = {"connections": conns, "ok": False, "fresh_server": True}
    server = start_server(target.spec, target.logdir, suffix="idle")
    target.registry.append(server)
    try:
        warm = run_transfer(server.port, server.pid, 1, 1 << 20, args)
        if not warm["ok"]:
            raise BenchError(f"warm-up transfer failed: {warm['errors']}")
        wait_quiet(server.pid)
        mem0, kind, npids = tree_memory(server.pid)
        paths = [f"/bench-idle-{uuid.uuid4().hex}" for _ in range(conns)]
        nprocs = max(1, min(conns, args.client_procs))
        sample = split_even(args.idle_sample, nprocs)
        with Clients() as cl:
            for i in range(nprocs):
                cl.spawn(
                    "idle",
                    idle_client,
                    port=server.port,
                    paths=paths[i::nprocs],
                    sample=sample[i],
                    size=args.idle_sample_size,
                    chunk=args.chunk,
                )
            t0 = time.monotonic()
            cl.expect_all("ready", 120)
            record["connect_s"] = time.monotonic() - t0
            record["quiet"] = wait_quiet(server.pid)
            mem1, kind1, npids1 = tree_memory(server.pid)
            meter = Meter(server.pid)
            time.sleep(args.idle_hold_s)
            idle = meter.stop(0.0)
            cl.broadcast("check")
            children = cl.finish(time.monotonic() + 120)
        by_kind, proc_cpu, errors = outcomes(children)
        wait_quiet(server.pid, limit_s=10)
        mem2, _, _ = tree_memory(server.pid)
        parts = by_kind.get("idle", [])
        held = sum(p["connections"] for p in parts)
        silent = sum(p["silent"] for p in parts)
        problems = [x for p in parts for x in p["problems"]]
        samples = [s for p in parts for s in p["sample"]]
        errors += problems
        if held != conns:
            errors.append(f"{held} of {conns} waiting connections reported")
        if silent != conns:
            errors.append(f"{conns - silent} waiting receivers got bytes or were closed")
        for s in samples:
            if not s["receiver"]["ok"]:
                errors.append(f"sampled receiver: {s['receiver']['error']}")
            if not s["sender"]["ok"]:
                errors.append(f"sampled sender: {s['sender']['error']}")
        record.update(
            errors=errors[:20],
            mem_kind=kind if kind == kind1 else f"{kind}/{kind1}",
            server_mem_before=mem0,
            server_mem_waiting=mem1,
            server_mem_after_close=mem2,
            server_pids=[npids, npids1],
            idle_cpu_s=idle["server_cpu_s"],
            idle_window_s=idle["window_s"],
            other_cores=idle["other_cores"],
            steal_cores=idle["steal_cores"],
            sampled_transfers=len(samples),
            client_proc_cpu_s=proc_cpu,
        )
        if not errors:
            record.update(
                ok=True,
                verified=True,
                kib_per_conn=(mem1 - mem0) / conns / 1024,
                server_mib_waiting=mem1 / MIB,
                server_mib_after_close=mem2 / MIB,
                idle_cpu_pct=100 * idle["server_cpu_s"] / idle["window_s"],
            )
    finally:
        record["server_exit"] = server.stop()
    return record


def idle_cases(args: argparse.Namespace) -> list[Case]:
    return [{"name": f"idle {args.idle_conns} waiting", "scenario": "idle"}]


def run_case(case: Case, target: Target, args: argparse.Namespace) -> Record:
    return run_idle(target, args)


IDLE = Scenario(
    name="idle",
    metrics=[
        ("kib_per_conn", "KiB/conn", 2),
        ("server_mib_waiting", "srv MiB waiting", 1),
        ("server_mib_after_close", "srv MiB after", 1),
        ("idle_cpu_pct", "srv CPU % idle", 2),
    ],
    note="idle: fresh server, warmed with one 1 MiB transfer; KiB/conn = (memory with all receivers\n"
    "waiting - before) / connections; {kind}. srv MiB after: after they all left. srv CPU % idle:\n"
    "while holding them.",
    cases=idle_cases,
    run=run_case,
    no_ratio=frozenset({"idle_cpu_pct"}),
)
