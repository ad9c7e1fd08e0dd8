"""``ringpipe serve`` as a user types it: flags, environment variables, ``PORT``, errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.servers import ROOT, ServerFactory


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_") and k != "PORT"}
    env.update(extra)
    return env


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringpipe", "serve", *args],
        cwd=ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "mentions"),
    [
        (["--port", "70000"], {}, "--port"),
        (["--port", "http"], {}, "--port"),
        (["--workers", "0"], {}, "--workers"),
        (["--ring-bytes", "1000"], {}, "--ring-bytes"),
        (["--max-receivers", "257"], {}, "--max-receivers"),
        (["--graceful-timeout", "-1"], {}, "--graceful-timeout"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        ([], {"RINGPIPE_WORKERS": "many"}, "RINGPIPE_WORKERS"),
        ([], {"PORT": "-5"}, "PORT"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(args: list[str], env: dict[str, str], mentions: str) -> None:
    result = serve(*args, env=clean_env(**env))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ringpipe: error: ") and mentions in lines[0]


def test_help_lists_every_option() -> None:
    result = serve("--help")
    assert result.returncode == 0
    for flag in (
        "--host",
        "--port",
        "--workers",
        "--ring-bytes",
        "--max-receivers",
        "--graceful-timeout",
        "--log-level",
    ):
        assert flag in result.stdout
    for variable in ("RINGPIPE_WORKERS", "PORT"):
        assert variable in result.stdout


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = serve("--port", str(taken.getsockname()[1]), "--workers", "1")
    assert result.returncode != 0
    assert "cannot listen" in result.stderr


def test_env_max_receivers_is_enforced(server_factory: ServerFactory) -> None:
    server = server_factory(env={"RINGPIPE_WORKERS": "3", "RINGPIPE_MAX_RECEIVERS": "4"})
    assert len(server.workers()) == 3
    try:
        urllib.request.urlopen(server.url + "/too-many?n=5", timeout=10)
    except urllib.error.HTTPError as refused:
        assert refused.code == 400
        assert refused.read().decode().startswith("[ERROR] ")
    else:  # pragma: no cover
        pytest.fail("n=5 accepted with RINGPIPE_MAX_RECEIVERS=4")


def test_flags_win_over_environment(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "1", env={"RINGPIPE_WORKERS": "3"})
    assert len(server.workers()) == 1


def test_port_variable_is_honoured() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringpipe", "--workers", "1"],  # no "serve": it is the default
        cwd=ROOT,
        env=clean_env(PORT=str(port)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"ready"' in line:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ringpipe"  # where pip put it for this interpreter
    result = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--ring-bytes" in result.stdout


def test_repeatable_and_switch_flags() -> None:
    """--token repeats, --ssl-only is a switch; both land in Settings."""
    from ringpipe.process.cli import parse_settings

    s = parse_settings(["--token", "a:x:send", "--token", "b:y:recv:/r/", "--port", "0"])
    assert s.token == ("a:x:send", "b:y:recv:/r/")
    s = parse_settings(["--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem", "--ssl-only"])
    assert s.ssl_only is True
