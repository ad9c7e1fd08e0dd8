"""The fleet file: the supervisor's published view of its workers, and the worker exit-code contract.

The supervisor is the only writer (``write_fleet``, an atomic rename); ``/readyz``, the
metrics scrape and tests read it (``read_fleet``). It lives here, below the process layer,
so that readers in lower layers never import the supervisor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["BOOT_ERROR", "FLEET_FILE", "Fleet", "read_fleet", "write_fleet"]

#: A worker's exit status when it could not start serving (bind, import, settings): the
#: supervisor stops instead of respawning it in a loop (gunicorn's WORKER_BOOT_ERROR).
BOOT_ERROR: Final = 3
FLEET_FILE: Final = "fleet.json"


@dataclass(frozen=True, slots=True)
class Fleet:
    """The supervisor's view of its workers, as published in the fleet file."""

    supervisor_pid: int
    expected: int
    #: slot -> pid of the worker process running in it now
    workers: dict[int, int]
    #: slots whose current worker reported ready (listening and meshed)
    ready: frozenset[int]
    stopping: bool


def read_fleet(runtime_dir: Path) -> Fleet | None:
    """The fleet as the supervisor last published it; None if there is no (valid) file."""
    try:
        data = json.loads((runtime_dir / FLEET_FILE).read_text())
        return Fleet(
            supervisor_pid=int(data["supervisor_pid"]),
            expected=int(data["expected"]),
            workers={int(slot): int(pid) for slot, pid in data["workers"].items()},
            ready=frozenset(int(slot) for slot in data["ready"]),
            stopping=bool(data["stopping"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_fleet(runtime_dir: Path, fleet: Fleet) -> None:
    """Replace the fleet file atomically (a temporary file, then a rename).

    Raises:
        OSError: the runtime directory cannot be written; the caller logs it and goes on.
    """
    data = {
        "supervisor_pid": fleet.supervisor_pid,
        "expected": fleet.expected,
        "workers": {str(slot): pid for slot, pid in sorted(fleet.workers.items())},
        "ready": sorted(fleet.ready),
        "stopping": fleet.stopping,
    }
    target = runtime_dir / FLEET_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, target)
