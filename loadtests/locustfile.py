"""Locust load test for ringpipe: one task is one whole pipe (a sender and ``n`` receivers).

Each task opens ``n`` receivers on a fresh random path, then the sender, uploads ``size``
bytes (bulk: ``chunk``-sized pieces, optionally at ``chunk rate``; llm: 1-12 byte tokens at
``token rate``, each its own HTTP chunk, as a model server streams), and checks every byte
every receiver gets against the pattern (``pipecheck.py``), the clean end of each response
and the sender's final log line. Anything else is a locust failure.

Custom events (request_type ``pipe``), one per pipe or per receiver:

- ``transfer``: the whole pipe, from its first request to its last byte (response length:
  bytes delivered to all receivers);
- ``rendezvous``: the sender's arrival to a receiver's response head (the transfer started);
- ``first byte``: the sender's arrival to a receiver's first body byte;

Every row of locust's table is a time in milliseconds. Throughput is not a time, so it is
kept apart (``Throughput``): per receiver, body bytes / (its last byte - the sender's
arrival), by pipe mode. At the end of the run it is printed as its own table and, with
``--csv PREFIX``, written to ``PREFIX_throughput.csv`` (mode, receivers, bytes, p10/p50/p90
per receiver in bytes/s, and goodput: all bytes over the run's wall time). Distributed runs
merge the workers' samples on the master (``report_to_master`` / ``worker_report``).

Run (see loadtests/README.md)::

    locust -f loadtests/locustfile.py --headless -u 10 -r 5 -t 1m --host http://127.0.0.1:8080 \\
        --pipe-mode bulk --pipe-size 1MiB --pipe-n 3

Options (each also as an environment variable): ``--pipe-mode bulk|llm|mixed``
(RINGPIPE_LOCUST_MODE), ``--pipe-size`` (RINGPIPE_LOCUST_SIZE), ``--pipe-n``
(RINGPIPE_LOCUST_N), ``--pipe-chunk`` (RINGPIPE_LOCUST_CHUNK), ``--pipe-chunk-rate``
(RINGPIPE_LOCUST_CHUNK_RATE, chunks/s, 0 = as fast as the pipe takes them),
``--pipe-token-rate`` (RINGPIPE_LOCUST_TOKEN_RATE, tokens/s in llm mode), ``--pipe-llm-size``
(RINGPIPE_LOCUST_LLM_SIZE, bytes per llm pipe).
"""

from __future__ import annotations

import csv
import http.client
import logging
import random
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
from locust import User, constant, events, task
from locust.argument_parser import LocustArgumentParser
from pipecheck import Mismatch, StreamCheck, bulk_chunks, parse_size, token_chunks

REQUEST_TYPE = "pipe"
TIMEOUT_S = 120.0
READ_SIZE = 65536
SENDER_DONE = b"[INFO] All receiver(s) was/were received successfully.\n"


class Throughput:
    """Per-receiver throughput samples (bytes/s) by pipe mode, reported apart from locust's times.

    Invariant: ``samples[mode]`` and ``total_bytes[mode]`` describe the same receivers; a
    worker hands both to the master and starts afresh (``drain``), so nothing is counted twice.
    """

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.total_bytes: dict[str, int] = {}
        self.started = time.monotonic()

    def add(self, mode: str, rate: float, size: int) -> None:
        self.samples.setdefault(mode, []).append(rate)
        self.total_bytes[mode] = self.total_bytes.get(mode, 0) + size

    def drain(self) -> dict[str, Any]:
        data = {"samples": self.samples, "bytes": self.total_bytes}
        self.samples, self.total_bytes = {}, {}
        return data

    def merge(self, data: dict[str, Any]) -> None:
        for mode, rates in data.get("samples", {}).items():
            self.samples.setdefault(mode, []).extend(rates)
        for mode, size in data.get("bytes", {}).items():
            self.total_bytes[mode] = self.total_bytes.get(mode, 0) + int(size)

    def rows(self) -> list[dict[str, Any]]:
        wall = max(time.monotonic() - self.started, 1e-9)
        rows = []
        for mode in sorted(self.samples):
            rates = sorted(self.samples[mode])
            deciles = statistics.quantiles(rates, n=10) if len(rates) > 1 else rates * 9
            rows.append(
                {
                    "mode": mode,
                    "receivers": len(rates),
                    "bytes": self.total_bytes.get(mode, 0),
                    "p10_bytes_per_s": round(deciles[0]),
                    "p50_bytes_per_s": round(statistics.median(rates)),
                    "p90_bytes_per_s": round(deciles[-1]),
                    "goodput_bytes_per_s": round(self.total_bytes.get(mode, 0) / wall),
                }
            )
        return rows


THROUGHPUT = Throughput()


@events.test_start.add_listener
def _throughput_start(**_kwargs: Any) -> None:
    THROUGHPUT.started = time.monotonic()


@events.report_to_master.add_listener
def _throughput_to_master(client_id: str, data: dict[str, Any]) -> None:
    data["ringpipe_throughput"] = THROUGHPUT.drain()


@events.worker_report.add_listener
def _throughput_from_worker(client_id: str, data: dict[str, Any]) -> None:
    THROUGHPUT.merge(data.get("ringpipe_throughput", {}))


@events.quitting.add_listener
def _throughput_summary(environment: Any, **_kwargs: Any) -> None:
    if getattr(environment, "runner", None) is not None and type(environment.runner).__name__ == "WorkerRunner":
        return  # the master reports the merged samples
    rows = THROUGHPUT.rows()
    if not rows:
        return
    lines = [
        "ringpipe throughput per receiver (bytes/s)",
        "mode   receivers        bytes      p10      p50      p90  goodput",
    ]
    lines += [
        f"{r['mode']:<6} {r['receivers']:>9} {r['bytes']:>12} {r['p10_bytes_per_s']:>8} {r['p50_bytes_per_s']:>8} "
        f"{r['p90_bytes_per_s']:>8} {r['goodput_bytes_per_s']:>8}"
        for r in rows
    ]
    logging.getLogger("ringpipe.locust").warning("\n".join(lines))
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        with open(f"{prefix}_throughput.csv", "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


@events.init_command_line_parser.add_listener
def add_options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("ringpipe pipes")
    group.add_argument(
        "--pipe-mode",
        choices=["bulk", "llm", "mixed"],
        default="bulk",
        env_var="RINGPIPE_LOCUST_MODE",
        help="bulk: size bytes in chunk-sized pieces; llm: small tokens at token-rate; mixed: either, at random",
    )
    group.add_argument("--pipe-size", default="1MiB", env_var="RINGPIPE_LOCUST_SIZE", help="bytes per bulk pipe")
    group.add_argument("--pipe-n", type=int, default=3, env_var="RINGPIPE_LOCUST_N", help="receivers per pipe (?n=)")
    group.add_argument("--pipe-chunk", default="64KiB", env_var="RINGPIPE_LOCUST_CHUNK", help="bulk upload piece")
    group.add_argument(
        "--pipe-chunk-rate",
        type=float,
        default=0.0,
        env_var="RINGPIPE_LOCUST_CHUNK_RATE",
        help="bulk pieces per second (0: as fast as the pipe takes them)",
    )
    group.add_argument(
        "--pipe-token-rate", type=float, default=200.0, env_var="RINGPIPE_LOCUST_TOKEN_RATE", help="llm tokens/s"
    )
    group.add_argument("--pipe-llm-size", default="2KiB", env_var="RINGPIPE_LOCUST_LLM_SIZE", help="bytes per llm pipe")


class Plan:
    """One pipe's shape, drawn from the options."""

    def __init__(self, options: Any, rng: random.Random) -> None:
        mode = options.pipe_mode if options.pipe_mode != "mixed" else rng.choice(["bulk", "llm"])
        self.mode = mode
        self.n = int(options.pipe_n)
        self.size = parse_size(options.pipe_llm_size if mode == "llm" else options.pipe_size)
        self.chunk = parse_size(options.pipe_chunk)
        self.rate = float(options.pipe_token_rate if mode == "llm" else options.pipe_chunk_rate)
        self.rng = rng

    def pieces(self) -> Iterator[memoryview]:
        return token_chunks(self.size, self.rng) if self.mode == "llm" else bulk_chunks(self.size, self.chunk)


class PipeUser(User):
    """Runs whole pipes back to back against ``--host``."""

    wait_time = constant(0.1)

    def on_start(self) -> None:
        url = urllib.parse.urlsplit(self.host or "http://127.0.0.1:8080")
        self.address = (url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80))
        self.https = url.scheme == "https"
        self.prefix = url.path.rstrip("/")
        self.rng = random.Random()

    def connect(self) -> http.client.HTTPConnection:
        host, port = self.address
        if self.https:
            return http.client.HTTPSConnection(host, port, timeout=TIMEOUT_S)
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)

    def fire(self, name: str, value: float, length: int = 0, exception: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=value,
            response_length=length,
            exception=exception,
            context={},
        )

    @task
    def pipe(self) -> None:
        plan = Plan(self.environment.parsed_options, self.rng)
        path = f"{self.prefix}/locust-{uuid.uuid4().hex}?n={plan.n}"
        started = time.perf_counter()
        sender_arrived: list[float] = []
        receivers = [gevent.spawn(self.receive, path, plan, sender_arrived) for _ in range(plan.n)]
        gevent.sleep(0.05)  # receivers first, as a pipe's readers usually are
        sender = gevent.spawn(self.send, path, plan, sender_arrived)
        gevent.joinall([sender, *receivers], timeout=TIMEOUT_S)
        failure = next((g.exception for g in (sender, *receivers) if g.exception is not None), None)
        if failure is None and not all(g.successful() for g in (sender, *receivers)):
            failure = TimeoutError(f"the pipe did not finish within {TIMEOUT_S:.0f} s")
        for g in (sender, *receivers):
            g.kill(block=False)
        name = f"transfer {plan.mode} n={plan.n}"
        delivered = plan.size * plan.n if failure is None else 0
        self.fire(name, (time.perf_counter() - started) * 1000, delivered, failure)

    def send(self, path: str, plan: Plan, arrived: list[float]) -> None:
        """Upload the pipe's bytes chunked, at the plan's rate; check the sender's log."""
        conn = self.connect()
        try:
            conn.putrequest("PUT", path)
            conn.putheader("Content-Type", "text/plain" if plan.mode == "llm" else "application/octet-stream")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            arrived.append(time.perf_counter())
            interval = 1.0 / plan.rate if plan.rate > 0 else 0.0
            next_at = time.perf_counter()
            for piece in plan.pieces():
                if interval:
                    next_at += interval
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        gevent.sleep(delay)
                conn.send(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
            conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            log = response.read()
            if response.status != 200 or not log.endswith(SENDER_DONE):
                raise Mismatch(f"sender: {response.status} {log[-300:]!r}")
        finally:
            conn.close()

    def receive(self, path: str, plan: Plan, sender_arrived: list[float]) -> None:
        """Read one receiver's response, checking every byte; report its timings."""
        size = plan.size
        check = StreamCheck(size)
        first_at = last_at = 0.0
        conn = self.connect()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            head_at = time.perf_counter()
            if response.status != 200:
                raise Mismatch(f"receiver: {response.status} {response.read()[:300]!r}")
            while True:
                data = response.read1(READ_SIZE)
                if not data:
                    break
                last_at = time.perf_counter()
                if not first_at:
                    first_at = last_at
                check.feed(data)
            check.finish()
        finally:
            conn.close()
        if sender_arrived:
            self.fire("rendezvous", max(0.0, head_at - sender_arrived[0]) * 1000)
            if first_at:
                self.fire("first byte", max(0.0, first_at - sender_arrived[0]) * 1000)
            if size and last_at > sender_arrived[0]:
                THROUGHPUT.add(plan.mode, size / (last_at - sender_arrived[0]), size)
