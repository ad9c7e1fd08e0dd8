"""A real Prometheus (Debian's ``prometheus``) scrapes a real ringpipe under load, and every
PromQL expression of the Grafana dashboard returns data through Prometheus' HTTP API.

The expressions are read from ``grafana/dashboards/ringpipe.json`` itself, so the dashboard
cannot drift from the metrics. Grafana's own variables are replaced the way Grafana would:
``$instance`` by its "All" value ``.*``, ``$__rate_interval`` by a window that covers the
load. The provisioning files are checked for what ``grafana-server`` needs to load them.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.externals import ensure_prometheus, free_port
from tests.support.pipes import get, pattern, put
from tests.support.servers import ROOT, Server, stop_group

DASHBOARD = ROOT / "grafana" / "dashboards" / "ringpipe.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
#: Stands in for Grafana's $__rate_interval: the whole load fits in it.
WINDOW = "1m"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def as_grafana_would(expr: str) -> str:
    return expr.replace("$__rate_interval", WINDOW).replace("$instance", ".*")


class Prometheus:
    """A Prometheus server in its own process group, storage and config in a temporary folder."""

    def __init__(self, binary: Path, folder: Path, target: str) -> None:
        config = folder / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": "ringpipe", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.log = folder / "prometheus.log"
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen(
                    [
                        str(binary),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={folder / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            self.stop()
            last = self.log.read_text(errors="replace")[-2000:]
        pytest.fail(f"prometheus did not start:\n{last}")

    def _wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        return False

    def api(self, endpoint: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{endpoint}?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                answer = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{endpoint} {params}: {error.code} {error.read().decode()}") from error
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def wait_for(self, expr: str, ok: Callable[[float], bool], timeout: float = 60.0) -> None:
        """Until ``expr``'s first value satisfies ``ok``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result and ok(float(result[0]["value"][1])):
                return
            assert time.monotonic() < deadline, f"Prometheus never saw {expr} as expected: {result}"
            time.sleep(0.3)

    def stop(self) -> None:
        stop_group(self.proc, term_wait=10.0, kill_wait=5.0)


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    binary = ensure_prometheus()
    started: list[Prometheus] = []

    def start(server: Server) -> Prometheus:
        prometheus = Prometheus(binary, tmp_path, f"127.0.0.1:{server.port}")
        started.append(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


async def load(port: int) -> None:
    """A few transfers, one with several readers, one receiver that gives up, one rejection."""
    for round_ in range(4):
        path = "/" + uuid.uuid4().hex
        data = pattern(400_000, seed=round_)
        receivers = [asyncio.create_task(get(port, f"{path}?n=3")) for _ in range(3)]
        await asyncio.sleep(0.2)
        await put(port, f"{path}?n=3", data, chunked=True)
        for receiver in receivers:
            got = await receiver
            assert got.complete and got.body == data
        single = "/" + uuid.uuid4().hex
        receiver = asyncio.create_task(get(port, single))
        await asyncio.sleep(0.1)
        await put(port, single, pattern(50_000))
        assert (await receiver).complete
        assert (await get(port, "/x?n=0")).status == 400
        await asyncio.sleep(1.0)


@pytest.mark.slow(14)
def test_dashboard_queries_return_data_from_a_real_prometheus(server: Server, prometheus_for: Any) -> None:
    prometheus = prometheus_for(server)
    prometheus.wait_for("up", lambda v: v == 1)  # scraping before the load starts: rates see all of it
    asyncio.run(asyncio.wait_for(load(server.port), 120))

    prometheus.wait_for('sum(ringpipe_transfers_total{ending="done"})', lambda v: v >= 8)
    time.sleep(2.5)  # a few more scrapes after the load

    targets = prometheus.api("targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    instances = prometheus.api("label/instance/values", **{"match[]": "ringpipe_bytes_in_total"})
    assert instances == [f"127.0.0.1:{server.port}"]  # the dashboard's $instance variable

    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    answers = {expr: prometheus.query(as_grafana_would(expr)) for _title, expr in expressions}
    empty = [(title, expr) for title, expr in expressions if not answers[expr]]
    assert empty == [], f"dashboard queries without data: {empty}"
    # and the data is numbers: every histogram saw observations inside the window
    not_numbers = {e: r for e, r in answers.items() if any(not math.isfinite(float(x["value"][1])) for x in r)}
    assert not_numbers == {}

    throughput = prometheus.query(f"sum(rate(ringpipe_bytes_out_total[{WINDOW}]))")
    assert float(throughput[0]["value"][1]) > 0
    p99 = prometheus.query(
        f"histogram_quantile(0.99, sum by (le) (rate(ringpipe_relay_latency_seconds_bucket[{WINDOW}])))"
    )
    assert 0 < float(p99[0]["value"][1]) < 10


def test_dashboard_covers_every_panel_the_operators_need() -> None:
    board = dashboard()
    titles = [panel["title"] for panel in board["panels"]]
    for wanted in (
        "Throughput in / out",
        "Active pipes by state",
        "Rendezvous wait p50 / p99",
        "Relay latency p50 / p99",
        "Time to first byte p50 / p99",
        "Fan-out",
        "Reader lag and evictions",
        "Rejections by code",
        "Worker restarts",
        "Shared memory in rings",
        "Transfers by ending",
    ):
        assert wanted in titles
    datasource = {"type": "prometheus", "uid": "ringpipe-prometheus"}
    for panel in board["panels"]:
        assert panel["datasource"] == datasource
        assert all(target["datasource"] == datasource for target in panel["targets"])
    assert [v["name"] for v in board["templating"]["list"]] == ["instance"]


def test_provisioning_files_point_grafana_at_the_dashboard() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "ringpipe.yaml").read_text())
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "ringpipe-prometheus" and source["url"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "ringpipe.yaml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    assert dashboard()["uid"] == "ringpipe-overview"
