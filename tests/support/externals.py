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
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import stop_group

#: The tests folder: the npm installs are cached in gitignored folders under it.
TESTS = Path(__file__).resolve().parents[1]

PIPING_VERSION = "1.12.9"
PIPING_DIR = TESTS / ".piping-server"
PIPING_JS = PIPING_DIR / "node_modules" / "piping-server" / "dist" / "src" / "index.js"

PLAYWRIGHT_VERSION = "1.65.1"
PLAYWRIGHT_DIR = TESTS / ".playwright"
PLAYWRIGHT_CORE = PLAYWRIGHT_DIR / "node_modules" / "playwright-core"

CHROMIUM = Path("/usr/bin/chromium")
JQ = Path("/usr/bin/jq")


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
    return apt_install("chromium", CHROMIUM)


def ensure_jq() -> Path:
    """Debian's jq at /usr/bin/jq (the LLM-token examples pipe curl into it)."""
    return apt_install("jq", JQ)


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
        stop_group(self.proc, term_wait=5.0, kill_wait=5.0)


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


HAPROXY = Path("/usr/sbin/haproxy")
#: One apt-get at a time across every checkout on the machine (apt's own lock covers only dpkg).
APT_LOCK_DIR = Path("/tmp/ringpipe-apt")
NGINX = Path("/usr/sbin/nginx")
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")


def apt_install(package: str, produces: Path) -> Path:
    """Debian's ``package`` (which installs ``produces``), installed with apt-get when missing.

    apt-get waits up to 10 minutes for another apt run's lock (``DPkg::Lock::Timeout``) and
    stale package lists are refreshed once. Whatever service the package starts is not used:
    tests run their own instances on their own ports.
    """
    if produces.exists():
        return produces
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        pytest.fail(f"{produces} is missing; install Debian's {package} package (apt-get install -y {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt, "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", package]
    with _install_lock(APT_LOCK_DIR):
        if produces.exists():
            return produces
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:  # stale or missing package lists (fresh containers): refresh once
            subprocess.run([apt, "-o", "DPkg::Lock::Timeout=600", "update"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not produces.exists():
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return produces


def ensure_haproxy() -> Path:
    """Debian's HAProxy (2.6 on bookworm) at /usr/sbin/haproxy."""
    return apt_install("haproxy", HAPROXY)


def ensure_nginx() -> Path:
    """Debian's nginx (1.22 on bookworm) at /usr/sbin/nginx."""
    return apt_install("nginx", NGINX)


def tool_version(binary: Path) -> str:
    """The first line ``binary -v`` prints (HAProxy on stdout, nginx on stderr)."""
    done = subprocess.run([str(binary), "-v"], capture_output=True, text=True, timeout=30)
    return (done.stdout or done.stderr).strip().splitlines()[0]


# --------------------------------------------------------------------------------------------
# Command-line tools from Debian packages (TLS and limit tests), and a throwaway certificate
# --------------------------------------------------------------------------------------------


def ensure_tool(binary: str, package: str) -> str:
    """``binary`` on PATH, installed from Debian's ``package`` with apt-get when we are root."""
    found = shutil.which(binary)
    if found is None:
        apt_install(package, Path("/usr/bin") / binary)
        found = shutil.which(binary)
    if found is None:
        pytest.fail(f"{binary} is still missing after installing {package}")
    return found


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for localhost and 127.0.0.1 (made with openssl): (cert, key)."""
    openssl = ensure_tool("openssl", "openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    cmd = [
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"openssl could not make a certificate:\n{done.stderr[-2000:]}")
    return cert, key


def ensure_prometheus() -> Path:
    """Debian's Prometheus server binary (package ``prometheus``)."""
    return apt_install("prometheus", PROMETHEUS)


def ensure_promtool() -> Path:
    """``promtool``, shipped in Debian's ``prometheus`` package."""
    return apt_install("prometheus", PROMTOOL)
