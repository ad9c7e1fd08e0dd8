"""``slow-reader``: n=2, one receiver stops reading; how much does the path hold for it?

Both receivers connect first; the stalled one sets a small ``SO_RCVBUF`` before connecting,
reads its response head and then stops. The sender pushes as fast as the server takes it. Once
the transfer has started and the sender's count has not moved for ``--stall-settle`` seconds,
the bytes in flight are measured: pushed by the sender - reached the stalled reader's socket
(parsed + queued, ``FIONREAD``). Then the run ends cleanly and is checked: the stalled reader
resumes, the sender ends its body after the current chunk, and both receivers must get exactly
the bytes sent, each verified.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import uuid
from typing import Any

from ..clients import Clients, Ctl, guard, outcomes, watch
from ..common import MIB, SETTLE_S, STALL_S, budget_for
from ..measure import Meter, tree_memory
from ..receiver import Receiver
from ..wire import SendResult, connect, queued_bytes, send_and_check, send_body
from .base import Case, Record, Scenario, Target


async def slow_receivers(ctl: Ctl, port: int, target: str, cap: int, rcvbuf: int, budget_s: float) -> dict[str, Any]:
    """n=2: one receiver reads, the other reads its head and then holds until "resume"."""
    normal = Receiver(port, target, cap, exact=False)
    stalled = Receiver(port, target, cap, exact=False, rcvbuf=rcvbuf)
    stalled.hold = asyncio.Event()
    both = [normal, stalled]
    measured: dict[str, Any] = {}
    try:
        for r in both:
            await r.open()
        assert stalled.sock is not None
        measured["stalled_rcvbuf"] = stalled.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        ctl.send("ready")
        tasks = [asyncio.create_task(guard(r.res, r.run())) for r in both]
        total = None
        while total is None:
            tag, payload = await ctl.recv()
            if tag == "measure":
                got = {}
                for name, r in (("normal", normal), ("stalled", stalled)):
                    assert r.sock is not None
                    got[f"{name}_parsed"] = r.res.nbytes
                    got[f"{name}_queued"] = queued_bytes(r.sock)
                    got[f"{name}_head"] = r.res.t_head is not None
                measured.update(got)
                ctl.send("measured", got)
            elif tag == "resume":
                stalled.hold.set()
            elif tag == "total":
                total = int(payload)
        await watch(
            tasks, lambda: normal.res.nbytes + stalled.res.nbytes, time.monotonic() + budget_s, [r.res for r in both]
        )
        for r in both:
            if r.res.ok and r.res.nbytes != total:
                r.res.ok = False
                r.res.error = f"got {r.res.nbytes} bytes, the sender sent {total}"
    finally:
        for r in both:
            r.close()
    return {"receivers": [normal.res.__dict__, stalled.res.__dict__], "measured": measured}


async def slow_sender(
    ctl: Ctl, port: int, target: str, cap: int, chunk: int, settle_s: float, budget_s: float
) -> dict[str, Any]:
    """Push as fast as the server takes it; report ("stalled", bytes) once nothing moved for
    ``settle_s`` after the transfer started (or ("capped", bytes) at ``cap``); answer "count";
    on "finish" end the body after the current chunk."""
    res = SendResult()
    stop = False
    sock = await connect(port)
    try:
        ctl.send("ready")
        await ctl.expect("go")
        t_go = time.monotonic()
        body = send_body(sock, port, target, cap, chunk, res, stop=lambda: stop)
        task = asyncio.create_task(guard(res, send_and_check(sock, res, body)))

        async def detect() -> None:
            last, since = -1, time.monotonic()
            while True:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if res.nbytes != last or "Start sending" not in res.log:
                    last, since = res.nbytes, now
                elif now - since >= settle_s:
                    ctl.send("stalled", {"pushed": res.nbytes, "t_stall": since - t_go, "t_detect": now - t_go})
                    return
                if res.nbytes >= cap or task.done():
                    ctl.send(
                        "capped", {"pushed": res.nbytes, "t_stall": None, "t_detect": now - t_go, "ended": task.done()}
                    )
                    return

        await detect()
        while not stop:
            tag, _payload = await ctl.recv()
            if tag == "count":
                ctl.send("count", res.nbytes)
            elif tag == "finish":
                stop = True
        await watch([task], lambda: res.nbytes + len(res.log), time.monotonic() + budget_s, [res])
        ctl.send("total", res.nbytes if res.t_body_done else None)
    finally:
        sock.close()
    return {"sender": res.__dict__}


def run_slow_reader(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    target = f"/bench-slow-{uuid.uuid4().hex[:12]}?n=2"
    cap, budget = args.slow_cap, budget_for(2 * args.slow_cap)
    record: dict[str, Any] = {"n": 2, "cap": cap, "settle_s": args.stall_settle, "ok": False}
    with Clients() as cl:
        ri = cl.spawn(
            "receivers", slow_receivers, port=port, target=target, cap=cap, rcvbuf=args.slow_rcvbuf, budget_s=budget
        )
        si = cl.spawn(
            "sender",
            slow_sender,
            port=port,
            target=target,
            cap=cap,
            chunk=args.chunk,
            settle_s=args.stall_settle,
            budget_s=budget,
        )
        cl.expect_all("ready", 30)
        time.sleep(SETTLE_S)
        mem0, kind, _ = tree_memory(pid)
        meter = Meter(pid)
        cl.send(si, "go")
        tag, info = cl.expect(si, ("stalled", "capped"), budget)
        mem1, _, _ = tree_memory(pid)
        cl.send(ri, "measure")
        _, got = cl.expect(ri, ("measured",), 30)
        cl.send(si, "count")
        _, later = cl.expect(si, ("count",), 30)
        cl.send(ri, "resume")
        cl.send(si, "finish")
        _, total = cl.expect(si, ("total",), budget)
        cl.send(ri, "total", total if total is not None else -1)
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    rparts = by_kind.get("receivers", [])
    receivers = rparts[0]["receivers"] if rparts else []
    sender = by_kind["sender"][0]["sender"] if "sender" in by_kind else {}
    record.update(meter.stop(sum(proc_cpu)))
    errors += [
        f"{name} receiver: {r['error']}"
        for name, r in zip(("normal", "stalled"), receivers, strict=False)
        if not r["ok"]
    ]
    if sender and not sender["ok"]:
        errors.append(f"sender: {sender['error']}")
    if total is None:
        errors.append("the sender did not finish its body")
    pushed = info["pushed"]
    stalled_rcvd = got["stalled_parsed"] + got["stalled_queued"]
    normal_rcvd = got["normal_parsed"] + got["normal_queued"]
    record.update(
        errors=errors,
        stalled=tag == "stalled",
        stable=later == pushed,
        pushed_later=later,
        measured=got,
        stalled_rcvbuf=rparts[0]["measured"].get("stalled_rcvbuf") if rparts else None,
        sender_total=total,
        mem_kind=kind,
        client_proc_cpu_s=proc_cpu,
        receivers=receivers,
        sender=sender,
    )
    record.update(
        in_flight_mib=(pushed - stalled_rcvd) / MIB,
        sender_pushed_mib=pushed / MIB,
        stalled_received_mib=stalled_rcvd / MIB,
        normal_received_mib=normal_rcvd / MIB,
        normal_ahead_mib=(normal_rcvd - stalled_rcvd) / MIB,
        server_mem_growth_mib=(mem1 - mem0) / MIB,
        stall_after_s=info["t_stall"],
    )
    if not errors:
        record.update(ok=True, verified=True)
    return record


def slow_cases(args: argparse.Namespace) -> list[Case]:
    return [{"name": "slow-reader n=2", "scenario": "slow-reader"}]


def run_case(case: Case, target: Target, args: argparse.Namespace) -> Record:
    return run_slow_reader(target.port, target.pid, args)


def no_stall(rec: Record) -> str | None:
    return None if rec.get("stalled") else "NO STALL (upload reached --slow-cap)"


SLOW_READER = Scenario(
    name="slow-reader",
    metrics=[
        ("in_flight_mib", "in flight MiB", 2),
        ("sender_pushed_mib", "sent MiB", 2),
        ("normal_received_mib", "normal rcvd MiB", 2),
        ("stalled_received_mib", "stalled rcvd MiB", 3),
        ("server_mem_growth_mib", "srv mem +MiB", 1),
    ],
    note="slow-reader: in flight = bytes the sender's kernel accepted - bytes that reached the stalled\n"
    "reader's socket (parsed + queued), once nothing moved for the settle time; normal rcvd: the\n"
    "other receiver by then; srv mem +MiB: server memory growth from start to stall ({kind}).",
    cases=slow_cases,
    run=run_case,
    no_ratio=frozenset({"server_mem_growth_mib", "stalled_received_mib"}),
    flag=no_stall,
)
