"""The open-files limit: the server raises its soft limit to the hard limit at start, so that
thousands of token streams fit with default flags, and says so in its log (a warning when even
the hard limit is below what ``--max-connections`` needs)."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import Server, start_server, stop_and_check


def _hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    return hard


def _soft_limit_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files line in /proc/<pid>/limits")


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    """This process's soft limit lowered to 256 while a server starts from it (the hard limit,
    which a child may raise its soft limit to, is left as it is)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_the_hard_limit_and_logged(low_soft_limit: int) -> None:
    server: Server = start_server("--workers", "2")
    try:
        hard = _hard_limit()
        line = server.wait_log(lambda r: r.get("event") == "open_files_limit")
        assert line["level"] == "info" and line["limit"] == hard
        assert line["msg"] == f"open files limit {hard}"
        for worker in server.workers():
            assert _soft_limit_of(worker) == hard  # inherited through fork
    finally:
        assert stop_and_check(server) == []


def test_a_hard_limit_below_what_max_connections_needs_is_a_warning() -> None:
    hard = _hard_limit()
    server: Server = start_server("--workers", "1", "--max-connections", str(hard + 1000))
    try:
        line = server.wait_log(lambda r: r.get("event") == "open_files_limit")
        assert line["level"] == "warning" and line["limit"] == hard
        assert isinstance(line["needed"], int) and line["needed"] > hard
        assert f"--max-connections {hard + 1000}" in str(line["msg"])
    finally:
        assert stop_and_check(server) == []
