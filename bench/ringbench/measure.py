"""What the benchmark measures outside its clients: a process tree's CPU time and memory
(from ``/proc``), the whole machine's busy and stolen time, and the facts of the machine.

A server is measured as its whole process tree: ringpipe = supervisor + workers, piping-server
= one node process. CPU counts reaped children too (cutime + cstime), so a worker that died or
was replaced keeps its time in the total.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .common import PIPING_VERSION, REPO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_cpu_split(root: int) -> tuple[float, float, int]:
    """(user, system) seconds of a tree, each with its reaped children's (cutime, cstime: a dead
    worker's time is kept), and the tree's process count."""
    user = system = 0
    pids = process_tree(root)
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:  # fields 14..17 of stat(5) (utime, stime, cutime, cstime) are f[11..14] here
            user += int(f[11]) + int(f[13])
            system += int(f[12]) + int(f[14])
    return user / CLK_TCK, system / CLK_TCK, len(pids)


def tree_cpu_seconds(root: int) -> tuple[float, int]:
    """utime+stime (+ reaped children's cutime+cstime, so a dead worker's time is kept) of a tree."""
    user, system, npids = tree_cpu_split(root)
    return user + system, npids


def _kib_field(path: str, name: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_memory(root: int) -> tuple[int, str, int]:
    """Memory of a process tree: (bytes, "PSS" or "RSS", process count). PSS (smaps_rollup,
    readable for our own processes and for root) splits shared pages (forked workers, shared
    memory) among their users; RSS counts them once per process."""
    pids = process_tree(root)
    pss = [_kib_field(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids]
    if all(v is not None for v in pss):
        return sum(v or 0 for v in pss), "PSS", len(pids)
    rss = [_kib_field(f"/proc/{pid}/status", "VmRSS:") or 0 for pid in pids]
    return sum(rss), "RSS", len(pids)


def wait_quiet(pid: int, limit_s: float = 20.0, step_s: float = 0.5, eps_s: float = 0.02) -> bool:
    """Wait until the process tree uses at most ``eps_s`` CPU-seconds per ``step_s``."""
    deadline = time.monotonic() + limit_s
    last = tree_cpu_seconds(pid)[0]
    while time.monotonic() < deadline:
        time.sleep(step_s)
        cur = tree_cpu_seconds(pid)[0]
        if cur - last <= eps_s:
            return True
        last = cur
    return False


def machine_cpu() -> tuple[float, float, float]:
    """Whole-machine (busy, steal, wall) seconds from /proc/stat: how noisy was the box."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK, time.monotonic()


class Meter:
    """Server CPU (whole process tree; user and system apart) and the rest of the machine over a window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.user0, self.sys0, _ = tree_cpu_split(pid)
        self.box0 = machine_cpu()

    def stop(self, client_cpu: float) -> dict[str, Any]:
        user1, sys1, npids = tree_cpu_split(self.pid)
        box1 = machine_cpu()
        window = max(1e-9, box1[2] - self.box0[2])
        user, system = user1 - self.user0, sys1 - self.sys0
        srv = user + system
        return {
            "server_cpu_s": srv,
            "server_user_s": user,
            "server_sys_s": system,
            "server_pids": npids,
            "window_s": window,
            # CPU used by anything that is neither the server nor the client, and time stolen
            # by the hypervisor, over the same window
            "other_cores": max(0.0, (box1[0] - self.box0[0]) - srv - client_cpu) / window,
            "steal_cores": (box1[1] - self.box0[1]) / window,
        }


def _cmd_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_facts() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, IndexError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1e6:.1f} GB"
    commit = _cmd_out(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_cmd_out(["git", "status", "--porcelain", "--", "ringpipe"]))
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _cmd_out(["node", "--version"]),
        "ringpipe": _cmd_out([sys.executable, "-m", "ringpipe", "--version"]),
        "ringpipe_commit": commit + ("+dirty" if dirty else ""),
        "piping_server": PIPING_VERSION,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "tcp_rmem": Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split(),
        "tcp_wmem": Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split(),
    }


def pss_bytes(pid: int) -> int | None:
    """One process's PSS (``/proc/PID/smaps_rollup``), None when unreadable or gone."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def rss_bytes(pid: int) -> int | None:
    """One process's RSS (``/proc/PID/status``), None when gone."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS:")


class MemorySampler:
    """A process tree's memory (``tree_memory``) every ``every_s`` seconds, on a thread, while a
    run goes on: its peak and its samples. Start it only after the run's clients are forked."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []  # (time.monotonic(), bytes)
        self.kind = "PSS"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            mem, kind, _ = tree_memory(self.pid)
            self.kind = kind
            self.samples.append((time.monotonic(), mem))
            if self._stop.wait(self.every_s):
                return

    @property
    def peak(self) -> int:
        return max((m for _t, m in self.samples), default=0)
