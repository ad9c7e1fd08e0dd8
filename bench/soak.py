#!/usr/bin/env python3
"""A soak of ringpipe: a swarm of token streams at about half capacity for 20 minutes, with
``kill -9`` of a random worker every 2 minutes; then it checks that only the killed workers'
pipes failed, every other stream is intact, the surviving workers' RSS stayed flat after
warm-up (< 10 % growth) and no shared-memory segment is left (see bench/README.md).

    python bench/soak.py [--duration 20m] [--kill-every 2m] [--streams 250] [--readers 1]
                         [--rate 25] [--records 100] [--workers N] [--warmup 60] [--out FILE]

Exit status 0 when every property held, 1 when one did not, 130 on Ctrl+C.
"""

import argparse
import datetime as dt
import json
import resource
import sys
from pathlib import Path

from ringbench.common import RESULTS_DIR
from ringbench.soak import SoakConfig, describe, run_soak
from ringbench.tokens import FRAMINGS


def seconds(text: str) -> float:
    """``90``, ``90s``, ``20m``, ``1h``."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower())
    return float(text[:-1]) * scale if scale else float(text)


def main() -> int:
    defaults = SoakConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=seconds, default=defaults.duration_s, help="how long the load runs (20m)")
    p.add_argument("--kill-every", type=seconds, default=defaults.kill_every_s, help="kill -9 period (2m)")
    p.add_argument("--streams", type=int, default=defaults.streams, help="concurrent streams (250)")
    p.add_argument("--readers", type=int, default=defaults.readers, help="readers per stream (1)")
    p.add_argument(
        "--framings",
        type=lambda text: tuple(text.split(",")),
        default=defaults.framings,
        help="the streams' reader framings in turn, of raw,sse,ndjson (all three)",
    )
    p.add_argument("--rate", type=float, default=defaults.rate, help="records per second per stream (25)")
    p.add_argument("--records", type=int, default=defaults.records, help="records per stream (100)")
    p.add_argument("--workers", type=int, default=None, help="ringpipe --workers (its own default)")
    p.add_argument("--warmup", type=seconds, default=defaults.warmup_s, help="RSS warm-up per worker (60)")
    p.add_argument("--sample-every", type=seconds, default=defaults.sample_every_s, help="RSS sampling (5)")
    p.add_argument("--procs", type=int, default=defaults.procs, help="client processes (2..4 by nproc)")
    p.add_argument("--seed", type=int, default=None, help="which workers get killed")
    p.add_argument("--out", default=None, help="JSON report (bench/results/soak-<timestamp>.json)")
    args = p.parse_args()
    if not args.framings or not set(args.framings) <= set(FRAMINGS):
        p.error(f"--framings: a comma-separated list of {', '.join(FRAMINGS)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16), hard))
    cfg = SoakConfig(
        duration_s=args.duration,
        kill_every_s=args.kill_every,
        streams=args.streams,
        readers=args.readers,
        framings=args.framings,
        rate=args.rate,
        records=args.records,
        workers=args.workers,
        warmup_s=args.warmup,
        sample_every_s=args.sample_every,
        procs=args.procs,
        seed=args.seed,
    )
    try:
        report = run_soak(cfg)
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    print(describe(report))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else RESULTS_DIR / f"soak-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"report: {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
