"""What an operator sees first: ``--help`` texts, the log format at a terminal, metrics at start-up."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

from ringpipe.ops.metrics import ANSWERED_CODES
from tests.support.servers import ROOT, Server


def _help(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ringpipe", *args, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_serve_help_shows_each_default_once_and_never_none() -> None:
    text = " ".join(_help("serve").split())
    assert "None" not in text
    assert "--log-format" in text
    for option, default in (("--host", "127.0.0.1"), ("--port", "8080"), ("--log-format", "auto")):
        block = text.split(f"{option} {option[2:].upper().replace('-', '_')} ", 1)[1].split(" --", 1)[0]
        assert block.count("default:") == 1 and f"default: {default}]" in block, block


def test_sign_usage_says_the_signing_key_is_required_and_whose_it_is() -> None:
    text = _help("sign")
    usage = text.split("\n\n")[0]
    assert "--signing-key KEY" in usage and "[--signing-key" not in usage
    assert "server's own --signing-key" in " ".join(text.split())


def test_every_rejection_series_exists_at_zero_before_the_first_request(server: Server) -> None:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    for code in ANSWERED_CODES:
        assert re.search(rf'^ringpipe_rejections_total\{{code="{code}"\}} 0\.0$', text, re.M), code


def _serve_at_a_terminal(*args: str) -> list[str]:
    """Start ``ringpipe serve`` with stderr on a pseudo-terminal; its lines up to "ready"."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringpipe", "serve", "--port", "0", "--workers", "1", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    buffer = b""
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in buffer and time.monotonic() < deadline:
            if select.select([leader], [], [], 1)[0]:
                try:
                    buffer += os.read(leader, 65536)
                except OSError:
                    break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        os.close(leader)
    return buffer.decode(errors="replace").splitlines()


def test_a_terminal_gets_readable_lines_and_json_can_be_forced() -> None:
    lines = _serve_at_a_terminal()
    ready = [line for line in lines if " ready" in line]
    assert ready and not ready[0].lstrip().startswith("{"), lines
    assert "supervisor" in ready[0]
    forced = _serve_at_a_terminal("--log-format", "json")
    assert any(json.loads(line).get("msg") == "ready" for line in forced if line.startswith("{")), forced
