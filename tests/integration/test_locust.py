"""The locust load test (loadtests/) runs headless against a real server and finds no failure.

A 20-second run of mixed pipes (bulk and LLM-like token streams, 3 receivers each, every
byte checked by the locustfile) must exit 0 with failures at 0 in locust's own CSV stats, and
every transfer the server logged must have ended done. A run that cannot succeed (n above
the server's maximum) must exit non-zero with its failures in the CSV: the smoke test can
fail.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import ROOT, Server

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def run_locust(server: Server, out: Path, seconds: int, *options: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "60",
        "--host",
        server.url,
        "--csv",
        str(out / "run"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *options,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120)


def stats(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "run_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def data_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow(23)
def test_twenty_second_locust_run_has_no_failure(server: Server, tmp_path: Path) -> None:
    done = run_locust(server, tmp_path, 20, "--pipe-mode", "mixed", "--pipe-n", "3", "--pipe-size", "512KiB")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = stats(tmp_path)
    for name in ("transfer bulk n=3", "transfer llm n=3", "rendezvous", "first byte"):
        assert int(rows[name]["Request Count"]) > 0, (name, rows.keys())
        assert rows[name]["Type"] == "pipe"
    # Every row of locust's table is a time: throughput is reported apart, per mode, in bytes/s.
    assert not any("throughput" in name for name in rows), rows.keys()
    throughput = {row["mode"]: row for row in data_rows(tmp_path / "run_throughput.csv")}
    assert int(throughput["bulk"]["receivers"]) > 0 and int(throughput["bulk"]["p50_bytes_per_s"]) > 0, throughput
    assert int(throughput["llm"]["receivers"]) > 0, throughput
    assert "ringpipe throughput per receiver" in done.stderr + done.stdout
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows
    assert data_rows(tmp_path / "run_failures.csv") == []
    assert data_rows(tmp_path / "run_exceptions.csv") == []
    pipes = int(rows["transfer bulk n=3"]["Request Count"]) + int(rows["transfer llm n=3"]["Request Count"])
    assert int(rows["first byte"]["Request Count"]) == 3 * pipes
    deadline = time.monotonic() + 20  # the owner logs a transfer once every party's Leave is in
    while len(server.transfers()) < pipes and time.monotonic() < deadline:
        time.sleep(0.1)
    transfers = server.transfers()
    assert len(transfers) >= pipes and {t["ending"] for t in transfers} == {"done"}


def test_a_failing_run_fails(server: Server, tmp_path: Path) -> None:
    done = run_locust(server, tmp_path, 4, "--pipe-n", "300", "--pipe-size", "4KiB")  # n above max_receivers
    assert done.returncode != 0
    rows = stats(tmp_path)
    assert int(rows["Aggregated"]["Failure Count"]) > 0
    assert "n should be at most 256" in "".join(r["Error"] for r in data_rows(tmp_path / "run_failures.csv"))
