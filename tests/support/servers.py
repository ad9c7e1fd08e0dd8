"""A real ringpipe server on a loopback port, and what a test checks of it afterwards.

``start_server`` starts ``python -m ringpipe serve --port 0`` as a real process tree
(supervisor + workers, its own process group), waits for its "ready" log line and returns a
``Server`` that follows its structured log. ``stop_and_check`` sends SIGTERM and checks what a
user would: it exits 0, leaves no process and no ``/dev/shm`` segment behind.

``kill_group`` and ``stop_group`` end a process group this test session started (a server, a
proxy, a browser): SIGKILL at once, or SIGTERM first and SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def shm_segments(prefix: str = "ringpipe-") -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


def shm_held(prefix: str = "ringpipe-") -> dict[str, int]:
    """Bytes of memory each ``/dev/shm`` file under ``prefix`` holds (its blocks, not its
    size: a worker's arena is a sparse file that holds nothing while no ring lives)."""
    held = {}
    for name in shm_segments(prefix):
        try:
            held[name] = os.stat(f"/dev/shm/{name}").st_blocks * 512
        except FileNotFoundError:
            pass
    return held


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wake_ups(pid: int) -> int:
    """How many times ``pid``'s main thread was switched out and back in (its voluntary and
    involuntary context switches): a process that sleeps until something happens adds none."""
    counts = [
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
    ]
    return sum(counts)


@dataclass
class Server:
    """A running ringpipe process tree."""

    proc: subprocess.Popen[bytes]
    url: str = ""
    port: int = 0
    logs: list[dict[str, object]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        return children_of(self.pid)

    def workers_by_slot(self) -> dict[int, int]:
        """Worker pid per slot, from the supervisor's "ready" and "worker_ready" log lines."""
        slots: dict[int, int] = {}
        with self._cond:
            for record in self.logs:
                if record.get("event") == "ready":
                    slots.update({int(k): int(v) for k, v in record["workers"].items()})  # type: ignore[attr-defined]
                elif record.get("event") == "worker_ready":
                    slots[int(record["slot"])] = int(record["worker_pid"])  # type: ignore[call-overload]
        return slots

    def stray_shm(self) -> dict[str, int]:
        """This server's ``/dev/shm`` files that should not be there now: any that holds
        memory (no ring is alive), and any of a worker that no longer runs."""
        live = set(self.workers())
        return {
            name: held
            for name, held in shm_held(f"ringpipe-{self.pid}-").items()
            if held or int(name.split("-")[2]) not in live
        }

    def all_pids(self) -> list[int]:
        return [self.pid, *self.workers()]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.all_pids():
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        return total

    def rss(self) -> int:
        total = 0
        for pid in self.all_pids():
            try:
                total += rss_bytes(pid)
            except OSError:
                pass
        return total

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.raw_lines.append(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self.logs.append(record)
                    if record.get("event") == "listening":
                        self.port = int(record["port"])  # type: ignore[call-overload]
                        self.url = str(record["url"])
                    if record.get("event") == "ready":
                        self._ready.set()
                self._cond.notify_all()

    def wait_log(self, predicate: Callable[[dict[str, object]], bool], timeout: float = 20.0) -> dict[str, object]:
        """Wait for a structured log line matching ``predicate`` (searching all lines so far)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for record in self.logs[seen:]:
                    if predicate(record):
                        return record
                seen = len(self.logs)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching log line; last lines:\n" + "\n".join(self.raw_lines[-20:]))
                self._cond.wait(left)

    def transfers(self) -> list[dict[str, object]]:
        with self._cond:
            return [r for r in self.logs if r.get("event") == "transfer"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise


#: What the ``server_factory`` fixture gives a test: ``factory(*serve_flags, env=...)``.
ServerFactory = Callable[..., Server]


def start_server(*args: str, env: dict[str, str] | None = None, ready_timeout: float = 30.0) -> Server:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_") and k != "PORT"}
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "ringpipe", "serve", "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stderr=subprocess.PIPE, start_new_session=True)
    server = Server(proc)
    threading.Thread(target=server._pump, daemon=True).start()
    if not server._ready.wait(ready_timeout):
        kill_group(proc)
        raise RuntimeError("server did not become ready:\n" + "\n".join(server.raw_lines[-30:]))
    return server


def stop_and_check(server: Server) -> list[str]:
    """SIGTERM ``server``; what is wrong afterwards: an exit status other than 0, a worker
    process still alive, a ``/dev/shm`` segment of it left behind."""
    problems = []
    workers = server.workers()
    code = server.stop()
    if code != 0:
        problems.append(f"server exited {code}")
    time.sleep(0.05)
    alive = [p for p in workers if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
    if alive:
        problems.append(f"worker processes left behind: {alive}")
    left = shm_segments(f"ringpipe-{server.pid}-")
    if left:
        problems.append(f"shared-memory segments left behind: {sorted(left)}")
    return problems


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


def metric(server: Server, name: str) -> float:
    """Sum of every sample of ``name`` on ``/metrics`` (all workers merged)."""
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and re.match(re.escape(name) + r"(\{| )", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def kill_group(proc: subprocess.Popen[Any], wait: float = 5.0) -> None:
    """kill -9 of ``proc``'s whole process group (it was started with ``start_new_session``),
    then reap ``proc``."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(wait)


def stop_group(proc: subprocess.Popen[Any], term_wait: float, kill_wait: float) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL it if ``proc`` has not exited after
    ``term_wait`` seconds; returns once ``proc`` is reaped (or ``kill_wait`` more seconds
    passed) or the group is gone."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
