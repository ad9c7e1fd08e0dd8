"""Every Prometheus metric ringpipe exports, the helpers that update them, and ``/metrics``.

Workers run prometheus-client in multiprocess mode: the supervisor creates and wipes the
directory and sets ``PROMETHEUS_MULTIPROC_DIR`` *before* any worker imports this module (the
client picks its value class at import time), and calls ``mark_process_dead`` when it reaps
a worker so that worker's live gauges (``multiprocess_mode="livesum"``) disappear. Each
scrape builds a fresh registry with a ``MultiProcessCollector`` plus ``FleetProcessCollector``
(CPU, memory and file descriptors of every worker and of the supervisor, read from
``/proc``). Without the variable (unit tests, one-off imports) the metrics live in this
process's default registry.

Cost rule: nothing here may cost the byte hot path more than a few percent. The per-chunk
hooks (``ProducerMeter.published``, ``ReaderMeter.sent``) do one clock read or one load
from the ring header and a comparison; everything else (a histogram observation, a counter
update: a few microseconds each in multiprocess mode) happens at most every
``SAMPLE_INTERVAL_NS`` per producer and per reader, or once per party or transfer; and
most of them are held back and summed per series for up to ``tally.FLUSH_INTERVAL_S``
(``tally.py``): a scrape sees them that much later, a gauge's up and down within one batch
not at all. The transfer counts are written at once, with the transfer's log line.

Relay latency is sampled through the ring header (see ``shm.py``): about once a second the
producer stamps "the bytes before ``seq`` were in the ring at ``t``" (CLOCK_MONOTONIC, which
is system-wide on Linux, so every worker can compare it), and each reader that has sent past
``seq`` to its socket observes ``now - t`` once. The producer stamps anew only once every
attached reader has passed the previous stamp, so slow readers are sampled as faithfully as
fast ones.

Label values (the complete sets; other values are a bug):

- ``state``: ``waiting``, ``established``;
- ``framing``: ``raw``, ``sse``, ``ndjson``, ``websocket``;
- ``ending``: ``done``, ``aborted``, ``cancelled``, ``lagged``, ``timeout`` (counted once per
  pipe by ``transfer_ended``: the owner counts established transfers when it releases them;
  ``timeout`` is a pipe that never got all its parties within ``wait_timeout``);
- ``reason`` (evictions, ``evicted``): ``stall`` (a receiver made no progress for
  ``stall_timeout``; its transfer side ends ``lagged``), ``window`` (a watcher fell out of
  the replay window);
- ``role``: ``sender``, ``receiver``;
- ``code``: the HTTP status of a rejection.

Who calls what: ``Producer``/``Consumer`` (``relay.py``) own a ``ProducerMeter``/``ReaderMeter``,
so bytes in/out, relay latency, lag and first byte need nothing from a framing; a framing
calls ``reader_started(framing, consumer)``/``reader_ended(framing)`` around a receiver's
life, a watcher ``watcher_started``/``watcher_ended`` (and builds its ``ReaderMeter`` with
``first_byte=False``: it is not part of the transfer's start), as does a resumed reader.

No metric carries a path name: paths may be secrets (SPEC Part 4).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import anyio.to_thread
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client import values as _values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ringpipe.core.rendezvous import Waiting
from ringpipe.ops import tally
from ringpipe.shm.layout import STAMP_SEQ_WORD

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ringpipe.core.rendezvous import Rendezvous, Role
    from ringpipe.shm.segment import RingSegment

__all__ = [
    "ANSWERED_CODES",
    "BYTES_IN",
    "BYTES_OUT",
    "ENDINGS",
    "EVICTIONS",
    "EVICTION_REASONS",
    "FANOUT",
    "FIRST_BYTE",
    "FRAMINGS",
    "INVALID_UTF8",
    "PIPES",
    "READER_LAG",
    "RECEIVERS",
    "ANSWERED_CODES",
    "REJECTIONS",
    "RELAY_LATENCY",
    "RENDEZVOUS_WAIT",
    "RING_BYTES",
    "TRANSFERS",
    "TRANSFERS_ACROSS_WORKERS",
    "HANDOFFS",
    "WATCHERS",
    "WORKER_RESTARTS",
    "FleetProcessCollector",
    "ProducerMeter",
    "ReaderMeter",
    "evicted",
    "framing_mix",
    "invalid_utf8",
    "mark_process_dead",
    "open_process_files",
    "metrics_endpoint",
    "party_started",
    "pipes_changed",
    "reader_ended",
    "reader_started",
    "rejected",
    "relay_established",
    "ring_bytes_changed",
    "ring_refused",
    "render",
    "transfer_ended",
    "watcher_ended",
    "watcher_started",
]

FRAMINGS: Final = ("raw", "sse", "ndjson", "websocket")
ENDINGS: Final = ("done", "aborted", "cancelled", "lagged", "timeout")
EVICTION_REASONS: Final = ("stall", "window")
#: A framing's code in the ring header's per-reader word (0: the reader never started).
FRAMING_CODES: Final = {name: code for code, name in enumerate(FRAMINGS, start=1)}
_FRAMING_NAMES: Final = {code: name for name, code in FRAMING_CODES.items()}
#: How often a producer stamps a latency sample and flushes its bytes-in count, and so how
#: often a reader observes a sample and flushes its bytes-out count. A sample costs the pipe
#: a few prometheus updates (~5 us in multiprocess mode); a token stream sends a token every
#: 20-200 ms, so a cadence of 100 ms would put a metric update on every few tokens.
SAMPLE_INTERVAL_NS: Final = 1_000_000_000
#: The classic Prometheus text format, which ``generate_latest`` writes (every Prometheus
#: since 2.0 reads it; newer prometheus-client versions announce 1.0.0 for the same bytes).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: How soon after a rendezvous change the pipes gauge is recounted (changes in between coalesce).
PIPES_REFRESH_S: Final = 0.25

log = logging.getLogger("ringpipe.metrics")

# -- the metrics --

#: This process's pid, for prometheus-client's multiprocess values: each of them asks on
#: every update whether the process forked since (a fork must start its own file), and with
#: the default ``os.getpid`` that is a system call per update, about 45 per pipe. The answer
#: changes only in a fork's child, which ``os.register_at_fork`` tells us.
_pid = os.getpid()


def _this_pid() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the value class, chosen before any metric below exists
    os.register_at_fork(after_in_child=_forked)
    _values.ValueClass = _values.MultiProcessValue(process_identifier=_this_pid)  # type: ignore[no-untyped-call]

PIPES = Gauge(
    "ringpipe_pipes",
    "Paths with a pipe, by state: waiting (parties registered, not all there) or established (a live ring).",
    ["state"],
    multiprocess_mode="livesum",
)
RECEIVERS = Gauge(
    "ringpipe_receivers",
    "Receivers being served bytes of an established pipe, by reader framing.",
    ["framing"],
    multiprocess_mode="livesum",
)
WATCHERS = Gauge("ringpipe_watchers", "Watchers (?watch=1) attached to a pipe.", multiprocess_mode="livesum")
BYTES_IN = Counter("ringpipe_bytes_in", "Bytes of uploads written into rings.")
BYTES_OUT = Counter("ringpipe_bytes_out", "Bytes of pipes delivered to readers' sockets (payload, before framing).")
TRANSFERS = Counter("ringpipe_transfers", "Transfers that ended, by how they ended.", ["ending"])
TRANSFERS_ACROSS_WORKERS = Counter(
    "ringpipe_transfers_across_workers",
    "Transfers whose sender and receivers were not all served by one worker process.",
)
HANDOFFS = Counter(
    "ringpipe_handoffs",
    "Connections passed to their pipe's owner worker, so that the pipe is served by one process.",
)
REJECTIONS = Counter("ringpipe_rejections", "Requests answered with an error status, by status code.", ["code"])
RENDEZVOUS_WAIT = Histogram(
    "ringpipe_rendezvous_wait_seconds",
    "Time a party waited from its arrival until its transfer started, by role.",
    ["role"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
FIRST_BYTE = Histogram(
    "ringpipe_first_byte_seconds",
    "Time from a transfer's start (sender and every receiver present) to its first byte sent to a receiver.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RELAY_LATENCY = Histogram(
    "ringpipe_relay_latency_seconds",
    "Time from a chunk entering the ring to its being sent to a reader's socket (sampled about once a second).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FANOUT = Histogram(
    "ringpipe_fanout",
    "Receivers per established transfer (n).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
READER_LAG = Histogram(
    "ringpipe_reader_lag_bytes",
    "Bytes a reader was behind the producer when it sent past a latency sample.",
    buckets=(0, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
EVICTIONS = Counter(
    "ringpipe_evictions", "Readers cut off by the server: stall (receiver) or window (watcher).", ["reason"]
)
INVALID_UTF8 = Counter(
    "ringpipe_invalid_utf8", "Byte sequences replaced by U+FFFD in text framings, by framing.", ["framing"]
)
RING_BYTES = Gauge(
    "ringpipe_ring_bytes",
    "Shared memory reserved for rings (headers and capacities as they grew, and a freed ring's pages "
    "kept for the next one up to --ring-keep), as /dev/shm holds it.",
    multiprocess_mode="livesum",
)
RING_REFUSALS = Counter(
    "ringpipe_ring_refusals",
    "Rings that could not be reserved or grown: memory_limit (--max-memory) or shm_full (/dev/shm).",
    ["reason"],
)
WORKER_RESTARTS = Counter("ringpipe_worker_restarts", "Workers the supervisor had to replace.")

# Every documented label value exists from the start (at 0), so dashboards and alerts see
# a series, not an absence, before the first event of its kind. The children counted once
# or more per pipe are kept: ``labels()`` takes a lock and builds a key on every call.
for _state in ("waiting", "established"):
    PIPES.labels(state=_state)
_RECEIVERS_BY_FRAMING: Final = {framing: RECEIVERS.labels(framing=framing) for framing in FRAMINGS}
_TRANSFERS_BY_ENDING: Final = {ending: TRANSFERS.labels(ending=ending) for ending in ENDINGS}
for _reason in EVICTION_REASONS:
    EVICTIONS.labels(reason=_reason)
for _reason in ("memory_limit", "shm_full"):
    RING_REFUSALS.labels(reason=_reason)
_WAIT_BY_ROLE: Final = {role: RENDEZVOUS_WAIT.labels(role=role) for role in ("sender", "receiver")}
#: Every error status the server answers (SPEC Part 3 "Errors", plus 416 for a Range past the
#: end and 500 for a bug): each series exists at 0 from start-up, so a dashboard panel or an
#: alert such as ``increase(ringpipe_rejections_total{code="503"}[5m]) > 0`` sees a series
#: before the first error instead of "no data".
ANSWERED_CODES: Final = (400, 401, 403, 404, 405, 408, 410, 413, 414, 416, 431, 500, 503)
for _code in ANSWERED_CODES:
    REJECTIONS.labels(code=str(_code))


# -- helpers the server calls (one line at each call site) --


def rejected(code: int) -> None:
    REJECTIONS.labels(code=str(code)).inc()


def party_started(role: Role, joined: float) -> None:
    """A party got its transfer's Start; ``joined`` is its ``time.monotonic()`` at arrival."""
    wait = _WAIT_BY_ROLE.get(role) or RENDEZVOUS_WAIT.labels(role=role.value)
    tally.observe(wait, max(0.0, time.monotonic() - joined))


def relay_established(n: int) -> None:
    """The owner created a ring for a transfer of ``n`` receivers."""
    tally.observe(FANOUT, n)


def ring_bytes_changed(delta: int) -> None:
    """This worker's arena reserved (``delta`` > 0) or freed ring bytes (``arena.Arena``)."""
    tally.shift(RING_BYTES, delta)


def ring_refused(reason: str) -> None:
    """A ring could not be reserved, or grown: "memory_limit" or "shm_full"."""
    RING_REFUSALS.labels(reason=reason).inc()


def transfer_ended(ending: str, *, across_workers: bool = False) -> None:
    """Count a transfer's end; ``ending`` is one of ``ENDINGS``. Written at once, not held
    back: a transfer's log line and its count appear together."""
    _TRANSFERS_BY_ENDING[ending].inc()
    if across_workers:
        TRANSFERS_ACROSS_WORKERS.inc()


class _ReaderSlot(Protocol):
    """A reader of a ring (``relay.Consumer``)."""

    @property
    def ring(self) -> RingSegment: ...

    @property
    def slot(self) -> int: ...


def reader_started(framing: str, reader: _ReaderSlot | None = None) -> None:
    """A receiver starts being served in ``framing``; ``reader`` records it for the transfer log."""
    tally.shift(_RECEIVERS_BY_FRAMING[framing], 1)
    if reader is not None:
        reader.ring.set_reader_framing(reader.slot, FRAMING_CODES[framing])


def reader_ended(framing: str) -> None:
    tally.shift(_RECEIVERS_BY_FRAMING[framing], -1)


def watcher_started() -> None:
    tally.shift(WATCHERS, 1)


def watcher_ended() -> None:
    tally.shift(WATCHERS, -1)


def evicted(reason: str) -> None:
    """A reader was cut off: ``stall`` (receiver, ends "lagged") or ``window`` (watcher)."""
    EVICTIONS.labels(reason=reason).inc()


def invalid_utf8(framing: str, count: int = 1) -> None:
    INVALID_UTF8.labels(framing=framing).inc(count)


def framing_mix(ring: RingSegment) -> dict[str, int]:
    """How many of a transfer's receivers were served in each framing (for its log line);
    a receiver that left before its response started counts as ``none``."""
    mix: dict[str, int] = {}
    for slot in range(ring.n_readers):
        name = _FRAMING_NAMES.get(ring.reader_framing(slot), "none")
        mix[name] = mix.get(name, 0) + 1
    return dict(sorted(mix.items())) if len(mix) > 1 else mix


class _PipeCount:
    """Recounts ``ringpipe_pipes`` shortly after rendezvous changes (coalesced: a burst of
    thousands of joins costs one count, not thousands)."""

    def __init__(self) -> None:
        self.scheduled = False

    def changed(self, rendezvous: Rendezvous) -> None:
        if self.scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (unit tests): count now
            self.count(rendezvous)
            return
        self.scheduled = True
        loop.call_later(PIPES_REFRESH_S, self.count, rendezvous)

    def count(self, rendezvous: Rendezvous) -> None:
        self.scheduled = False
        waiting = sum(1 for pipe in rendezvous.pipes.values() if isinstance(pipe, Waiting))
        PIPES.labels(state="waiting").set(waiting)
        PIPES.labels(state="established").set(len(rendezvous.relays))


_pipe_count = _PipeCount()


def pipes_changed(rendezvous: Rendezvous) -> None:
    """The owner's rendezvous changed: refresh this worker's share of ``ringpipe_pipes``."""
    if not _pipe_count.scheduled:  # ``changed``'s own first check, without the call (a count is rarely new)
        _pipe_count.changed(rendezvous)


class ProducerMeter:
    """The producer's side of the ring metrics: latency stamps and the bytes-in counter.

    ``published`` runs after a publish into the ring; it reads the clock and returns unless
    a sample is due (every ``SAMPLE_INTERVAL_NS``). A caller on the hot path may compare
    the clock with ``due_ns`` itself and call ``published`` only when it is reached.
    """

    __slots__ = ("_metered", "_ring", "due_ns")

    def __init__(self, ring: RingSegment) -> None:
        self._ring = ring
        #: ``time.monotonic_ns()`` from which the next sample is due.
        self.due_ns = 0
        self._metered = 0

    def published(self) -> None:
        now = time.monotonic_ns()
        if now < self.due_ns:
            return
        self.due_ns = now + SAMPLE_INTERVAL_NS
        ring = self._ring
        write_seq = ring.write_seq
        self._flush(write_seq)
        stamped = ring.latency_stamp_seq()
        if stamped and ring.oldest_held() < stamped:
            return  # a reader has not reached the last sample yet: keep it for that reader
        ring.stamp_latency(write_seq, now)

    def close(self) -> None:
        """Count the bytes not yet counted (call before the ring is closed)."""
        try:
            self._flush(self._ring.write_seq)
        except ValueError:  # the ring is already closed
            pass

    def _flush(self, write_seq: int) -> None:
        if write_seq > self._metered:
            tally.count(BYTES_IN, write_seq - self._metered)
            self._metered = write_seq


class ReaderMeter:
    """One reader's side of the ring metrics: first byte, relay latency, lag, bytes out.

    ``sent`` runs after every batch of bytes handed to the reader's socket, before its
    cursor is committed (so the producer cannot replace a stamp this reader has yet to see).
    Its common case is one load from the ring header and a comparison.
    """

    __slots__ = ("_first", "_metered", "_observed", "_ring", "_words")

    def __init__(self, ring: RingSegment, start_seq: int = 0, *, first_byte: bool = True) -> None:
        """``start_seq``: the reader's first cursor; ``first_byte``: whether this reader's
        first byte measures the transfer's time to first byte (not for late joiners)."""
        self._ring = ring
        self._words = ring.words
        self._first = first_byte
        self._metered = start_seq
        self._observed = start_seq

    def sent(self, read_seq: int) -> None:
        ring = self._ring
        if self._first:
            self._first = False
            tally.observe(FIRST_BYTE, max(0, time.monotonic_ns() - ring.created_ns()) / 1e9)
        stamp = self._words[STAMP_SEQ_WORD]  # ``ring.latency_stamp_seq()``, as a plain load
        if stamp <= self._observed or read_seq < stamp:
            return
        self._observed = stamp
        tally.observe(RELAY_LATENCY, max(0, time.monotonic_ns() - ring.latency_stamp_ns()) / 1e9)
        tally.observe(READER_LAG, max(0, ring.write_seq - read_seq))
        self._flush(read_seq)

    def close(self, read_seq: int) -> None:
        """Count the bytes sent and not yet counted."""
        self._flush(read_seq)

    def _flush(self, read_seq: int) -> None:
        if read_seq > self._metered:
            tally.count(BYTES_OUT, read_seq - self._metered)
            self._metered = read_seq


# -- process metrics of the whole fleet --


def _fleet_pids(runtime_dir: Path) -> list[tuple[str, int]]:
    from ringpipe.ops.fleet import read_fleet

    fleet = read_fleet(runtime_dir)
    if fleet is None:
        return []
    return [("supervisor", fleet.supervisor_pid)] + [(str(slot), pid) for slot, pid in sorted(fleet.workers.items())]


_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0  # pragma: no cover - every Linux has btime


class FleetProcessCollector(Collector):
    """``process_*{worker="0".."N-1"|"supervisor"}``: CPU, memory and descriptors of every process.

    prometheus-client's own process collector sees only the process that serves the
    scrape; this one reads ``/proc/<pid>`` of every process in the supervisor's fleet file.
    A process that exits between the listing and the read is left out.
    """

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("process_cpu_seconds", "User and system CPU time spent.", labels=["worker"])
        rss = GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size.", labels=["worker"])
        vms = GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size.", labels=["worker"])
        fds = GaugeMetricFamily("process_open_fds", "Open file descriptors.", labels=["worker"])
        max_fds = GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", labels=["worker"])
        start = GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the process since the epoch.", labels=["worker"]
        )
        boot = _boot_time()
        for worker, pid in _fleet_pids(self.runtime_dir):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                open_fds = len(os.listdir(f"/proc/{pid}/fd"))
                limit = _max_fds(Path(f"/proc/{pid}/limits").read_text())
            except (OSError, IndexError):
                continue
            cpu.add_metric([worker], (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS)
            vms.add_metric([worker], float(stat[20]))
            rss.add_metric([worker], float(int(stat[21]) * _PAGE_SIZE))
            start.add_metric([worker], boot + int(stat[19]) / _CLOCK_TICKS)
            fds.add_metric([worker], float(open_fds))
            if limit is not None:
                max_fds.add_metric([worker], limit)
        yield from (cpu, rss, vms, fds, max_fds, start)


def _max_fds(limits: str) -> float | None:
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return None if soft == "unlimited" else float(soft)
    return None


# -- exposition --


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def open_process_files() -> None:
    """Create this process's value files now (a worker, before it says it is ready).

    prometheus-client creates a process's files at its first update after a fork, and a
    file is empty for an instant after it is created: a scrape by another worker that reads
    it then fails. Done at start-up, that instant falls before any scrape can count on it.
    """
    if _multiprocess_dir() is not None:
        WORKER_RESTARTS.inc(0)  # the first update after the fork opens every file of the process


#: Scrape attempts before a failure is an error: a file another process is creating (a
#: worker starting or restarting) can be caught empty for an instant.
RENDER_ATTEMPTS: Final = 3


def render(runtime_dir: Path | None = None) -> bytes:
    """The Prometheus text of every worker (merged) and, given the supervisor's runtime
    directory, the process metrics of the fleet; or of this process alone."""
    if _multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    for attempt in range(1, RENDER_ATTEMPTS + 1):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if runtime_dir is not None:
            registry.register(FleetProcessCollector(runtime_dir))
        try:
            return generate_latest(registry)
        except Exception:
            if attempt == RENDER_ATTEMPTS:
                raise
            log.warning("a metrics file could not be read (attempt %d); reading again", attempt, exc_info=True)
            time.sleep(0.01 * attempt)  # in a worker thread (``metrics_endpoint``), off the event loop
    raise AssertionError("unreachable")


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters and histograms keep counting)."""
    if _multiprocess_dir() is not None:
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


async def metrics_endpoint(request: Request, runtime_dir: Path | None = None) -> Response:
    """``GET /metrics``: every worker's samples merged (the files are read off the event loop)."""
    tally.flush()  # this worker's held updates; other workers write theirs within ``FLUSH_INTERVAL_S``
    body = await anyio.to_thread.run_sync(render, runtime_dir)
    return Response(body, headers={"content-type": CONTENT_TYPE})
