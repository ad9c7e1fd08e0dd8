"""ringpipe vs piping-server 1.12.9 on loopback: throughput, fan-out, latency, many pipes, idle
memory, a stalled reader, a swarm of token streams and a churn of short ones; every byte checked.

The command line of ``bench/run.py``: parse the options, start the servers side by side, run
every case against each of them, interleaved (the order flips every round), print each run as
it finishes and one table per scenario at the end, write the raw JSON, and stop every server it
started, also on Ctrl+C, SIGTERM or an exception.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .common import PERIOD, PIPING_VERSION, REF, RESULTS_DIR, RP, BenchError, fmt_size, parse_ints, parse_size
from .measure import machine_cpu, machine_facts
from .report import run_line, scaling_table, summarize
from .scenarios import SCENARIOS, SWEEP_DEFAULT
from .scenarios.base import Target
from .scenarios.swarm import default_procs
from .servers import Server, ServerSpec, ensure_piping, log_findings, start_server
from .tokens import FRAMINGS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="rounds; every case runs once per server per round (3)")
    p.add_argument("--scenarios", default=None, help="comma list of " + ",".join(SCENARIOS) + " (all)")
    p.add_argument("--quick", action="store_true", help="a tiny version of every scenario, 1 round (about a minute)")
    p.add_argument("--size", default=None, help="throughput: bytes sent 1 -> 1 (2GiB)")
    p.add_argument(
        "--fanout-size", default=None, help="fanout: bytes per receiver, or auto = 8GiB/n within 32MiB..1GiB (auto)"
    )
    p.add_argument("--fanout-n", default=None, help="fanout: comma list of receiver counts (1,16,64,256)")
    p.add_argument("--latency-n", default=None, help="latency: comma list of receiver counts (1,16)")
    p.add_argument("--latency-records", type=int, default=None, help="latency: records per run (1500)")
    p.add_argument("--latency-interval-ms", type=float, default=2.0, help="latency: ms between records (2)")
    p.add_argument("--pairs", type=int, default=None, help="pairs: concurrent independent pipes (500)")
    p.add_argument("--pairs-size", default=None, help="pairs: bytes per pipe (1MiB)")
    p.add_argument("--idle-conns", type=int, default=None, help="idle: waiting receivers (2000)")
    p.add_argument("--idle-sample", type=int, default=None, help="idle: waiting receivers then served for real (16)")
    p.add_argument("--idle-hold-s", type=float, default=None, help="idle: seconds the CPU is watched while held (3)")
    p.add_argument("--slow-cap", default=None, help="slow-reader: stop pushing here if nothing stalls (2GiB)")
    p.add_argument("--slow-rcvbuf", default="32KiB", help="slow-reader: SO_RCVBUF of the stalled reader (32KiB)")
    p.add_argument("--stall-settle", type=float, default=1.5, help="slow-reader: no progress for this long = stalled")
    p.add_argument("--streams", type=int, default=None, help="swarm: concurrent token streams (500)")
    p.add_argument("--readers", type=int, default=1, help="swarm: readers per stream, ?n= (1)")
    p.add_argument("--rate", type=float, default=25.0, help="swarm: records per second per stream (25)")
    p.add_argument(
        "--framing",
        choices=FRAMINGS,
        default="raw",
        help="swarm: ringpipe's readers read raw, SSE or NDJSON (?format=); piping-server's read raw (raw)",
    )
    p.add_argument("--records", type=int, default=None, help="swarm: records per stream (100)")
    p.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="swarm: seconds over which the streams start (2, or streams/250 if longer)",
    )
    p.add_argument("--swarm-lead", type=float, default=0.2, help="swarm: readers connect this long before the producer")
    p.add_argument("--swarm-procs", type=int, default=None, help="swarm: client processes (2..4 by nproc)")
    p.add_argument(
        "--swarm-one-owner",
        action="store_true",
        help="swarm (diagnostic): every stream's path hashes to ringpipe's worker 0, so one worker carries "
        "them all while the others run (what spreading streams over busy workers costs)",
    )
    p.add_argument("--churn-streams", type=int, default=None, help="churn: short streams measured (3000)")
    p.add_argument("--churn-concurrency", type=int, default=None, help="churn: streams in flight at most (50)")
    p.add_argument("--churn-tokens", type=int, default=3, help="churn: records per stream (3)")
    p.add_argument("--churn-warmup", type=int, default=None, help="churn: streams run first, not counted (100)")
    p.add_argument("--churn-procs", type=int, default=None, help="churn: client processes (1)")
    p.add_argument("--workers", type=int, default=None, help="ringpipe --workers (default: ringpipe's own)")
    p.add_argument(
        "--workers-sweep", default=None, help="ringpipe worker counts, e.g. 1,2,4: a scaling run (pairs,fanout)"
    )
    p.add_argument("--sweep", action="store_true", help="--workers-sweep 1..nproc")
    p.add_argument("--client-procs", type=int, default=None, help="client processes per run (default: nproc)")
    p.add_argument("--chunk", default="256KiB", help="sender chunk size, 64KiB..256KiB recommended (256KiB)")
    p.add_argument("--out", default=None, help="JSON output path (bench/results/<timestamp>.json)")
    args = p.parse_args(argv)
    q = args.quick
    nproc = os.cpu_count() or 1
    args.rounds = args.rounds or (1 if q else 3)
    args.size = parse_size(args.size or ("8MiB" if q else "2GiB"))
    args.fanout_size = args.fanout_size or ("2MiB" if q else "auto")
    args.fanout_size = None if args.fanout_size == "auto" else parse_size(args.fanout_size)
    args.fanout_n = parse_ints(args.fanout_n or ("2,16" if q else "1,16,64,256"))
    args.latency_n = parse_ints(args.latency_n or "1,16")
    args.latency_records = args.latency_records or (150 if q else 1500)
    args.pairs = args.pairs or (50 if q else 500)
    args.pairs_size = parse_size(args.pairs_size or ("256KiB" if q else "1MiB"))
    args.idle_conns = args.idle_conns or (200 if q else 2000)
    args.idle_sample = args.idle_sample if args.idle_sample is not None else (4 if q else 16)
    args.idle_sample_size = 64 * 1024
    args.idle_hold_s = args.idle_hold_s or (1.0 if q else 3.0)
    args.slow_cap = parse_size(args.slow_cap or ("512MiB" if q else "2GiB"))
    args.slow_rcvbuf = parse_size(args.slow_rcvbuf)
    args.streams = args.streams or (50 if q else 500)
    args.records = args.records or (20 if q else 100)
    if args.ramp is None:  # 2 s, or as long as 250 new streams per second take: no connect storm
        args.ramp = 0.5 if q else max(2.0, args.streams / 250)
    args.swarm_procs = args.swarm_procs or default_procs()
    args.churn_streams = args.churn_streams or (40 if q else 3000)
    args.churn_concurrency = args.churn_concurrency or (10 if q else 50)
    args.churn_warmup = args.churn_warmup if args.churn_warmup is not None else (10 if q else 100)
    args.churn_procs = args.churn_procs or 1
    args.chunk = parse_size(args.chunk)
    args.client_procs = args.client_procs or nproc
    args.pause = 0.2 if q else 1.0
    if args.sweep and not args.workers_sweep:
        args.workers_sweep = ",".join(str(w) for w in range(1, nproc + 1))
    args.workers_sweep = parse_ints(args.workers_sweep) if args.workers_sweep else None
    default = ",".join(SWEEP_DEFAULT if args.workers_sweep else SCENARIOS)
    args.scenarios = [s.strip() for s in (args.scenarios or default).split(",") if s.strip()]
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    if not 1 <= args.chunk <= PERIOD:
        p.error("--chunk must be 1 B .. 1 MiB")
    if args.workers_sweep and args.workers:
        p.error("--workers and --workers-sweep exclude each other")
    if args.readers < 1 or args.rate <= 0 or args.records < 1 or args.streams < 1:
        p.error("--streams, --readers, --records must be >= 1 and --rate > 0")
    if (
        min(args.churn_streams, args.churn_concurrency, args.churn_tokens, args.churn_procs) < 1
        or args.churn_warmup < 0
    ):
        p.error("--churn-streams, --churn-concurrency, --churn-tokens, --churn-procs must be >= 1, --churn-warmup >= 0")
    if any(n < 1 for n in args.fanout_n + args.latency_n) or (args.workers_sweep and min(args.workers_sweep) < 1):
        p.error("receiver and worker counts must be >= 1")
    return args


def make_cases(args: argparse.Namespace, labels: list[str]) -> list[dict[str, Any]]:
    """Every case of the chosen scenarios, in the registry's order, each against ``labels``."""
    cases: list[dict[str, Any]] = []
    for name, scenario in SCENARIOS.items():
        if name in args.scenarios:
            cases += [{**case, "servers": labels} for case in scenario.cases(args)]
    return cases


def run_case(
    case: dict[str, Any],
    spec: ServerSpec,
    server: Server,
    logdir: Path,
    args: argparse.Namespace,
    registry: list[Server],
) -> dict[str, Any]:
    return SCENARIOS[case["scenario"]].run(case, Target(spec, server, logdir, registry), args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers_sweep:
        specs = [ServerSpec(f"{RP} w={w}", RP, w) for w in args.workers_sweep] + [ServerSpec(REF, REF)]
    else:
        specs = [ServerSpec(RP, RP, args.workers), ServerSpec(REF, REF)]
    labels = [s.label for s in specs]
    cases = make_cases(args, labels)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 1 << 20)), hard))
    facts = machine_facts()
    facts["rlimit_nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    b0 = machine_cpu()
    time.sleep(1.0)
    b1 = machine_cpu()
    facts["busy_cores_before"] = round((b1[0] - b0[0]) / (b1[2] - b0[2]), 2)
    facts["steal_cores_before"] = round((b1[1] - b0[1]) / (b1[2] - b0[2]), 2)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix=f"ringpipe-bench-{stamp}-"))

    print("ringpipe vs piping-server benchmark")
    print(f"  date      {facts['date']}   loadavg {' '.join(facts['loadavg'])}")
    print(
        f"  machine   nproc={facts['nproc']} (affinity {facts['affinity']})  {facts['cpu_model']}"
        f"  mem {facts['memory']}  RLIMIT_NOFILE {facts['rlimit_nofile']}"
    )
    quiet = "" if facts["busy_cores_before"] < 0.2 else "   WARNING: the machine is busy, results will be noisy"
    print(
        f"  idle      before start: {facts['busy_cores_before']:.2f} cores busy, "
        f"{facts['steal_cores_before']:.2f} stolen (1 s sample){quiet}"
    )
    print(f"  software  python {facts['python']}  node {facts['node']}  kernel {facts['kernel']}")
    print(f"  servers   {facts['ringpipe']} (commit {facts['ringpipe_commit']})  piping-server {PIPING_VERSION}")
    print(
        f"  plan      rounds={args.rounds}  cases={len(cases)}  servers={', '.join(labels)}"
        f"  chunk={fmt_size(args.chunk)}"
        f"  client procs<={args.client_procs}  MB = 10^6 bytes, GB = 10^9 bytes"
    )
    sys.stdout.flush()

    servers: dict[str, Server] = {}
    registry: list[Server] = []  # every server started, the fresh ones of "idle" included
    runs: list[dict[str, Any]] = []

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    status = 0
    try:
        ensure_piping()
        for spec in specs:
            servers[spec.label] = start_server(spec, logdir)
            registry.append(servers[spec.label])
        started = ", ".join(
            f"{s.info['label']} on :{s.port}" + (f" ({s.info['workers']} workers)" if "workers" in s.info else "")
            for s in servers.values()
        )
        print(f"  started   {started}; logs in {logdir}\n", flush=True)
        by_label = {s.label: s for s in specs}
        for rnd in range(1, args.rounds + 1):
            for case in cases:
                order = case["servers"] if rnd % 2 else case["servers"][::-1]  # flip the order every round
                for label in order:
                    server = servers[label]
                    if server.proc.poll() is not None:
                        raise BenchError(f"{label} exited ({server.proc.returncode}); see {server.log_path}")
                    t0 = time.monotonic()
                    try:
                        rec = run_case(case, by_label[label], server, logdir, args, registry)
                    except BenchError as exc:
                        rec = {"ok": False, "errors": [str(exc)]}
                    rec.update(round=rnd, case=case["name"], scenario=case["scenario"], server=label)
                    rec.setdefault("verified", False)
                    runs.append(rec)
                    if rec["ok"]:
                        print(f"  round {rnd} {case['name']:<28} {label:<14} {run_line(rec)}", flush=True)
                    else:
                        status = 1
                        print(
                            f"  round {rnd} {case['name']:<28} {label:<14} FAILED after "
                            f"{time.monotonic() - t0:.1f} s: {'; '.join(rec['errors'])[:600]}",
                            flush=True,
                        )
                    time.sleep(args.pause)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        status = 130
    except Exception as exc:
        print(f"\nerror: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        for server in registry:
            server.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    text, summary = summarize(cases, runs)
    print()
    print(text)
    sweep_data = None
    if args.workers_sweep:
        sweep_text, sweep_data = scaling_table(summary, args.workers_sweep)
        print()
        print(sweep_text)
    findings = {}
    for server in registry:
        if server.name == RP:
            f = log_findings(server)
            findings[server.log_path.name] = f
            if f["during_runs"] or f["during_shutdown"]:
                print(
                    f"\nNOTE {server.log_path.name}: {f['during_runs']} warning/error line(s) during the runs "
                    f"({f['not_done_transfers']} transfer(s) not ending 'done'), {f['during_shutdown']} after "
                    "SIGTERM; e.g.\n    " + "\n    ".join(f["examples"][:3])
                )
    exits = {s.log_path.name: s.exit_code for s in registry}
    if any(code not in (0, None) for name, code in exits.items() if name.startswith(RP)):
        print(f"\nNOTE ringpipe exit codes after SIGTERM: {exits}")
    record = {
        "facts": facts,
        "args": {k: v for k, v in vars(args).items()},
        "servers": {
            s.log_path.name: {
                "port": s.port,
                "pid": s.pid,
                "pids": sorted(s.pids_seen | {s.pid}),
                "exit_code": s.exit_code,
                **s.info,
                "log": str(s.log_path),
            }
            for s in registry
        },
        "server_log_findings": findings,
        "cases": cases,
        "summary": summary,
        "sweep": sweep_data,
        "runs": runs,
        "status": status,
    }
    out_path.write_text(json.dumps(record, indent=1, default=str))
    print(f"\nraw results: {out_path}")
    if status == 0:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"server logs kept in {logdir}")
    return status
