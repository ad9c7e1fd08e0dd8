"""The fixtures every test may ask for; the helpers behind them live in ``tests/support``.

- ``server_factory`` / ``server``: real ringpipe process trees on loopback ports, each
  stopped and checked for leftovers (exit status, processes, ``/dev/shm``) at teardown.
- ``browser`` / ``site``: one headless Chromium and one server per test module that asks.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.browser import Browser, start_browser
from tests.support.servers import Server, ServerFactory, start_server, stop_and_check


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with the most ``slow(seconds)`` first, the rest in their usual order: the
    test processes (``-n 2 --dist loadfile``) take whole modules in this order, so the
    minute-long ones start at once instead of ending the run alone on one core."""
    weight: dict[object, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        seconds = float(marker.args[0]) if marker is not None and marker.args else 0.0
        weight[item.path] = weight.get(item.path, 0.0) + seconds
    items.sort(key=lambda item: -weight[item.path])  # stable: the order within a module is kept


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """Start servers with chosen flags; each is stopped and checked for leftovers at teardown."""
    started: list[Server] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> Server:
        server = start_server(*args, env=env)
        started.append(server)
        return server

    yield factory
    problems = [problem for server in started for problem in stop_and_check(server)]
    assert not problems, problems


@pytest.fixture
def server(server_factory: ServerFactory) -> Server:
    """A ringpipe with 2 workers (the machine's core count in CI) and default settings."""
    return server_factory("--workers", "2")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium behind ``tests/support/browser_driver.cjs``, with a fresh profile; at the end
    it exits 0 and leaves no process of its session behind."""
    browser = start_browser(tmp_path_factory.mktemp("browser"))
    yield browser
    browser.close()
    assert browser.proc.returncode == 0, browser.tail()
    leftover = subprocess.run(["pgrep", "-s", str(browser.proc.pid)], capture_output=True, text=True).stdout.split()
    assert not leftover, f"browser processes left behind: {leftover}"


@pytest.fixture(scope="module")
def site() -> Iterator[Server]:
    """One 2-worker server for a module's browser tests."""
    server = start_server("--workers", "2")
    yield server
    problems = stop_and_check(server)
    assert not problems, problems
