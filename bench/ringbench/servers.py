"""The two servers under test, started side by side on loopback, and stopped for sure.

Each runs in its own session (process group), so stopping it (SIGTERM, 15 s, then SIGKILL to
the group) never touches anything else:

- ringpipe: ``python -m ringpipe serve --host 127.0.0.1 --port 0`` with its defaults (no
  ``RINGPIPE_*`` variable passes through); the port comes from its ``ready`` log line.
- piping-server 1.12.9, installed with npm into ``bench/.piping-server/`` on first use, on a
  free port picked here (it does not report the port it got for 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import BENCH_DIR, HOST, PIPING_VERSION, REPO, RP, BenchError
from .measure import process_tree

PIPING_DIR = BENCH_DIR / ".piping-server"
PIPING_JS = PIPING_DIR / "node_modules" / "piping-server" / "dist" / "src" / "index.js"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class ServerSpec:
    label: str  # "ringpipe", "ringpipe w=2", "piping-server"
    kind: str  # "ringpipe" or "piping-server"
    workers: int | None = None


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    pids_seen: set[int] = field(default_factory=set)
    log_size_at_stop: int | None = None  # where the log stood when SIGTERM was sent

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM the main process, then SIGKILL whatever is left of its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.pids_seen.update(process_tree(self.pid))
                self.log_size_at_stop = self.log_path.stat().st_size
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        if self.exit_code is None:
            self.exit_code = self.proc.poll()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return self.exit_code


def start_ringpipe(workers: int | None, log_path: Path) -> Server:
    cmd = [sys.executable, "-m", "ringpipe", "serve", "--host", HOST, "--port", "0"]
    if workers:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in [k for k in env if k.startswith("RINGPIPE_") or k == "PORT"]:
        del env[key]  # default settings, whatever this shell exports
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
        )
    server = Server("ringpipe", proc, 0, log_path, {"cmd": cmd})
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"ringpipe exited with {proc.returncode}; see {log_path}")
            for line in log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "listening":
                        server.port = int(event["port"])
                    if event.get("event") == "ready":
                        server.info["workers"] = len(event.get("workers", {}))
                        server.info["url"] = event["url"]
                        server.port = int(event["url"].rsplit(":", 1)[1])
                        return server
            time.sleep(0.1)
        raise BenchError(f"ringpipe not ready in 60 s; see {log_path}")
    except BaseException:
        server.stop()
        raise


def start_piping(log_path: Path) -> Server:
    node = shutil.which("node") or "node"
    last = ""
    for _attempt in range(5):  # piping-server does not report the port it got for 0: pick one
        port = free_port()
        cmd = [node, str(PIPING_JS), "--host", HOST, "--http-port", str(port)]
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                cmd, cwd=PIPING_DIR, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
            )
        server = Server("piping-server", proc, port, log_path, {"cmd": cmd})
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if port_open(port) and proc.poll() is None:
                    return server
                time.sleep(0.1)
        except BaseException:
            server.stop()
            raise
        last = f"exit {proc.returncode}" if proc.poll() is not None else "not listening in 30 s"
        server.stop()
    raise BenchError(f"piping-server did not start ({last}); see {log_path}")


def start_server(spec: ServerSpec, logdir: Path, suffix: str = "") -> Server:
    stem = spec.label.replace(" ", "-").replace("=", "") + (f"-{suffix}-{uuid.uuid4().hex[:6]}" if suffix else "")
    log_path = logdir / f"{stem}.log"
    server = start_ringpipe(spec.workers, log_path) if spec.kind == RP else start_piping(log_path)
    server.info["label"] = spec.label
    return server


def ensure_piping() -> None:
    if PIPING_JS.exists():
        return
    npm = shutil.which("npm")
    if not npm:
        raise BenchError("npm not found: it is needed to install piping-server")
    PIPING_DIR.mkdir(parents=True, exist_ok=True)
    print(f"installing piping-server@{PIPING_VERSION} into {PIPING_DIR} ...", flush=True)
    subprocess.run(
        [npm, "install", "--prefix", str(PIPING_DIR), "--no-audit", "--no-fund", f"piping-server@{PIPING_VERSION}"],
        check=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if not PIPING_JS.exists():
        raise BenchError(f"npm install did not produce {PIPING_JS}")


def log_findings(server: Server) -> dict[str, Any]:
    """ringpipe's log: warning/error lines and transfers that did not end "done", apart for
    the benchmark itself and for the shutdown (after SIGTERM)."""
    found: dict[str, Any] = {"during_runs": 0, "during_shutdown": 0, "not_done_transfers": 0, "examples": []}
    try:
        raw = server.log_path.read_bytes()
    except OSError:
        return found
    cut = server.log_size_at_stop if server.log_size_at_stop is not None else len(raw)
    for phase, chunk in (("during_runs", raw[:cut]), ("during_shutdown", raw[cut:])):
        for line in chunk.decode(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"level": "error"} if ("Traceback" in line or "Error" in line) else None
            if not isinstance(event, dict):
                continue
            bad = event.get("level") in ("warning", "error", "critical")
            if event.get("event") == "transfer" and event.get("ending") not in (None, "done"):
                found["not_done_transfers"] += 1
                bad = True
            if bad:
                found[phase] += 1
                if len(found["examples"]) < 6:
                    found["examples"].append(f"[{phase}] {line[:300]}")
    return found
