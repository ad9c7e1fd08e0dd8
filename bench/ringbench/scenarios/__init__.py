"""Every scenario the benchmark runs, by name, in the order its tables are printed."""

from __future__ import annotations

from .base import Scenario
from .churn import CHURN
from .idle import IDLE
from .latency import LATENCY
from .pairs import PAIRS
from .slow_reader import SLOW_READER
from .swarm import SWARM
from .transfer import FANOUT, THROUGHPUT

SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (THROUGHPUT, FANOUT, LATENCY, PAIRS, IDLE, SLOW_READER, SWARM, CHURN)
}
SWEEP_DEFAULT = ("pairs", "fanout")
