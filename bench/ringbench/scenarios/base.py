"""What a scenario is to the benchmark: its cases, how one case runs against one server, and
how its results are shown.

A case is a dict: ``name`` (unique, shown in every table), ``scenario``, ``servers`` (the
labels it runs against, filled in by the CLI) and the scenario's own parameters. ``run`` gets
the case, the server it runs against and the parsed arguments, and returns one run record: a
dict with ``ok`` (every check passed), ``errors`` and the metrics named in ``metrics``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..servers import Server, ServerSpec

# (JSON key, column title, decimals); a scenario's first metric is its headline (sweep table)
Metric = tuple[str, str, int]
Case = dict[str, Any]
Record = dict[str, Any]


@dataclass
class Target:
    """One server as a run sees it. ``registry`` collects every server started, so that a
    scenario that starts its own (idle: a fresh one per run) has it stopped for sure."""

    spec: ServerSpec
    server: Server
    logdir: Path
    registry: list[Server]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        return self.server.pid


@dataclass(frozen=True)
class Scenario:
    name: str
    metrics: list[Metric]
    note: str  # printed under its table; ``{kind}`` becomes the memory kind (PSS or RSS)
    cases: Callable[[argparse.Namespace], list[Case]]  # name + parameters, without "servers"
    run: Callable[[Case, Target, argparse.Namespace], Record]
    no_ratio: frozenset[str] = field(default_factory=frozenset)  # near zero, or not the server's
    flag: Callable[[Record], str | None] = lambda _rec: None  # said first on a run's line
