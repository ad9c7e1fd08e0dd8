"""Outside programs the compatibility and browser tests need, installed once and cached.

- piping-server 1.12.9 (the reference server) and Playwright's ``playwright-core`` come from
  npm into gitignored folders under ``tests/`` (``tests/.piping-server/``,
  ``tests/.playwright/``); a later run finds them there and installs nothing.
- Chromium is Debian's ``chromium`` package. Where ``/usr/bin/chromium`` is missing and the
  tests run as root with ``apt-get`` (CI does), it is installed with apt; no browser is ever
  downloaded by Playwright.

A missing tool is a test *failure* with the command to fix it, never a skip: CI must run
these tests, not report them as skipped.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PIPING_VERSION = "1.12.9"
PIPING_DIR = TESTS / ".piping-server"
PIPING_JS = PIPING_DIR / "node_modules" / "piping-server" / "dist" / "src" / "index.js"

PLAYWRIGHT_VERSION = "1.65.1"
PLAYWRIGHT_DIR = TESTS / ".playwright"
PLAYWRIGHT_CORE = PLAYWRIGHT_DIR / "node_modules" / "playwright-core"

CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def _install_lock(folder: Path) -> Iterator[None]:
    """One installer at a time per folder (parallel pytest runs share the cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed; these tests need Node.js and npm (apt-get install -y nodejs npm)")
    return found


def npm_install(folder: Path, spec: str, produces: Path) -> None:
    """``npm install spec`` into ``folder`` unless ``produces`` is already there."""
    if produces.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is not installed; it is needed to install {spec} (apt-get install -y npm)")
    with _install_lock(folder):
        if produces.exists():
            return
        cmd = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--no-save", spec]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not produces.exists():
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def ensure_piping_server() -> Path:
    npm_install(PIPING_DIR, f"piping-server@{PIPING_VERSION}", PIPING_JS)
    return PIPING_JS


def ensure_playwright_core() -> Path:
    npm_install(PLAYWRIGHT_DIR, f"playwright-core@{PLAYWRIGHT_VERSION}", PLAYWRIGHT_CORE / "package.json")
    return PLAYWRIGHT_CORE


def ensure_chromium() -> Path:
    """Debian's Chromium at /usr/bin/chromium, installed with apt-get when we are root."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium package (apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt, "install", "-y", "--no-install-recommends", "chromium"]
    with _install_lock(TESTS / ".playwright"):
        if CHROMIUM.exists():
            return CHROMIUM
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:  # stale or missing package lists (fresh containers): refresh once
            subprocess.run([apt, "update"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class Reference:
    """A running piping-server (its own process group)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        """SIGTERM the group (SIGKILL after 5 s); afterwards no process of it is left."""
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def start_reference(log: Path) -> Reference:
    """piping-server 1.12.9 on a free loopback port (it cannot report a port it chose itself)."""
    script = ensure_piping_server()
    last = ""
    for _attempt in range(5):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [node(), str(script), "--host", "127.0.0.1", "--http-port", str(port)],
                cwd=PIPING_DIR,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        reference = Reference(proc, port, log)
        if wait_listening(port, proc):
            return reference
        reference.stop()
        last = log.read_text(errors="replace")[-2000:]
    pytest.fail(f"piping-server did not start:\n{last}")


# -- Prometheus (the metrics tests) --

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")


def apt_install(package: str, produces: Path) -> Path:
    """Debian's ``package`` via apt-get (as root), unless ``produces`` is already there.

    apt-get waits up to 10 minutes for a lock another apt holds (parallel installers on one
    machine); the package lists are refreshed once if the first attempt fails (fresh CI
    containers have none).
    """
    if produces.exists():
        return produces
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        pytest.fail(f"{produces} is missing; install Debian's {package} package (apt-get install -y {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    cmd = [apt, *lock, "install", "-y", "--no-install-recommends", package]
    with _install_lock(TESTS / ".playwright"):  # the lock ensure_chromium takes: one apt at a time
        if produces.exists():
            return produces
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            subprocess.run([apt, *lock, "update"], env=env, capture_output=True, timeout=900)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not produces.exists():
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return produces


def ensure_prometheus() -> Path:
    """Debian's Prometheus server binary (package ``prometheus``)."""
    return apt_install("prometheus", PROMETHEUS)


def ensure_promtool() -> Path:
    """``promtool``, shipped in Debian's ``prometheus`` package."""
    return apt_install("prometheus", PROMTOOL)
