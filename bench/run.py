#!/usr/bin/env python3
"""ringpipe vs piping-server 1.12.9 on loopback; every byte checked (see bench/README.md).

    python bench/run.py [--rounds 3] [--scenarios throughput,fanout,latency,pairs,idle,slow-reader,swarm,churn]
                        [--quick] [--workers N] [--workers-sweep 1,2,4 | --sweep] [--out FILE]
                        [--streams 500] [--readers 1] [--rate 25] [--records 100] [--ramp 2]

The benchmark itself is the ``ringbench`` package next to this file: one module per scenario,
plus the clients, the servers and the report.
"""

import sys

from ringbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
