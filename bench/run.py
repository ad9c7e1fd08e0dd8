#!/usr/bin/env python3
"""ringpipe vs piping-server 1.12.9 on loopback: throughput, fan-out, latency, many pipes, idle
memory and a stalled reader; every byte checked.

    python bench/run.py [--rounds 3] [--scenarios throughput,fanout,latency,pairs,idle,slow-reader]
                        [--quick] [--workers N] [--workers-sweep 1,2,4 | --sweep] [--out FILE]

What it does (see bench/README.md):

- installs piping-server@1.12.9 with npm into ``bench/.piping-server/`` (once);
- starts ringpipe (``python -m ringpipe serve --host 127.0.0.1 --port 0``, defaults otherwise)
  and piping-server on loopback, each in its own process group;
- runs every case against both servers, interleaved (the order flips every round);
- prints one table per scenario, medians (min-max) and the ratio ringpipe/piping-server, and
  with ``--workers-sweep`` a scaling table; writes the raw results to
  ``bench/results/<timestamp>.json``;
- stops every server it started at the end, also on Ctrl+C, SIGTERM or an exception.

The load generator is asyncio over raw non-blocking sockets, in forked client processes. A
bulk sender PUTs a chunked body whose byte at offset ``i`` is ``PATTERN[i % PERIOD]``
(``PATTERN`` is ``PERIOD`` random bytes from a fixed seed, ``PERIOD`` a prime just under 1 MiB,
so a stale lap of any power-of-two ring, a dropped or a repeated block shows up as a mismatch).
Chunks are memoryview slices of the pattern sent with ``sendmsg`` (no copies). Every receiver
parses the HTTP response (chunked, Content-Length or until-close) and checks every byte
against the pattern at its offset with ``bytearray.startswith(memoryview)`` (a memcmp;
``memoryview == memoryview`` is an element-by-element loop, ~100x slower), then the total
length and the clean end (final 0-chunk). The latency sender's records carry a sequence
number, a CLOCK_MONOTONIC send time and pattern filler, each checked on arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PIPING_VERSION = "1.12.9"
PIPING_DIR = BENCH_DIR / ".piping-server"
PIPING_JS = PIPING_DIR / "node_modules" / "piping-server" / "dist" / "src" / "index.js"
RESULTS_DIR = BENCH_DIR / "results"

HOST = "127.0.0.1"
SEED = 20240611
PERIOD = 1_048_573  # prime, just under 1 MiB: never a divisor of a power-of-two ring
PATTERN = random.Random(SEED).randbytes(PERIOD)
PATTERN2 = memoryview(PATTERN + PATTERN)  # any window of <= PERIOD bytes is contiguous here
RECV_BUF = 1 << 20
STALL_S = 30.0  # no byte moved for this long in a client process: the run fails
SETTLE_S = 0.5  # receivers' requests written -> sender starts
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SCENARIOS = ("throughput", "fanout", "latency", "pairs", "idle", "slow-reader")
SWEEP_DEFAULT = ("pairs", "fanout")
RP = "ringpipe"
REF = "piping-server"
REC = 64  # latency record: seq u64, send time u64 (ns, CLOCK_MONOTONIC), 48 bytes of pattern
REC_FILL = REC - 16
REC_HEAD = memoryview(f"{REC:x}\r\n".encode())
MB, MIB = 1e6, 1 << 20


# ---------------------------------------------------------------- sizes and small helpers


def parse_size(text: str) -> int:
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if raw and raw[-1] in units:
        return int(float(raw[:-1]) * units[raw[-1]])
    return int(raw)


def fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..1)."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def split_even(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_cpu_seconds(root: int) -> tuple[float, int]:
    """utime+stime (+ reaped children's cutime+cstime, so a dead worker's time is kept) of a tree."""
    ticks = 0
    pids = process_tree(root)
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:  # fields 14..17 of stat(5) are f[11..14] here
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK, len(pids)


def _kib_field(path: str, name: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_memory(root: int) -> tuple[int, str, int]:
    """Memory of a process tree: (bytes, "PSS" or "RSS", process count). PSS (smaps_rollup,
    readable for our own processes and for root) splits shared pages (forked workers, shared
    memory) among their users; RSS counts them once per process."""
    pids = process_tree(root)
    pss = [_kib_field(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids]
    if all(v is not None for v in pss):
        return sum(v or 0 for v in pss), "PSS", len(pids)
    rss = [_kib_field(f"/proc/{pid}/status", "VmRSS:") or 0 for pid in pids]
    return sum(rss), "RSS", len(pids)


def wait_quiet(pid: int, limit_s: float = 20.0, step_s: float = 0.5, eps_s: float = 0.02) -> bool:
    """Wait until the process tree uses at most ``eps_s`` CPU-seconds per ``step_s``."""
    deadline = time.monotonic() + limit_s
    last = tree_cpu_seconds(pid)[0]
    while time.monotonic() < deadline:
        time.sleep(step_s)
        cur = tree_cpu_seconds(pid)[0]
        if cur - last <= eps_s:
            return True
        last = cur
    return False


def machine_cpu() -> tuple[float, float, float]:
    """Whole-machine (busy, steal, wall) seconds from /proc/stat: how noisy was the box."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK, time.monotonic()


class Meter:
    """Server CPU (whole process tree) and the rest of the machine over a window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.srv0, _ = tree_cpu_seconds(pid)
        self.box0 = machine_cpu()

    def stop(self, client_cpu: float) -> dict[str, Any]:
        srv1, npids = tree_cpu_seconds(self.pid)
        box1 = machine_cpu()
        window = max(1e-9, box1[2] - self.box0[2])
        srv = srv1 - self.srv0
        return {
            "server_cpu_s": srv,
            "server_pids": npids,
            "window_s": window,
            # CPU used by anything that is neither the server nor the client, and time stolen
            # by the hypervisor, over the same window
            "other_cores": max(0.0, (box1[0] - self.box0[0]) - srv - client_cpu) / window,
            "steal_cores": (box1[1] - self.box0[1]) / window,
        }


# ---------------------------------------------------------------- async socket plumbing


def _wait_fd(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def ready() -> None:
        remove(fd)
        if not fut.done():
            fut.set_result(None)

    add(fd, ready)
    fut.add_done_callback(lambda _f: remove(fd))
    return fut


async def sendmsg_all(sock: socket.socket, parts: list[memoryview]) -> None:
    loop = asyncio.get_running_loop()
    while parts:
        try:
            sent = sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            await _wait_fd(loop, sock.fileno(), write=True)
            continue
        while sent:
            head = parts[0]
            if sent >= len(head):
                sent -= len(head)
                parts.pop(0)
            else:
                parts[0] = head[sent:]
                sent = 0


async def recv_into(sock: socket.socket, view: memoryview) -> int:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            await _wait_fd(loop, sock.fileno(), write=False)


async def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 10)
    except BaseException:
        sock.close()
        raise
    return sock


def queued_bytes(sock: socket.socket) -> int:
    """Bytes waiting in the socket's kernel receive queue (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


class BenchError(Exception):
    pass


@dataclass
class Head:
    status: int
    headers: dict[str, str]
    reason: str


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise BenchError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
    return Head(int(parts[1]), headers, parts[2] if len(parts) > 2 else "")


# ---------------------------------------------------------------- the receiver: parse + verify


@dataclass
class RecvResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    framing: str = ""
    nbytes: int = 0
    t_req: float | None = None  # GET written
    t_head: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    recv_calls: int = 0


class Receiver:
    """One GET: read the head, then every body byte is compared against the pattern.

    ``exact=False``: the expected length is only an upper bound (the caller checks the total).
    ``hold``: an event; body reads wait for it (the bytes that came with the head are still
    parsed), which makes a reader that stops after its response head."""

    def __init__(
        self,
        port: int,
        target: str,
        expected: int,
        *,
        bufsize: int = RECV_BUF,
        exact: bool = True,
        rcvbuf: int | None = None,
    ) -> None:
        self.port, self.target, self.expected, self.exact, self.rcvbuf = port, target, expected, exact, rcvbuf
        self.buf = bytearray(bufsize)
        self.view = memoryview(self.buf)
        self.res = RecvResult()
        self.sock: socket.socket | None = None
        self.hold: asyncio.Event | None = None
        self.t_recv_ns = 0  # time.monotonic_ns() right after the last recv returned

    async def open(self) -> None:
        self.sock = await connect(self.port, self.rcvbuf)
        req = (
            f"GET {self.target} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            "User-Agent: ringpipe-bench\r\nAccept: */*\r\n\r\n"
        ).encode()
        await sendmsg_all(self.sock, [memoryview(req)])
        self.res.t_req = time.monotonic()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    async def _recv(self, view: memoryview) -> int:
        if self.hold is not None and not self.hold.is_set():
            await self.hold.wait()
        assert self.sock is not None
        n = await recv_into(self.sock, view)
        self.t_recv_ns = time.monotonic_ns()
        self.res.recv_calls += 1
        return n

    def verify(self, start: int, length: int) -> None:
        """buf[start:start+length] must equal the stream at offset res.nbytes."""
        res = self.res
        if res.nbytes + length > self.expected:
            raise BenchError(f"more data than expected: {res.nbytes + length} > {self.expected}")
        if res.t_first is None:
            res.t_first = time.monotonic()
        buf = self.buf
        while length:
            off = res.nbytes % PERIOD
            take = min(length, PERIOD)
            if not buf.startswith(PATTERN2[off : off + take], start, start + take):
                mine = bytes(self.view[start : start + take])
                want = bytes(PATTERN2[off : off + take])
                first = next(i for i in range(take) if mine[i] != want[i])
                raise BenchError(f"content mismatch at stream offset {res.nbytes + first}")
            res.nbytes += take
            start += take
            length -= take

    async def run(self) -> RecvResult:
        assert self.sock is not None
        res, buf, view, sock = self.res, self.buf, self.view, self.sock
        end = 0
        while True:  # response head
            i = buf.find(b"\r\n\r\n", 0, end)
            if i >= 0:
                break
            if end == len(buf):
                raise BenchError("response head too large")
            n = await recv_into(sock, view[end:])
            self.t_recv_ns = time.monotonic_ns()
            if n == 0:
                raise BenchError("connection closed before the response head")
            end += n
        head = parse_head(bytes(buf[:i]))
        res.status, res.t_head = head.status, time.monotonic()
        pos = i + 4
        if head.status != 200:
            raise BenchError(f"HTTP {head.status} {head.reason}: {bytes(buf[pos:end])[:200]!r}")
        te = head.headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            res.framing = "chunked"
            await self._chunked(pos, end)
        elif "content-length" in head.headers:
            length = int(head.headers["content-length"])
            res.framing = "content-length"
            if length != self.expected:
                raise BenchError(f"Content-Length {length} != expected {self.expected}")
            await self._plain(pos, end, length)
        else:
            res.framing = "until-close"
            await self._plain(pos, end, None)
        if self.exact and res.nbytes != self.expected:
            raise BenchError(f"short body: {res.nbytes} of {self.expected} bytes")
        res.t_last = time.monotonic()
        res.ok = True
        return res

    async def _plain(self, pos: int, end: int, length: int | None) -> None:
        view, res = self.view, self.res
        if end > pos:
            self.verify(pos, end - pos)
        while length is None or res.nbytes < length:
            n = await self._recv(view)
            if n == 0:
                if length is None:
                    return
                raise BenchError(f"connection closed after {res.nbytes} of {length} body bytes")
            self.verify(0, n)

    async def _chunked(self, pos: int, end: int) -> None:
        buf, view, res = self.buf, self.view, self.res
        remaining = 0  # body bytes left in the current chunk
        need_crlf = False  # after a chunk's data
        in_trailer = False  # after the 0-chunk's size line
        while True:
            while pos < end:
                if remaining:
                    take = min(remaining, end - pos)
                    self.verify(pos, take)
                    pos += take
                    remaining -= take
                    if not remaining:
                        need_crlf = True
                elif need_crlf:
                    if end - pos < 2:
                        break
                    if buf[pos : pos + 2] != b"\r\n":
                        raise BenchError(f"chunk data not followed by CRLF at stream offset {res.nbytes}")
                    pos += 2
                    need_crlf = False
                else:
                    j = buf.find(b"\r\n", pos, end)
                    if j < 0:
                        if end - pos > 4096:
                            raise BenchError("chunk-size line too long")
                        break
                    line = bytes(buf[pos:j])
                    pos = j + 2
                    if in_trailer:
                        if not line:  # the empty line after the last chunk: a clean end
                            if pos != end:
                                raise BenchError(f"{end - pos} stray byte(s) after the final chunk")
                            return
                        continue  # a trailer field: ignore
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise BenchError(f"bad chunk-size line {line[:40]!r}") from None
                    if size == 0:
                        in_trailer = True
                    else:
                        remaining = size
            # keep an incomplete line (or CRLF) at the front, refill after it
            if pos == end:
                pos = end = 0
            elif pos:
                buf[: end - pos] = buf[pos:end]
                end -= pos
                pos = 0
            n = await self._recv(view[end:])
            if n == 0:
                raise BenchError(f"connection closed before the final 0-chunk (after {res.nbytes} bytes)")
            end += n


def record_filler(seq: int) -> memoryview:
    off = (seq * REC_FILL) % PERIOD
    return PATTERN2[off : off + REC_FILL]


class LatencyReceiver(Receiver):
    """Parses the body as 64-byte records (whatever the HTTP chunking): each must carry the next
    sequence number and its pattern filler; latency = time the recv returned - send time."""

    def __init__(self, port: int, target: str, records: int) -> None:
        super().__init__(port, target, records * REC, bufsize=64 * 1024)
        self.pending = bytearray()
        self.seq = 0
        self.lat_ns: list[int] = []

    def verify(self, start: int, length: int) -> None:
        res = self.res
        if res.nbytes + length > self.expected:
            raise BenchError(f"more data than expected: {res.nbytes + length} > {self.expected}")
        if res.t_first is None:
            res.t_first = time.monotonic()
        pending = self.pending
        pending += self.view[start : start + length]
        res.nbytes += length
        whole = len(pending) - len(pending) % REC
        for off in range(0, whole, REC):
            seq, t_sent = struct.unpack_from("<QQ", pending, off)
            if seq != self.seq:
                raise BenchError(f"record {self.seq}: got sequence number {seq} (lost, repeated or reordered)")
            if not pending.startswith(record_filler(seq), off + 16, off + REC):
                raise BenchError(f"record {seq}: content mismatch")
            self.lat_ns.append(self.t_recv_ns - t_sent)
            self.seq += 1
        del pending[:whole]


# ---------------------------------------------------------------- the sender


@dataclass
class SendResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    log: str = ""
    nbytes: int = 0
    t_start: float | None = None
    t_req: float | None = None  # request head written
    t_body_done: float | None = None
    t_response_done: float | None = None


def chunk_header(n: int) -> memoryview:
    return memoryview(f"{n:x}\r\n".encode())


CRLF = memoryview(b"\r\n")


def put_head(port: int, target: str) -> memoryview:
    return memoryview(
        (
            f"PUT {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: ringpipe-bench\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )


async def read_small_response(sock: socket.socket, res: SendResult) -> None:
    """The sender's response: a short text log; done when its framing says so."""
    data = bytearray()
    scratch = bytearray(65536)
    view = memoryview(scratch)
    head: Head | None = None
    body_at = 0
    while True:
        if head is None:
            i = data.find(b"\r\n\r\n")
            if i >= 0:
                head = parse_head(bytes(data[:i]))
                res.status = head.status
                body_at = i + 4
        if head is not None:
            body = bytes(data[body_at:])
            if "chunked" in head.headers.get("transfer-encoding", "").lower():
                text, complete = _dechunk(body)
            elif "content-length" in head.headers:
                length = int(head.headers["content-length"])
                text, complete = body[:length], len(body) >= length
            else:
                text, complete = body, False
            res.log = text.decode("utf-8", "replace")
            if complete:
                return
        n = await recv_into(sock, view)
        if n == 0:
            if head is not None and "chunked" not in head.headers.get("transfer-encoding", "").lower():
                return
            raise BenchError("sender: connection closed before the response ended")
        data += view[:n]
        if len(data) > 1 << 20:
            raise BenchError("sender: response larger than 1 MiB")


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    out, pos = bytearray(), 0
    while True:
        j = body.find(b"\r\n", pos)
        if j < 0:
            return bytes(out), False
        size = int(body[pos:j].split(b";", 1)[0].strip() or b"0", 16)
        pos = j + 2
        if size == 0:
            return bytes(out), body.find(b"\r\n\r\n", pos - 2) >= 0
        if len(body) < pos + size + 2:
            out += body[pos:]
            return bytes(out), False
        out += body[pos : pos + size]
        pos += size + 2


async def send_body(
    sock: socket.socket,
    port: int,
    target: str,
    size: int,
    chunk: int,
    res: SendResult,
    stop: Callable[[], bool] | None = None,
) -> None:
    """The pattern, ``size`` bytes (or until ``stop()`` says so, checked between chunks)."""
    res.t_start = time.monotonic()
    await sendmsg_all(sock, [put_head(port, target)])
    res.t_req = time.monotonic()
    full_header = chunk_header(chunk)
    sent = 0
    while sent < size and not (stop is not None and stop()):
        n = min(chunk, size - sent)
        off = sent % PERIOD
        await sendmsg_all(sock, [full_header if n == chunk else chunk_header(n), PATTERN2[off : off + n], CRLF])
        sent += n
        res.nbytes = sent
    await sendmsg_all(sock, [memoryview(b"0\r\n\r\n")])
    res.t_body_done = time.monotonic()


async def wait_log(res: SendResult, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in res.log:
        if time.monotonic() > deadline:
            raise BenchError(f"sender: no {text!r} in the log after {timeout:.0f} s: {res.log[:300]!r}")
        await asyncio.sleep(0.002)


async def send_records(
    sock: socket.socket, port: int, target: str, records: int, interval_s: float, res: SendResult, late_ns: list[int]
) -> None:
    """One 64-byte record per chunk every ``interval_s``, once the log says the transfer started."""
    await sendmsg_all(sock, [put_head(port, target)])
    res.t_req = time.monotonic()
    await wait_log(res, "Start sending")
    res.t_start = time.monotonic()
    interval_ns = int(interval_s * 1e9)
    t0 = time.monotonic_ns()
    for seq in range(records):
        due = t0 + seq * interval_ns
        now = time.monotonic_ns()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
        filler = record_filler(seq)
        t_sent = time.monotonic_ns()
        record = struct.pack("<QQ", seq, t_sent) + filler
        await sendmsg_all(sock, [REC_HEAD, memoryview(record), CRLF])
        late_ns.append(t_sent - due)
        res.nbytes += REC
    await sendmsg_all(sock, [memoryview(b"0\r\n\r\n")])
    res.t_body_done = time.monotonic()


async def send_and_check(sock: socket.socket, res: SendResult, body: Coroutine[Any, Any, None]) -> None:
    """Write the request (``body``) while reading the response log; require 200, no [ERROR], a
    complete response, and the body written before the response ended."""
    reader = asyncio.create_task(read_small_response(sock, res))
    writer = asyncio.create_task(body)
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if writer not in done:
            exc = reader.exception()
            raise BenchError(
                f"response ended before the body was sent ({exc!r}; HTTP {res.status}; log {res.log[-200:]!r})"
            )
        writer.result()
        await reader
    finally:
        for t in (reader, writer):
            t.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    res.t_response_done = time.monotonic()
    if res.status != 200:
        raise BenchError(f"sender got HTTP {res.status}: {res.log[:200]!r}")
    if "[ERROR]" in res.log:
        raise BenchError(f"sender log reports an error: {res.log!r}")
    res.ok = True


# ---------------------------------------------------------------- client processes


async def guard(res: Any, coro: Awaitable[Any]) -> None:
    """Run one party; its failure goes into ``res.error`` instead of stopping the others."""
    try:
        await coro
    except asyncio.CancelledError:
        res.error = res.error or "cancelled (stall or deadline)"
        raise
    except Exception as exc:
        res.error = res.error or f"{type(exc).__name__}: {exc}"


async def watch(
    tasks: list[asyncio.Task[Any]], progress: Callable[[], int], deadline: float, results: list[Any]
) -> None:
    """Wait for the tasks; cancel them all on a stall (no progress for STALL_S) or the deadline,
    and mark every unfinished result with the reason."""
    last, last_t = progress(), time.monotonic()
    pending = set(tasks)
    while pending:
        _done, pending = await asyncio.wait(pending, timeout=1.0)
        now, cur = time.monotonic(), progress()
        if cur != last:
            last, last_t = cur, now
        why = "deadline" if now > deadline else f"stalled {STALL_S:.0f}s" if now - last_t > STALL_S else None
        if why and pending:
            for t in pending:
                t.cancel()
            await asyncio.wait(pending)
            for r in results:
                if not r.ok and not r.error:
                    r.error = why
            return


class Ctl:
    """A client process's end of its control pipe, awaitable without threads."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, tag: str, payload: Any = None) -> None:
        self.conn.send((tag, payload))

    async def recv(self) -> Any:
        loop = asyncio.get_running_loop()
        while not self.conn.poll():
            await _wait_fd(loop, self.conn.fileno(), write=False)
        return self.conn.recv()

    async def expect(self, want: str) -> Any:
        msg = await self.recv()
        tag, payload = msg if isinstance(msg, tuple) else (msg, None)
        if tag != want:
            raise BenchError(f"expected {want!r} from the bench, got {tag!r}")
        return payload


def _client_entry(conn: Any, fn: Callable[..., Coroutine[Any, Any, Any]], kwargs: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and kills us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cpu0 = cpu_self()
    try:
        result = asyncio.run(fn(Ctl(conn), **kwargs))
        msg: tuple[str, Any] = ("done", {"result": result, "cpu_s": cpu_self() - cpu0})
    except BaseException as exc:
        msg = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
    with contextlib.suppress(Exception):
        conn.send(msg)


@dataclass
class Child:
    kind: str
    proc: Any
    conn: Any
    outcome: tuple[str, Any] | None = None


class Clients:
    """Forked client processes, each running ``await fn(ctl, **kwargs)``. They talk to the bench
    over a pipe: ("ready", ...), phase messages, then ("done", {"result", "cpu_s"}) or
    ("error", text). Leaving the ``with`` block kills whatever is still alive."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.children: list[Child] = []
        self.finished = False

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *_exc: object) -> None:
        for c in self.children:
            c.proc.join(5 if self.finished else 0.2)
            if c.proc.is_alive():
                c.proc.kill()
                c.proc.join(5)
            c.conn.close()

    def spawn(self, kind: str, fn: Callable[..., Coroutine[Any, Any, Any]], **kwargs: Any) -> int:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_client_entry, args=(child, fn, kwargs), daemon=True)
        p.start()
        child.close()
        self.children.append(Child(kind, p, parent))
        return len(self.children) - 1

    def send(self, idx: int, tag: str, payload: Any = None) -> None:
        self.children[idx].conn.send((tag, payload))

    def broadcast(self, tag: str, payload: Any = None) -> None:
        for i in range(len(self.children)):
            self.send(i, tag, payload)

    def _next(self, idx: int, deadline: float) -> tuple[str, Any]:
        c = self.children[idx]
        while True:
            if c.conn.poll(0.05):
                try:
                    msg: tuple[str, Any] = c.conn.recv()
                    return msg
                except EOFError:
                    raise BenchError(f"{c.kind} process died (exit {c.proc.exitcode})") from None
            if not c.proc.is_alive() and not c.conn.poll():
                raise BenchError(f"{c.kind} process died without reporting (exit {c.proc.exitcode})")
            if time.monotonic() > deadline:
                raise BenchError(f"{c.kind} process did not answer in time")

    def expect(self, idx: int, tags: tuple[str, ...], timeout: float) -> tuple[str, Any]:
        tag, payload = self._next(idx, time.monotonic() + timeout)
        if tag == "error":
            self.children[idx].outcome = (tag, payload)
            raise BenchError(f"{self.children[idx].kind} process failed: {payload}")
        if tag not in tags:
            raise BenchError(f"{self.children[idx].kind} process said {tag!r}, expected {tags}")
        return tag, payload

    def expect_all(self, tag: str, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        return [self.expect(i, (tag,), max(0.0, deadline - time.monotonic()))[1] for i in range(len(self.children))]

    def finish(self, deadline: float) -> list[Child]:
        """Every child's outcome: ("done", {"result", "cpu_s"}) or ("error", text)."""
        while any(c.outcome is None for c in self.children):
            for i, c in enumerate(self.children):
                if c.outcome is None and c.conn.poll(0):
                    tag, payload = self._next(i, deadline)
                    if tag in ("done", "error"):
                        c.outcome = (tag, payload)
            if time.monotonic() > deadline:
                raise BenchError("client processes did not report in time")
            for c in self.children:
                if c.outcome is None and not c.proc.is_alive() and not c.conn.poll():
                    raise BenchError(f"a {c.kind} process died without reporting (exit {c.proc.exitcode})")
            time.sleep(0.02)
        self.finished = True
        return self.children


def outcomes(children: list[Child]) -> tuple[dict[str, list[Any]], list[float], list[str]]:
    """Results by kind, CPU seconds per process, and errors, from finished children."""
    by_kind: dict[str, list[Any]] = {}
    cpu: list[float] = []
    errors: list[str] = []
    for c in children:
        assert c.outcome is not None
        tag, payload = c.outcome
        if tag != "done":
            errors.append(f"{c.kind} process: {payload}")
            continue
        cpu.append(payload["cpu_s"])
        by_kind.setdefault(c.kind, []).append(payload["result"])
    return by_kind, cpu, errors


# client process bodies -------------------------------------------------------------------


async def bulk_receivers(ctl: Ctl, port: int, target: str, count: int, size: int, budget_s: float) -> dict[str, Any]:
    recvs = [Receiver(port, target, size) for _ in range(count)]
    try:
        for r in recvs:
            await r.open()
        ctl.send("ready")
        tasks = [asyncio.create_task(guard(r.res, r.run())) for r in recvs]
        await watch(
            tasks, lambda: sum(r.res.nbytes for r in recvs), time.monotonic() + budget_s, [r.res for r in recvs]
        )
    finally:
        for r in recvs:
            r.close()
    return {"receivers": [r.res.__dict__ for r in recvs]}


async def bulk_sender(ctl: Ctl, port: int, target: str, size: int, chunk: int, budget_s: float) -> dict[str, Any]:
    res = SendResult()
    sock = await connect(port)
    try:
        ctl.send("ready")
        await ctl.expect("go")
        cpu0 = cpu_self()
        task = asyncio.create_task(
            guard(res, send_and_check(sock, res, send_body(sock, port, target, size, chunk, res)))
        )
        await watch([task], lambda: res.nbytes + len(res.log), time.monotonic() + budget_s, [res])
    finally:
        sock.close()
    return {"sender": res.__dict__, "cpu_after_go_s": cpu_self() - cpu0}


async def latency_receivers(
    ctl: Ctl, port: int, target: str, count: int, records: int, budget_s: float
) -> dict[str, Any]:
    recvs = [LatencyReceiver(port, target, records) for _ in range(count)]
    try:
        for r in recvs:
            await r.open()
        ctl.send("ready")
        tasks = [asyncio.create_task(guard(r.res, r.run())) for r in recvs]
        await watch(
            tasks, lambda: sum(r.res.nbytes for r in recvs), time.monotonic() + budget_s, [r.res for r in recvs]
        )
    finally:
        for r in recvs:
            r.close()
    return {"receivers": [{**r.res.__dict__, "records": r.seq, "lat_ns": r.lat_ns} for r in recvs]}


async def latency_sender(
    ctl: Ctl, port: int, target: str, records: int, interval_s: float, budget_s: float
) -> dict[str, Any]:
    res = SendResult()
    late: list[int] = []
    sock = await connect(port)
    try:
        ctl.send("ready")
        await ctl.expect("go")
        body = send_records(sock, port, target, records, interval_s, res, late)
        task = asyncio.create_task(guard(res, send_and_check(sock, res, body)))
        await watch([task], lambda: res.nbytes + len(res.log), time.monotonic() + budget_s, [res])
    finally:
        sock.close()
    late.sort()
    return {
        "sender": res.__dict__,
        "late_p50_ms": (percentile(late, 0.5) or 0) / 1e6,
        "late_p99_ms": (percentile(late, 0.99) or 0) / 1e6,
        "late_max_ms": (late[-1] if late else 0) / 1e6,
    }


async def pairs_client(
    ctl: Ctl, port: int, paths: list[str], size: int, chunk: int, budget_s: float, seed: int
) -> dict[str, Any]:
    """Both parties of each of ``paths``, all started at once in a random order."""
    recvs = [Receiver(port, p, size, bufsize=256 * 1024) for p in paths]
    sends = [SendResult() for _ in paths]
    socks: list[socket.socket] = []

    async def sender(path: str, res: SendResult) -> None:
        sock = await connect(port)
        socks.append(sock)
        await send_and_check(sock, res, send_body(sock, port, path, size, chunk, res))
        sock.close()

    async def receiver(r: Receiver) -> None:
        await r.open()
        await r.run()
        r.close()

    ctl.send("ready")
    await ctl.expect("go")
    t_go = time.monotonic()
    coros: list[tuple[Any, Awaitable[None]]] = [(r.res, receiver(r)) for r in recvs]
    coros += [(s, sender(p, s)) for p, s in zip(paths, sends, strict=True)]
    random.Random(seed).shuffle(coros)
    try:
        tasks = [asyncio.create_task(guard(res, coro)) for res, coro in coros]
        await watch(
            tasks,
            lambda: sum(r.res.nbytes for r in recvs) + sum(s.nbytes for s in sends),
            t_go + budget_s,
            [r.res for r in recvs] + sends,
        )
    finally:
        for r in recvs:
            r.close()
        for s in socks:
            s.close()
    return {
        "t_go": t_go,
        "pipes": [
            {"path": p, "receiver": r.res.__dict__, "sender": s.__dict__}
            for p, r, s in zip(paths, recvs, sends, strict=True)
        ],
    }


async def idle_client(ctl: Ctl, port: int, paths: list[str], sample: int, size: int, chunk: int) -> dict[str, Any]:
    """Hold one waiting GET per path; on "check", make sure none got a byte or was closed, then
    complete ``sample`` of them with a real sender (every byte checked)."""
    recvs = [Receiver(port, p, size, bufsize=16 * 1024) for p in paths]
    try:
        for i in range(0, len(recvs), 100):  # 100 connects at a time
            await asyncio.gather(*(r.open() for r in recvs[i : i + 100]))
        ctl.send("ready", len(recvs))
        await ctl.expect("check")
        silent, problems = 0, []
        for r in recvs:
            assert r.sock is not None
            try:
                data = r.sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                silent += 1
                continue
            except OSError as exc:
                problems.append(f"{r.target}: {exc!r}")
                continue
            problems.append(f"{r.target}: " + (f"got {data[:40]!r} while waiting" if data else "closed while waiting"))
        picked = recvs[:sample]
        sends = [SendResult() for _ in picked]

        async def sender(r: Receiver, res: SendResult) -> None:
            sock = await connect(port)
            try:
                await send_and_check(sock, res, send_body(sock, port, r.target, size, chunk, res))
            finally:
                sock.close()

        tasks = [asyncio.create_task(guard(r.res, r.run())) for r in picked]
        tasks += [asyncio.create_task(guard(s, sender(r, s))) for r, s in zip(picked, sends, strict=True)]
        await watch(
            tasks,
            lambda: sum(r.res.nbytes for r in picked) + sum(s.nbytes for s in sends),
            time.monotonic() + 60,
            [r.res for r in picked] + sends,
        )
    finally:
        for r in recvs:
            r.close()
    return {
        "connections": len(recvs),
        "silent": silent,
        "problems": problems[:10],
        "problem_count": len(problems),
        "sample": [{"receiver": r.res.__dict__, "sender": s.__dict__} for r, s in zip(picked, sends, strict=True)],
    }


async def slow_receivers(ctl: Ctl, port: int, target: str, cap: int, rcvbuf: int, budget_s: float) -> dict[str, Any]:
    """n=2: one receiver reads, the other reads its head and then holds until "resume"."""
    normal = Receiver(port, target, cap, exact=False)
    stalled = Receiver(port, target, cap, exact=False, rcvbuf=rcvbuf)
    stalled.hold = asyncio.Event()
    both = [normal, stalled]
    measured: dict[str, Any] = {}
    try:
        for r in both:
            await r.open()
        assert stalled.sock is not None
        measured["stalled_rcvbuf"] = stalled.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        ctl.send("ready")
        tasks = [asyncio.create_task(guard(r.res, r.run())) for r in both]
        total = None
        while total is None:
            tag, payload = await ctl.recv()
            if tag == "measure":
                got = {}
                for name, r in (("normal", normal), ("stalled", stalled)):
                    assert r.sock is not None
                    got[f"{name}_parsed"] = r.res.nbytes
                    got[f"{name}_queued"] = queued_bytes(r.sock)
                    got[f"{name}_head"] = r.res.t_head is not None
                measured.update(got)
                ctl.send("measured", got)
            elif tag == "resume":
                stalled.hold.set()
            elif tag == "total":
                total = int(payload)
        await watch(
            tasks, lambda: normal.res.nbytes + stalled.res.nbytes, time.monotonic() + budget_s, [r.res for r in both]
        )
        for r in both:
            if r.res.ok and r.res.nbytes != total:
                r.res.ok = False
                r.res.error = f"got {r.res.nbytes} bytes, the sender sent {total}"
    finally:
        for r in both:
            r.close()
    return {"receivers": [normal.res.__dict__, stalled.res.__dict__], "measured": measured}


async def slow_sender(
    ctl: Ctl, port: int, target: str, cap: int, chunk: int, settle_s: float, budget_s: float
) -> dict[str, Any]:
    """Push as fast as the server takes it; report ("stalled", bytes) once nothing moved for
    ``settle_s`` after the transfer started (or ("capped", bytes) at ``cap``); answer "count";
    on "finish" end the body after the current chunk."""
    res = SendResult()
    stop = False
    sock = await connect(port)
    try:
        ctl.send("ready")
        await ctl.expect("go")
        t_go = time.monotonic()
        body = send_body(sock, port, target, cap, chunk, res, stop=lambda: stop)
        task = asyncio.create_task(guard(res, send_and_check(sock, res, body)))

        async def detect() -> None:
            last, since = -1, time.monotonic()
            while True:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if res.nbytes != last or "Start sending" not in res.log:
                    last, since = res.nbytes, now
                elif now - since >= settle_s:
                    ctl.send("stalled", {"pushed": res.nbytes, "t_stall": since - t_go, "t_detect": now - t_go})
                    return
                if res.nbytes >= cap or task.done():
                    ctl.send(
                        "capped", {"pushed": res.nbytes, "t_stall": None, "t_detect": now - t_go, "ended": task.done()}
                    )
                    return

        await detect()
        while not stop:
            tag, _payload = await ctl.recv()
            if tag == "count":
                ctl.send("count", res.nbytes)
            elif tag == "finish":
                stop = True
        await watch([task], lambda: res.nbytes + len(res.log), time.monotonic() + budget_s, [res])
        ctl.send("total", res.nbytes if res.t_body_done else None)
    finally:
        sock.close()
    return {"sender": res.__dict__}


# ---------------------------------------------------------------- one run per scenario


def budget_for(nbytes: float) -> float:
    return 120.0 + nbytes / 20e6  # generous: a run at 20 MB/s aggregate still finishes


def run_transfer(port: int, pid: int, n: int, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """throughput and fanout: 1 sender -> n receivers of ``size`` bytes; receivers connect first."""
    target = f"/bench-{uuid.uuid4().hex[:12]}" + (f"?n={n}" if n > 1 else "")
    budget = budget_for(n * size)
    nprocs = max(1, min(n, args.client_procs))
    record: dict[str, Any] = {"n": n, "size": size, "target": target, "receiver_procs": nprocs, "ok": False}
    with Clients() as cl:
        for count in split_even(n, nprocs):
            cl.spawn("receiver", bulk_receivers, port=port, target=target, count=count, size=size, budget_s=budget)
        si = cl.spawn("sender", bulk_sender, port=port, target=target, size=size, chunk=args.chunk, budget_s=budget)
        cl.expect_all("ready", 30)  # every receiver has written its GET; the sender is connected
        time.sleep(SETTLE_S)
        meter = Meter(pid)
        cl.send(si, "go")
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    receivers = [r for part in by_kind.get("receiver", []) for r in part["receivers"]]
    sender = by_kind["sender"][0]["sender"] if "sender" in by_kind else {}
    record.update(meter.stop(sum(proc_cpu)))
    errors += [f"receiver: {r['error']}" for r in receivers if not r["ok"]]
    if sender and not sender["ok"]:
        errors.append(f"sender: {sender['error']}")
    if len(receivers) != n:
        errors.append(f"{len(receivers)} receiver results for n={n}")
    record.update(sender=sender, receivers=receivers, errors=errors, client_proc_cpu_s=proc_cpu)
    if not errors and sender.get("t_start"):
        t_end = max(r["t_last"] for r in receivers)
        elapsed = t_end - sender["t_start"]
        srv = record["server_cpu_s"]
        record.update(
            ok=True,
            verified=True,
            elapsed_s=elapsed,
            mb_s=n * size / elapsed / MB,
            server_cpu_s_per_gb=srv / (n * size / 1e9),
            client_cpu_s=sum(proc_cpu),
            client_max_proc_pct=100 * max(proc_cpu) / elapsed,
            busy_cores=(srv + sum(proc_cpu)) / elapsed,
            framing=sorted({r["framing"] for r in receivers}),
            sender_log=sender.get("log", ""),
            # both servers say so when every receiver was already waiting as the sender arrived
            receivers_were_waiting=f"{n} receiver(s) has/have been connected" in sender.get("log", ""),
        )
    record["receivers"] = receivers[:4]  # keep the JSON small; errors are kept above
    return record


def run_latency(port: int, pid: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    target = f"/bench-lat-{uuid.uuid4().hex[:12]}" + (f"?n={n}" if n > 1 else "")
    records, interval = args.latency_records, args.latency_interval_ms / 1000
    budget = records * interval + 60
    nprocs = max(1, min(n, args.client_procs))
    record: dict[str, Any] = {"n": n, "records": records, "interval_ms": args.latency_interval_ms, "ok": False}
    with Clients() as cl:
        for count in split_even(n, nprocs):
            cl.spawn(
                "receiver", latency_receivers, port=port, target=target, count=count, records=records, budget_s=budget
            )
        si = cl.spawn(
            "sender", latency_sender, port=port, target=target, records=records, interval_s=interval, budget_s=budget
        )
        cl.expect_all("ready", 30)
        time.sleep(SETTLE_S)
        meter = Meter(pid)
        cl.send(si, "go")
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    receivers = [r for part in by_kind.get("receiver", []) for r in part["receivers"]]
    sent = by_kind["sender"][0] if "sender" in by_kind else {}
    sender = sent.get("sender", {})
    record.update(meter.stop(sum(proc_cpu)))
    errors += [f"receiver: {r['error']}" for r in receivers if not r["ok"]]
    errors += [
        f"receiver: {r['records']} of {records} records" for r in receivers if r["ok"] and r["records"] != records
    ]
    if sender and not sender["ok"]:
        errors.append(f"sender: {sender['error']}")
    if len(receivers) != n:
        errors.append(f"{len(receivers)} receiver results for n={n}")
    lat = sorted(x / 1e6 for r in receivers for x in r["lat_ns"])
    record.update(errors=errors, sender=sender, client_proc_cpu_s=proc_cpu)
    if not errors and lat:
        duration = sender["t_body_done"] - sender["t_start"]
        record.update(
            ok=True,
            verified=True,
            samples=len(lat),
            p50_ms=percentile(lat, 0.5),
            p90_ms=percentile(lat, 0.9),
            p99_ms=percentile(lat, 0.99),
            max_ms=lat[-1],
            min_ms=lat[0],
            mean_ms=statistics.fmean(lat),
            send_duration_s=duration,
            sender_late_p50_ms=sent["late_p50_ms"],
            sender_late_p99_ms=sent["late_p99_ms"],
            sender_late_max_ms=sent["late_max_ms"],
            server_cpu_pct=100 * record["server_cpu_s"] / record["window_s"],
            client_cpu_s=sum(proc_cpu),
            # per receiver: p99 in ms (how even the fan-out is)
            per_receiver_p99_ms=[percentile(sorted(x / 1e6 for x in r["lat_ns"]), 0.99) for r in receivers],
        )
    for r in receivers:
        del r["lat_ns"]
    record["receivers"] = receivers[:4]
    return record


def run_pairs(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    npipes, size = args.pairs, args.pairs_size
    paths = [f"/bench-pair-{uuid.uuid4().hex}" for _ in range(npipes)]
    nprocs = max(1, min(npipes, args.client_procs))
    budget = budget_for(npipes * size)
    record: dict[str, Any] = {"pipes": npipes, "size": size, "client_procs": nprocs, "ok": False}
    with Clients() as cl:
        for i in range(nprocs):
            cl.spawn(
                "pairs",
                pairs_client,
                port=port,
                paths=paths[i::nprocs],
                size=size,
                chunk=args.chunk,
                budget_s=budget,
                seed=SEED + i,
            )
        cl.expect_all("ready", 60)
        time.sleep(0.2)
        meter = Meter(pid)
        cl.broadcast("go")
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    parts = by_kind.get("pairs", [])
    pipes = [p for part in parts for p in part["pipes"]]
    record.update(meter.stop(sum(proc_cpu)))
    for p in pipes:
        if not p["receiver"]["ok"]:
            errors.append(f"receiver {p['path']}: {p['receiver']['error']}")
        if not p["sender"]["ok"]:
            errors.append(f"sender {p['path']}: {p['sender']['error']}")
    if len(pipes) != npipes:
        errors.append(f"{len(pipes)} pipe results of {npipes}")
    record.update(errors=errors[:20], error_count=len(errors), client_proc_cpu_s=proc_cpu)
    if not errors:
        t_go = min(part["t_go"] for part in parts)
        wall = max(p["receiver"]["t_last"] for p in pipes) - t_go
        rv = sorted(
            1000 * (p["receiver"]["t_first"] - max(p["receiver"]["t_req"], p["sender"]["t_req"])) for p in pipes
        )
        head = sorted(
            1000 * (p["receiver"]["t_head"] - max(p["receiver"]["t_req"], p["sender"]["t_req"])) for p in pipes
        )
        done = sorted(1000 * (p["receiver"]["t_last"] - t_go) for p in pipes)
        record.update(
            ok=True,
            verified=True,
            wall_s=wall,
            pipes_s=npipes / wall,
            mb_s=npipes * size / wall / MB,
            rendezvous_p50_ms=percentile(rv, 0.5),
            rendezvous_p99_ms=percentile(rv, 0.99),
            rendezvous_max_ms=rv[-1],
            # go -> the last request head written: how long the clients took to get every party in
            requests_out_ms=1000 * (max(max(p["receiver"]["t_req"], p["sender"]["t_req"]) for p in pipes) - t_go),
            head_p50_ms=percentile(head, 0.5),
            done_p50_ms=percentile(done, 0.5),
            server_cpu_ms_per_pipe=1000 * record["server_cpu_s"] / npipes,
            client_cpu_s=sum(proc_cpu),
        )
    return record


def run_idle(spec: ServerSpec, logdir: Path, args: argparse.Namespace, registry: list[Server]) -> dict[str, Any]:
    """A fresh server: warm it with one transfer, then hold ``--idle-conns`` waiting receivers."""
    conns = args.idle_conns
    record: dict[str, Any] = {"connections": conns, "ok": False, "fresh_server": True}
    server = start_server(spec, logdir, suffix="idle")
    registry.append(server)
    try:
        warm = run_transfer(server.port, server.pid, 1, 1 << 20, args)
        if not warm["ok"]:
            raise BenchError(f"warm-up transfer failed: {warm['errors']}")
        wait_quiet(server.pid)
        mem0, kind, npids = tree_memory(server.pid)
        paths = [f"/bench-idle-{uuid.uuid4().hex}" for _ in range(conns)]
        nprocs = max(1, min(conns, args.client_procs))
        sample = split_even(args.idle_sample, nprocs)
        with Clients() as cl:
            for i in range(nprocs):
                cl.spawn(
                    "idle",
                    idle_client,
                    port=server.port,
                    paths=paths[i::nprocs],
                    sample=sample[i],
                    size=args.idle_sample_size,
                    chunk=args.chunk,
                )
            t0 = time.monotonic()
            cl.expect_all("ready", 120)
            record["connect_s"] = time.monotonic() - t0
            record["quiet"] = wait_quiet(server.pid)
            mem1, kind1, npids1 = tree_memory(server.pid)
            meter = Meter(server.pid)
            time.sleep(args.idle_hold_s)
            idle = meter.stop(0.0)
            cl.broadcast("check")
            children = cl.finish(time.monotonic() + 120)
        by_kind, proc_cpu, errors = outcomes(children)
        wait_quiet(server.pid, limit_s=10)
        mem2, _, _ = tree_memory(server.pid)
        parts = by_kind.get("idle", [])
        held = sum(p["connections"] for p in parts)
        silent = sum(p["silent"] for p in parts)
        problems = [x for p in parts for x in p["problems"]]
        samples = [s for p in parts for s in p["sample"]]
        errors += problems
        if held != conns:
            errors.append(f"{held} of {conns} waiting connections reported")
        if silent != conns:
            errors.append(f"{conns - silent} waiting receivers got bytes or were closed")
        for s in samples:
            if not s["receiver"]["ok"]:
                errors.append(f"sampled receiver: {s['receiver']['error']}")
            if not s["sender"]["ok"]:
                errors.append(f"sampled sender: {s['sender']['error']}")
        record.update(
            errors=errors[:20],
            mem_kind=kind if kind == kind1 else f"{kind}/{kind1}",
            server_mem_before=mem0,
            server_mem_waiting=mem1,
            server_mem_after_close=mem2,
            server_pids=[npids, npids1],
            idle_cpu_s=idle["server_cpu_s"],
            idle_window_s=idle["window_s"],
            other_cores=idle["other_cores"],
            steal_cores=idle["steal_cores"],
            sampled_transfers=len(samples),
            client_proc_cpu_s=proc_cpu,
        )
        if not errors:
            record.update(
                ok=True,
                verified=True,
                kib_per_conn=(mem1 - mem0) / conns / 1024,
                server_mib_waiting=mem1 / MIB,
                server_mib_after_close=mem2 / MIB,
                idle_cpu_pct=100 * idle["server_cpu_s"] / idle["window_s"],
            )
    finally:
        record["server_exit"] = server.stop()
    return record


def run_slow_reader(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    target = f"/bench-slow-{uuid.uuid4().hex[:12]}?n=2"
    cap, budget = args.slow_cap, budget_for(2 * args.slow_cap)
    record: dict[str, Any] = {"n": 2, "cap": cap, "settle_s": args.stall_settle, "ok": False}
    with Clients() as cl:
        ri = cl.spawn(
            "receivers", slow_receivers, port=port, target=target, cap=cap, rcvbuf=args.slow_rcvbuf, budget_s=budget
        )
        si = cl.spawn(
            "sender",
            slow_sender,
            port=port,
            target=target,
            cap=cap,
            chunk=args.chunk,
            settle_s=args.stall_settle,
            budget_s=budget,
        )
        cl.expect_all("ready", 30)
        time.sleep(SETTLE_S)
        mem0, kind, _ = tree_memory(pid)
        meter = Meter(pid)
        cl.send(si, "go")
        tag, info = cl.expect(si, ("stalled", "capped"), budget)
        mem1, _, _ = tree_memory(pid)
        cl.send(ri, "measure")
        _, got = cl.expect(ri, ("measured",), 30)
        cl.send(si, "count")
        _, later = cl.expect(si, ("count",), 30)
        cl.send(ri, "resume")
        cl.send(si, "finish")
        _, total = cl.expect(si, ("total",), budget)
        cl.send(ri, "total", total if total is not None else -1)
        children = cl.finish(time.monotonic() + budget + 2 * STALL_S)
    by_kind, proc_cpu, errors = outcomes(children)
    rparts = by_kind.get("receivers", [])
    receivers = rparts[0]["receivers"] if rparts else []
    sender = by_kind["sender"][0]["sender"] if "sender" in by_kind else {}
    record.update(meter.stop(sum(proc_cpu)))
    errors += [
        f"{name} receiver: {r['error']}"
        for name, r in zip(("normal", "stalled"), receivers, strict=False)
        if not r["ok"]
    ]
    if sender and not sender["ok"]:
        errors.append(f"sender: {sender['error']}")
    if total is None:
        errors.append("the sender did not finish its body")
    pushed = info["pushed"]
    stalled_rcvd = got["stalled_parsed"] + got["stalled_queued"]
    normal_rcvd = got["normal_parsed"] + got["normal_queued"]
    record.update(
        errors=errors,
        stalled=tag == "stalled",
        stable=later == pushed,
        pushed_later=later,
        measured=got,
        stalled_rcvbuf=rparts[0]["measured"].get("stalled_rcvbuf") if rparts else None,
        sender_total=total,
        mem_kind=kind,
        client_proc_cpu_s=proc_cpu,
        receivers=receivers,
        sender=sender,
    )
    record.update(
        in_flight_mib=(pushed - stalled_rcvd) / MIB,
        sender_pushed_mib=pushed / MIB,
        stalled_received_mib=stalled_rcvd / MIB,
        normal_received_mib=normal_rcvd / MIB,
        normal_ahead_mib=(normal_rcvd - stalled_rcvd) / MIB,
        server_mem_growth_mib=(mem1 - mem0) / MIB,
        stall_after_s=info["t_stall"],
    )
    if not errors:
        record.update(ok=True, verified=True)
    return record


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class ServerSpec:
    label: str  # "ringpipe", "ringpipe w=2", "piping-server"
    kind: str  # "ringpipe" or "piping-server"
    workers: int | None = None


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    pids_seen: set[int] = field(default_factory=set)
    log_size_at_stop: int | None = None  # where the log stood when SIGTERM was sent

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM the main process, then SIGKILL whatever is left of its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.pids_seen.update(process_tree(self.pid))
                self.log_size_at_stop = self.log_path.stat().st_size
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        if self.exit_code is None:
            self.exit_code = self.proc.poll()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return self.exit_code


def start_ringpipe(workers: int | None, log_path: Path) -> Server:
    cmd = [sys.executable, "-m", "ringpipe", "serve", "--host", HOST, "--port", "0"]
    if workers:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in [k for k in env if k.startswith("RINGPIPE_") or k == "PORT"]:
        del env[key]  # default settings, whatever this shell exports
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
        )
    server = Server("ringpipe", proc, 0, log_path, {"cmd": cmd})
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"ringpipe exited with {proc.returncode}; see {log_path}")
            for line in log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "listening":
                        server.port = int(event["port"])
                    if event.get("event") == "ready":
                        server.info["workers"] = len(event.get("workers", {}))
                        server.info["url"] = event["url"]
                        server.port = int(event["url"].rsplit(":", 1)[1])
                        return server
            time.sleep(0.1)
        raise BenchError(f"ringpipe not ready in 60 s; see {log_path}")
    except BaseException:
        server.stop()
        raise


def start_piping(log_path: Path) -> Server:
    node = shutil.which("node") or "node"
    last = ""
    for _attempt in range(5):  # piping-server does not report the port it got for 0: pick one
        port = free_port()
        cmd = [node, str(PIPING_JS), "--host", HOST, "--http-port", str(port)]
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                cmd, cwd=PIPING_DIR, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
            )
        server = Server("piping-server", proc, port, log_path, {"cmd": cmd})
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if port_open(port) and proc.poll() is None:
                    return server
                time.sleep(0.1)
        except BaseException:
            server.stop()
            raise
        last = f"exit {proc.returncode}" if proc.poll() is not None else "not listening in 30 s"
        server.stop()
    raise BenchError(f"piping-server did not start ({last}); see {log_path}")


def start_server(spec: ServerSpec, logdir: Path, suffix: str = "") -> Server:
    stem = spec.label.replace(" ", "-").replace("=", "") + (f"-{suffix}-{uuid.uuid4().hex[:6]}" if suffix else "")
    log_path = logdir / f"{stem}.log"
    server = start_ringpipe(spec.workers, log_path) if spec.kind == RP else start_piping(log_path)
    server.info["label"] = spec.label
    return server


def ensure_piping() -> None:
    if PIPING_JS.exists():
        return
    npm = shutil.which("npm")
    if not npm:
        raise BenchError("npm not found: it is needed to install piping-server")
    PIPING_DIR.mkdir(parents=True, exist_ok=True)
    print(f"installing piping-server@{PIPING_VERSION} into {PIPING_DIR} ...", flush=True)
    subprocess.run(
        [npm, "install", "--prefix", str(PIPING_DIR), "--no-audit", "--no-fund", f"piping-server@{PIPING_VERSION}"],
        check=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if not PIPING_JS.exists():
        raise BenchError(f"npm install did not produce {PIPING_JS}")


def log_findings(server: Server) -> dict[str, Any]:
    """ringpipe's log: warning/error lines and transfers that did not end "done", apart for
    the benchmark itself and for the shutdown (after SIGTERM)."""
    found: dict[str, Any] = {"during_runs": 0, "during_shutdown": 0, "not_done_transfers": 0, "examples": []}
    try:
        raw = server.log_path.read_bytes()
    except OSError:
        return found
    cut = server.log_size_at_stop if server.log_size_at_stop is not None else len(raw)
    for phase, chunk in (("during_runs", raw[:cut]), ("during_shutdown", raw[cut:])):
        for line in chunk.decode(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"level": "error"} if ("Traceback" in line or "Error" in line) else None
            if not isinstance(event, dict):
                continue
            bad = event.get("level") in ("warning", "error", "critical")
            if event.get("event") == "transfer" and event.get("ending") not in (None, "done"):
                found["not_done_transfers"] += 1
                bad = True
            if bad:
                found[phase] += 1
                if len(found["examples"]) < 6:
                    found["examples"].append(f"[{phase}] {line[:300]}")
    return found


# ---------------------------------------------------------------- machine facts and reporting


def _cmd_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_facts() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, IndexError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1e6:.1f} GB"
    commit = _cmd_out(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_cmd_out(["git", "status", "--porcelain", "--", "ringpipe"]))
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _cmd_out(["node", "--version"]),
        "ringpipe": _cmd_out([sys.executable, "-m", "ringpipe", "--version"]),
        "ringpipe_commit": commit + ("+dirty" if dirty else ""),
        "piping_server": PIPING_VERSION,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "tcp_rmem": Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split(),
        "tcp_wmem": Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split(),
    }


# per scenario: (JSON key, column title, decimals); the first one is the headline (sweep table)
COMMON = [("other_plus_steal", "other+steal", 2)]
BULK = [
    ("mb_s", "MB/s", 0),
    ("server_cpu_s_per_gb", "srv CPU s/GB", 2),
    ("client_cpu_s", "client CPU s", 2),
    ("client_max_proc_pct", "client max proc %", 0),
    ("busy_cores", "busy cores", 2),
]
METRICS: dict[str, list[tuple[str, str, int]]] = {
    "throughput": BULK,
    "fanout": BULK,
    "latency": [
        ("p50_ms", "p50 ms", 3),
        ("p99_ms", "p99 ms", 3),
        ("max_ms", "max ms", 2),
        ("sender_late_p99_ms", "sender late p99 ms", 2),
        ("server_cpu_pct", "srv CPU %", 1),
        ("client_cpu_s", "client CPU s", 2),
    ],
    "pairs": [
        ("pipes_s", "pipes/s", 0),
        ("rendezvous_p50_ms", "rendezvous p50 ms", 1),
        ("rendezvous_p99_ms", "rendezvous p99 ms", 1),
        ("requests_out_ms", "all requests out ms", 0),
        ("server_cpu_ms_per_pipe", "srv CPU ms/pipe", 2),
        ("client_cpu_s", "client CPU s", 2),
    ],
    "idle": [
        ("kib_per_conn", "KiB/conn", 2),
        ("server_mib_waiting", "srv MiB waiting", 1),
        ("server_mib_after_close", "srv MiB after", 1),
        ("idle_cpu_pct", "srv CPU % idle", 2),
    ],
    "slow-reader": [
        ("in_flight_mib", "in flight MiB", 2),
        ("sender_pushed_mib", "sent MiB", 2),
        ("normal_received_mib", "normal rcvd MiB", 2),
        ("stalled_received_mib", "stalled rcvd MiB", 3),
        ("server_mem_growth_mib", "srv mem +MiB", 1),
    ],
}
# no ratio for these: near zero, or not a property of the server
NO_RATIO = {"sender_late_p99_ms", "requests_out_ms", "server_mem_growth_mib", "stalled_received_mib", "idle_cpu_pct"}
NOTES = {
    "throughput": "MB/s: bytes delivered / (sender's first byte -> last receiver's last byte), every byte verified.\n"
    "srv CPU s/GB: utime+stime of the server's whole process tree (/proc) per GB delivered.\n"
    "client CPU s: all client processes (getrusage); client max proc: the busiest client process's\n"
    "CPU / elapsed (100% = one core: that process would be the bottleneck). busy cores: (server +\n"
    "client CPU) / elapsed.",
    "fanout": "fanout: MB/s is the aggregate (n x size / time); the same columns as throughput.",
    "latency": "latency: receive time (recv returned) - send time (stamped just before sendmsg) of every 64-byte\n"
    "record at every receiver, pooled; CLOCK_MONOTONIC is system-wide. sender late: how far behind its\n"
    "2 ms schedule the sender itself ran (high = the client was not scheduled: machine noise, not the\n"
    "server). srv CPU %: over the run.",
    "pairs": "pairs: pipes/s = pipes / (go -> last receiver's last byte), connects included. rendezvous: the\n"
    "receiver's first body byte - the later of the two request heads written (under this load it is\n"
    "mostly queueing behind the other pipes). all requests out: go -> the last request head written.",
    "idle": "idle: fresh server, warmed with one 1 MiB transfer; KiB/conn = (memory with all receivers\n"
    "waiting - before) / connections; {kind}. srv MiB after: after they all left. srv CPU % idle:\n"
    "while holding them.",
    "slow-reader": "slow-reader: in flight = bytes the sender's kernel accepted - bytes that reached the stalled\n"
    "reader's socket (parsed + queued), once nothing moved for the settle time; normal rcvd: the\n"
    "other receiver by then; srv mem +MiB: server memory growth from start to stall ({kind}).",
}


def stats(values: list[float]) -> tuple[float, float, float] | None:
    return (statistics.median(values), min(values), max(values)) if values else None


def fmt_num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_stat(s: tuple[float, float, float] | None, digits: int) -> str:
    if s is None:
        return "-"
    med, lo, hi = s
    if len({fmt_num(med, digits), fmt_num(lo, digits), fmt_num(hi, digits)}) == 1:
        return fmt_num(med, digits)
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def metric_value(run: dict[str, Any], key: str) -> float | None:
    if key == "other_plus_steal":
        return run.get("other_cores", 0.0) + run.get("steal_cores", 0.0)
    v = run.get(key)
    return float(v) if isinstance(v, int | float) else None


def table(rows: list[list[str]], left: int = 2) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("-" * len(out[0]))
    return out


def summarize(cases: list[dict[str, Any]], runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    blocks: list[str] = []
    summary: list[dict[str, Any]] = []
    for scenario in SCENARIOS:
        scases = [c for c in cases if c["scenario"] == scenario]
        if not scases:
            continue
        spec = METRICS[scenario] + COMMON
        rows = [["case", "server", *(title for _k, title, _d in spec), "ok"]]
        kinds = set()
        for case in scases:
            meds: dict[str, dict[str, Any]] = {}
            for i, label in enumerate(case["servers"]):
                mine = [r for r in runs if r["case"] == case["name"] and r["server"] == label]
                good = [r for r in mine if r["ok"]]
                kinds |= {r["mem_kind"] for r in good if r.get("mem_kind")}
                meds[label] = {"runs": len(mine), "ok": len(good)}
                cells = []
                for key, _title, digits in spec:
                    vals = [v for r in good if (v := metric_value(r, key)) is not None]
                    s = stats(vals)
                    meds[label][key] = s
                    cells.append(fmt_stat(s, digits) if key != "other_plus_steal" else fmt_num(s and s[2], 2) + " max")
                rows.append([case["name"] if i == 0 else "", label, *cells, f"{len(good)}/{len(mine)}"])
            ratios: dict[str, dict[str, float | None]] = {}
            if REF in case["servers"]:
                ref = meds[REF]
                for label in case["servers"]:
                    if label == REF:
                        continue
                    rat: dict[str, float | None] = {}
                    for key, _title, _digits in METRICS[scenario]:
                        a, b = meds[label].get(key), ref.get(key)
                        ok = a and b and a[0] > 0 and b[0] > 0 and key not in NO_RATIO
                        rat[key] = a[0] / b[0] if ok else None
                    ratios[label] = rat
                    rows.append(
                        [
                            "",
                            f"ratio {label.replace(RP, 'rp')}/ps",
                            *(
                                fmt_num(rat[k], 2) + "x" if rat[k] is not None else "-"
                                for k, _t, _d in METRICS[scenario]
                            ),
                            "",
                            "",
                        ]
                    )
            summary.append({"case": case["name"], "scenario": scenario, "servers": meds, "ratios": ratios})
        blocks.append(f"== {scenario}")
        blocks += table(rows)
        blocks.append(NOTES[scenario].format(kind=" / ".join(sorted(kinds)) or "PSS or RSS"))
        blocks.append("")
    blocks.append("cells: median (min-max) over the successful rounds; other+steal: the worst run's CPU of other")
    blocks.append("processes + hypervisor steal, in cores (high = disturbed run); ok: successful/total runs.")
    return "\n".join(blocks), summary


def scaling_table(summary: list[dict[str, Any]], sweep: list[int]) -> tuple[str, dict[str, Any]]:
    base_w = 1 if 1 in sweep else min(sweep)
    labels = [f"{RP} w={w}" for w in sweep]
    rows = [["case", "metric", *(f"w={w}" for w in sweep), REF]]
    data: dict[str, Any] = {}
    for entry in summary:
        servers = entry["servers"]
        if not all(label in servers for label in labels):
            continue
        for key, title, digits in METRICS[entry["scenario"]][:2]:
            base = servers[f"{RP} w={base_w}"].get(key)
            cells = []
            per: dict[str, Any] = {}
            for w, label in zip(sweep, labels, strict=True):
                s = servers[label].get(key)
                speed = s[0] / base[0] if s and base and base[0] else None
                per[label] = {"median": s[0] if s else None, "speedup": speed}
                cells.append(fmt_num(s and s[0], digits) + (f" ({speed:.2f}x)" if speed and w != base_w else ""))
            ref = servers.get(REF, {}).get(key)
            per[REF] = {"median": ref[0] if ref else None}
            data.setdefault(entry["case"], {})[key] = per
            rows.append(
                [
                    entry["case"] if key == METRICS[entry["scenario"]][0][0] else "",
                    title,
                    *cells,
                    fmt_num(ref and ref[0], digits),
                ]
            )
    text = "\n".join(
        [f"== scaling with ringpipe --workers (medians; (Nx) = value / value at w={base_w})", *table(rows)]
    )
    return text, data


def run_line(rec: dict[str, Any]) -> str:
    spec = METRICS[rec["scenario"]]
    parts = [f"{title} {fmt_num(metric_value(rec, key), digits)}" for key, title, digits in spec]
    tail = f"other {rec.get('other_cores', 0):.2f} steal {rec.get('steal_cores', 0):.2f}"
    if rec["scenario"] == "slow-reader" and not rec.get("stalled"):
        parts.insert(0, "NO STALL (upload reached --slow-cap)")
    return "  ".join(parts) + "  " + tail


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="rounds; every case runs once per server per round (3)")
    p.add_argument("--scenarios", default=None, help="comma list of " + ",".join(SCENARIOS) + " (all)")
    p.add_argument("--quick", action="store_true", help="a tiny version of every scenario, 1 round (about a minute)")
    p.add_argument("--size", default=None, help="throughput: bytes sent 1 -> 1 (2GiB)")
    p.add_argument(
        "--fanout-size", default=None, help="fanout: bytes per receiver, or auto = 8GiB/n within 32MiB..1GiB (auto)"
    )
    p.add_argument("--fanout-n", default=None, help="fanout: comma list of receiver counts (1,16,64,256)")
    p.add_argument("--latency-n", default=None, help="latency: comma list of receiver counts (1,16)")
    p.add_argument("--latency-records", type=int, default=None, help="latency: records per run (1500)")
    p.add_argument("--latency-interval-ms", type=float, default=2.0, help="latency: ms between records (2)")
    p.add_argument("--pairs", type=int, default=None, help="pairs: concurrent independent pipes (500)")
    p.add_argument("--pairs-size", default=None, help="pairs: bytes per pipe (1MiB)")
    p.add_argument("--idle-conns", type=int, default=None, help="idle: waiting receivers (2000)")
    p.add_argument("--idle-sample", type=int, default=None, help="idle: waiting receivers then served for real (16)")
    p.add_argument("--idle-hold-s", type=float, default=None, help="idle: seconds the CPU is watched while held (3)")
    p.add_argument("--slow-cap", default=None, help="slow-reader: stop pushing here if nothing stalls (2GiB)")
    p.add_argument("--slow-rcvbuf", default="32KiB", help="slow-reader: SO_RCVBUF of the stalled reader (32KiB)")
    p.add_argument("--stall-settle", type=float, default=1.5, help="slow-reader: no progress for this long = stalled")
    p.add_argument("--workers", type=int, default=None, help="ringpipe --workers (default: ringpipe's own)")
    p.add_argument(
        "--workers-sweep", default=None, help="ringpipe worker counts, e.g. 1,2,4: a scaling run (pairs,fanout)"
    )
    p.add_argument("--sweep", action="store_true", help="--workers-sweep 1..nproc")
    p.add_argument("--client-procs", type=int, default=None, help="client processes per run (default: nproc)")
    p.add_argument("--chunk", default="256KiB", help="sender chunk size, 64KiB..256KiB recommended (256KiB)")
    p.add_argument("--out", default=None, help="JSON output path (bench/results/<timestamp>.json)")
    args = p.parse_args(argv)
    q = args.quick
    nproc = os.cpu_count() or 1
    args.rounds = args.rounds or (1 if q else 3)
    args.size = parse_size(args.size or ("8MiB" if q else "2GiB"))
    args.fanout_size = args.fanout_size or ("2MiB" if q else "auto")
    args.fanout_size = None if args.fanout_size == "auto" else parse_size(args.fanout_size)
    args.fanout_n = parse_ints(args.fanout_n or ("2,16" if q else "1,16,64,256"))
    args.latency_n = parse_ints(args.latency_n or "1,16")
    args.latency_records = args.latency_records or (150 if q else 1500)
    args.pairs = args.pairs or (50 if q else 500)
    args.pairs_size = parse_size(args.pairs_size or ("256KiB" if q else "1MiB"))
    args.idle_conns = args.idle_conns or (200 if q else 2000)
    args.idle_sample = args.idle_sample if args.idle_sample is not None else (4 if q else 16)
    args.idle_sample_size = 64 * 1024
    args.idle_hold_s = args.idle_hold_s or (1.0 if q else 3.0)
    args.slow_cap = parse_size(args.slow_cap or ("512MiB" if q else "2GiB"))
    args.slow_rcvbuf = parse_size(args.slow_rcvbuf)
    args.chunk = parse_size(args.chunk)
    args.client_procs = args.client_procs or nproc
    args.pause = 0.2 if q else 1.0
    if args.sweep and not args.workers_sweep:
        args.workers_sweep = ",".join(str(w) for w in range(1, nproc + 1))
    args.workers_sweep = parse_ints(args.workers_sweep) if args.workers_sweep else None
    default = ",".join(SWEEP_DEFAULT if args.workers_sweep else SCENARIOS)
    args.scenarios = [s.strip() for s in (args.scenarios or default).split(",") if s.strip()]
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    if not 1 <= args.chunk <= PERIOD:
        p.error("--chunk must be 1 B .. 1 MiB")
    if args.workers_sweep and args.workers:
        p.error("--workers and --workers-sweep exclude each other")
    if any(n < 1 for n in args.fanout_n + args.latency_n) or (args.workers_sweep and min(args.workers_sweep) < 1):
        p.error("receiver and worker counts must be >= 1")
    return args


def fanout_size(args: argparse.Namespace, n: int) -> int:
    if args.fanout_size:
        return int(args.fanout_size)
    return max(32 * MIB, min(1 << 30, (8 << 30) // n))


def make_cases(args: argparse.Namespace, labels: list[str]) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    sc = args.scenarios

    def add(name: str, scenario: str, **params: Any) -> None:
        cases.append({"name": name, "scenario": scenario, "servers": labels, **params})

    if "throughput" in sc:
        add(f"throughput 1->1 {fmt_size(args.size)}", "throughput", n=1, size=args.size)
    if "fanout" in sc:
        for n in args.fanout_n:
            size = fanout_size(args, n)
            add(f"fanout 1->{n} {fmt_size(size)}/rcv", "fanout", n=n, size=size)
    if "latency" in sc:
        for n in args.latency_n:
            add(f"latency 1->{n} {args.latency_records}x64B", "latency", n=n)
    if "pairs" in sc:
        add(f"pairs {args.pairs}x{fmt_size(args.pairs_size)}", "pairs")
    if "idle" in sc:
        add(f"idle {args.idle_conns} waiting", "idle")
    if "slow-reader" in sc:
        add("slow-reader n=2", "slow-reader")
    return cases


def run_case(
    case: dict[str, Any],
    spec: ServerSpec,
    server: Server,
    logdir: Path,
    args: argparse.Namespace,
    registry: list[Server],
) -> dict[str, Any]:
    sc, port, pid = case["scenario"], server.port, server.pid
    if sc in ("throughput", "fanout"):
        return run_transfer(port, pid, case["n"], case["size"], args)
    if sc == "latency":
        return run_latency(port, pid, case["n"], args)
    if sc == "pairs":
        return run_pairs(port, pid, args)
    if sc == "idle":
        return run_idle(spec, logdir, args, registry)
    if sc == "slow-reader":
        return run_slow_reader(port, pid, args)
    raise BenchError(f"unknown scenario {sc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers_sweep:
        specs = [ServerSpec(f"{RP} w={w}", RP, w) for w in args.workers_sweep] + [ServerSpec(REF, REF)]
    else:
        specs = [ServerSpec(RP, RP, args.workers), ServerSpec(REF, REF)]
    labels = [s.label for s in specs]
    cases = make_cases(args, labels)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 1 << 20)), hard))
    facts = machine_facts()
    facts["rlimit_nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    b0 = machine_cpu()
    time.sleep(1.0)
    b1 = machine_cpu()
    facts["busy_cores_before"] = round((b1[0] - b0[0]) / (b1[2] - b0[2]), 2)
    facts["steal_cores_before"] = round((b1[1] - b0[1]) / (b1[2] - b0[2]), 2)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix=f"ringpipe-bench-{stamp}-"))

    print("ringpipe vs piping-server benchmark")
    print(f"  date      {facts['date']}   loadavg {' '.join(facts['loadavg'])}")
    print(
        f"  machine   nproc={facts['nproc']} (affinity {facts['affinity']})  {facts['cpu_model']}"
        f"  mem {facts['memory']}  RLIMIT_NOFILE {facts['rlimit_nofile']}"
    )
    quiet = "" if facts["busy_cores_before"] < 0.2 else "   WARNING: the machine is busy, results will be noisy"
    print(
        f"  idle      before start: {facts['busy_cores_before']:.2f} cores busy, "
        f"{facts['steal_cores_before']:.2f} stolen (1 s sample){quiet}"
    )
    print(f"  software  python {facts['python']}  node {facts['node']}  kernel {facts['kernel']}")
    print(f"  servers   {facts['ringpipe']} (commit {facts['ringpipe_commit']})  piping-server {PIPING_VERSION}")
    print(
        f"  plan      rounds={args.rounds}  cases={len(cases)}  servers={', '.join(labels)}"
        f"  chunk={fmt_size(args.chunk)}"
        f"  client procs<={args.client_procs}  MB = 10^6 bytes, GB = 10^9 bytes"
    )
    sys.stdout.flush()

    servers: dict[str, Server] = {}
    registry: list[Server] = []  # every server started, the fresh ones of "idle" included
    runs: list[dict[str, Any]] = []

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    status = 0
    try:
        ensure_piping()
        for spec in specs:
            servers[spec.label] = start_server(spec, logdir)
            registry.append(servers[spec.label])
        started = ", ".join(
            f"{s.info['label']} on :{s.port}" + (f" ({s.info['workers']} workers)" if "workers" in s.info else "")
            for s in servers.values()
        )
        print(f"  started   {started}; logs in {logdir}\n", flush=True)
        by_label = {s.label: s for s in specs}
        for rnd in range(1, args.rounds + 1):
            for case in cases:
                order = case["servers"] if rnd % 2 else case["servers"][::-1]  # flip the order every round
                for label in order:
                    server = servers[label]
                    if server.proc.poll() is not None:
                        raise BenchError(f"{label} exited ({server.proc.returncode}); see {server.log_path}")
                    t0 = time.monotonic()
                    try:
                        rec = run_case(case, by_label[label], server, logdir, args, registry)
                    except BenchError as exc:
                        rec = {"ok": False, "errors": [str(exc)]}
                    rec.update(round=rnd, case=case["name"], scenario=case["scenario"], server=label)
                    rec.setdefault("verified", False)
                    runs.append(rec)
                    if rec["ok"]:
                        print(f"  round {rnd} {case['name']:<28} {label:<14} {run_line(rec)}", flush=True)
                    else:
                        status = 1
                        print(
                            f"  round {rnd} {case['name']:<28} {label:<14} FAILED after "
                            f"{time.monotonic() - t0:.1f} s: {'; '.join(rec['errors'])[:600]}",
                            flush=True,
                        )
                    time.sleep(args.pause)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        status = 130
    except Exception as exc:
        print(f"\nerror: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        for server in registry:
            server.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    text, summary = summarize(cases, runs)
    print()
    print(text)
    sweep_data = None
    if args.workers_sweep:
        sweep_text, sweep_data = scaling_table(summary, args.workers_sweep)
        print()
        print(sweep_text)
    findings = {}
    for server in registry:
        if server.name == RP:
            f = log_findings(server)
            findings[server.log_path.name] = f
            if f["during_runs"] or f["during_shutdown"]:
                print(
                    f"\nNOTE {server.log_path.name}: {f['during_runs']} warning/error line(s) during the runs "
                    f"({f['not_done_transfers']} transfer(s) not ending 'done'), {f['during_shutdown']} after "
                    "SIGTERM; e.g.\n    " + "\n    ".join(f["examples"][:3])
                )
    exits = {s.log_path.name: s.exit_code for s in registry}
    if any(code not in (0, None) for name, code in exits.items() if name.startswith(RP)):
        print(f"\nNOTE ringpipe exit codes after SIGTERM: {exits}")
    record = {
        "facts": facts,
        "args": {k: v for k, v in vars(args).items()},
        "servers": {
            s.log_path.name: {
                "port": s.port,
                "pid": s.pid,
                "pids": sorted(s.pids_seen | {s.pid}),
                "exit_code": s.exit_code,
                **s.info,
                "log": str(s.log_path),
            }
            for s in registry
        },
        "server_log_findings": findings,
        "cases": cases,
        "summary": summary,
        "sweep": sweep_data,
        "runs": runs,
        "status": status,
    }
    out_path.write_text(json.dumps(record, indent=1, default=str))
    print(f"\nraw results: {out_path}")
    if status == 0:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"server logs kept in {logdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
