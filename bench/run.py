#!/usr/bin/env python3
"""ringpipe vs piping-server 1.12.9: throughput and fan-out on loopback, byte-exact.

    python bench/run.py [--rounds 3] [--scenarios throughput,fanout] [--size 1GiB]
                        [--fanout-size 256MiB] [--fanout-n 1,16] [--workers N] [--quick]

What it does (see bench/README.md):

- installs piping-server@1.12.9 with npm into ``bench/.piping-server/`` (once);
- starts ringpipe (``python -m ringpipe serve --host 127.0.0.1 --port 0``, defaults otherwise)
  and piping-server on loopback, each in its own process group;
- runs every case against both servers, interleaved (ringpipe, piping-server, ringpipe, ...);
- prints medians (min-max) and the ratio ringpipe/piping-server; writes the raw results to
  ``bench/results/<timestamp>.json``;
- kills both servers at the end, also on Ctrl+C or an exception.

The load generator is asyncio over raw non-blocking sockets. The sender PUTs a chunked body
whose byte at offset ``i`` is ``PATTERN[i % PERIOD]`` (``PATTERN`` is ``PERIOD`` random bytes
from a fixed seed, ``PERIOD`` a prime just under 1 MiB, so a stale lap of any power-of-two
ring, a dropped or a repeated block shows up as a mismatch). Chunks are memoryview slices of
the pattern sent with ``sendmsg`` (no copies). Every receiver parses the HTTP response
(chunked, Content-Length or until-close) and checks every byte against the pattern at its
offset with ``bytearray.startswith(memoryview)`` (a memcmp; ``memoryview == memoryview`` is
an element-by-element loop, ~100x slower), then the total length and the clean end (final
0-chunk). Receivers run in several processes (``--client-procs``); their CPU time and the
sender's (``getrusage``) are reported next to the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
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
SERVERS = ("ringpipe", "piping-server")


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


def machine_cpu() -> tuple[float, float, float]:
    """Whole-machine (busy, steal, wall) seconds from /proc/stat: how noisy was the box."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK, time.monotonic()


# ---------------------------------------------------------------- async socket plumbing


def _wait_fd(loop: asyncio.AbstractEventLoop, sock: socket.socket, write: bool) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
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
            await _wait_fd(loop, sock, write=True)
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
            await _wait_fd(loop, sock, write=False)


async def connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 10)
    except BaseException:
        sock.close()
        raise
    return sock


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
    t_head: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    recv_calls: int = 0


class Receiver:
    """One GET: read the head, then every body byte is compared against the pattern."""

    def __init__(self, port: int, target: str, expected: int) -> None:
        self.port, self.target, self.expected = port, target, expected
        self.buf = bytearray(RECV_BUF)
        self.view = memoryview(self.buf)
        self.res = RecvResult()
        self.sock: socket.socket | None = None

    async def open(self) -> None:
        self.sock = await connect(self.port)
        req = (
            f"GET {self.target} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            "User-Agent: ringpipe-bench\r\nAccept: */*\r\n\r\n"
        ).encode()
        await sendmsg_all(self.sock, [memoryview(req)])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

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
        if res.nbytes != self.expected:
            raise BenchError(f"short body: {res.nbytes} of {self.expected} bytes")
        res.t_last = time.monotonic()
        res.ok = True
        return res

    async def _plain(self, pos: int, end: int, length: int | None) -> None:
        sock, view, res = self.sock, self.view, self.res
        assert sock is not None
        if end > pos:
            self.verify(pos, end - pos)
        while length is None or res.nbytes < length:
            n = await recv_into(sock, view)
            res.recv_calls += 1
            if n == 0:
                if length is None:
                    return
                raise BenchError(f"connection closed after {res.nbytes} of {length} body bytes")
            self.verify(0, n)

    async def _chunked(self, pos: int, end: int) -> None:
        sock, buf, view, res = self.sock, self.buf, self.view, self.res
        assert sock is not None
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
            n = await recv_into(sock, view[end:])
            res.recv_calls += 1
            if n == 0:
                raise BenchError(f"connection closed before the final 0-chunk (after {res.nbytes} bytes)")
            end += n


# ---------------------------------------------------------------- the sender


@dataclass
class SendResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    log: str = ""
    nbytes: int = 0
    t_start: float | None = None
    t_body_done: float | None = None
    t_response_done: float | None = None


def chunk_header(n: int) -> memoryview:
    return memoryview(f"{n:x}\r\n".encode())


CRLF = memoryview(b"\r\n")


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


async def send_body(sock: socket.socket, port: int, target: str, size: int, chunk: int, res: SendResult) -> None:
    head = (
        f"PUT {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: ringpipe-bench\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    full_header = chunk_header(chunk)
    parts: list[memoryview] = [memoryview(head)]
    res.t_start = time.monotonic()
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        off = sent % PERIOD
        parts += [full_header if n == chunk else chunk_header(n), PATTERN2[off : off + n], CRLF]
        await sendmsg_all(sock, parts)
        parts = []
        sent += n
        res.nbytes = sent
    await sendmsg_all(sock, [memoryview(b"0\r\n\r\n")])
    res.t_body_done = time.monotonic()


# ---------------------------------------------------------------- client processes


async def _watch(
    tasks: list[asyncio.Task[Any]], progress: Any, deadline: float, abort_if_done: asyncio.Task[Any] | None = None
) -> None:
    """Wait for tasks; cancel them all on a stall (no progress for STALL_S), the deadline, or
    when ``abort_if_done`` (the sender's response) ends first."""
    last, last_t = progress(), time.monotonic()
    pending = set(tasks)
    while pending:
        _done, pending = await asyncio.wait(
            pending | ({abort_if_done} if abort_if_done else set()), timeout=1.0, return_when=asyncio.FIRST_COMPLETED
        )
        pending.discard(abort_if_done)
        now, cur = time.monotonic(), progress()
        if cur != last:
            last, last_t = cur, now
        why = None
        if now > deadline:
            why = "deadline"
        elif now - last_t > STALL_S:
            why = f"stalled {STALL_S:.0f}s"
        elif abort_if_done is not None and abort_if_done.done() and pending:
            exc = abort_if_done.exception()
            why = "response ended before the body was sent" + (f" ({exc!r})" if exc else "")
        if why and pending:
            for t in pending:
                t.cancel()
            await asyncio.wait(pending)
            raise BenchError(why)


def receiver_process(conn: Any, port: int, target: str, count: int, size: int, budget_s: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and kills us
    cpu0 = cpu_self()
    results: list[dict[str, Any]] = []

    async def main() -> None:
        recvs = [Receiver(port, target, size) for _ in range(count)]
        try:
            for r in recvs:
                await r.open()
            conn.send(("ready", None))
            deadline = time.monotonic() + budget_s

            async def one(r: Receiver) -> None:
                try:
                    await r.run()
                except asyncio.CancelledError:
                    r.res.error = r.res.error or "cancelled (stall or deadline)"
                    raise
                except Exception as exc:
                    r.res.error = f"{type(exc).__name__}: {exc}"

            tasks = [asyncio.create_task(one(r)) for r in recvs]
            try:
                await _watch(tasks, lambda: sum(r.res.nbytes for r in recvs), deadline)
            except BenchError as exc:
                for r in recvs:
                    if not r.res.ok and not r.res.error:
                        r.res.error = str(exc)
        finally:
            for r in recvs:
                r.close()
                results.append(r.res.__dict__)

    try:
        asyncio.run(main())
        conn.send(("done", {"receivers": results, "cpu_s": cpu_self() - cpu0}))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def sender_process(conn: Any, port: int, target: str, size: int, chunk: int, budget_s: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    res = SendResult()
    cpu_at_go = 0.0

    async def main() -> None:
        nonlocal cpu_at_go
        sock = await connect(port)
        try:
            loop = asyncio.get_running_loop()
            conn.send(("ready", None))
            go = await loop.run_in_executor(None, conn.recv)
            if go != "go":
                raise BenchError("not told to go")
            cpu_at_go = cpu_self()
            deadline = time.monotonic() + budget_s
            reader = asyncio.create_task(read_small_response(sock, res))
            writer = asyncio.create_task(send_body(sock, port, target, size, chunk, res))
            await _watch([writer], lambda: res.nbytes, deadline, abort_if_done=reader)
            writer.result()
            await _watch([reader], lambda: len(res.log), deadline)
            reader.result()
            res.t_response_done = time.monotonic()
            if res.status != 200:
                raise BenchError(f"sender got HTTP {res.status}: {res.log[:200]!r}")
            if "[ERROR]" in res.log:
                raise BenchError(f"sender log reports an error: {res.log!r}")
            res.ok = True
        finally:
            sock.close()

    try:
        asyncio.run(main())
    except BaseException as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):
        conn.send(("done", {"sender": res.__dict__, "cpu_s": cpu_self() - cpu_at_go if cpu_at_go else 0.0}))


# ---------------------------------------------------------------- one transfer


def run_transfer(port: int, n: int, size: int, procs: int, chunk: int, server_pid: int) -> dict[str, Any]:
    """1 sender -> n receivers of ``size`` bytes; receivers connect first. Returns a raw record."""
    ctx = multiprocessing.get_context("fork")
    target = f"/bench-{uuid.uuid4().hex[:12]}" + (f"?n={n}" if n > 1 else "")
    budget = 120.0 + n * size / 20e6  # generous: a run at 20 MB/s aggregate still finishes
    nprocs = max(1, min(n, procs))
    split = [n // nprocs + (1 if i < n % nprocs else 0) for i in range(nprocs)]
    children: list[tuple[Any, Any, str]] = []
    record: dict[str, Any] = {"n": n, "size": size, "target": target, "receiver_procs": nprocs, "ok": False}
    finished = False
    try:
        for count in split:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=receiver_process, args=(child, port, target, count, size, budget), daemon=True)
            p.start()
            children.append((p, parent, "receiver"))
        sp, schild = ctx.Pipe()
        sproc = ctx.Process(target=sender_process, args=(schild, port, target, size, chunk, budget), daemon=True)
        sproc.start()
        children.append((sproc, sp, "sender"))

        for _p, pipe, _kind in children:  # every receiver has written its GET; the sender is connected
            if not pipe.poll(30):
                raise BenchError("a client process did not get ready in 30 s")
            kind, payload = pipe.recv()
            if kind != "ready":
                raise BenchError(f"client process failed before the start: {payload}")
        time.sleep(SETTLE_S)
        srv0, npids = tree_cpu_seconds(server_pid)
        box0 = machine_cpu()
        sp.send("go")
        deadline = time.monotonic() + budget + 2 * STALL_S
        outcomes: dict[int, Any] = {}
        while len(outcomes) < len(children):
            for idx, (_p, pipe, _kind) in enumerate(children):
                if idx not in outcomes and pipe.poll(0.05):
                    outcomes[idx] = pipe.recv()
            if time.monotonic() > deadline:
                raise BenchError("client processes did not report in time")
            if len(outcomes) < len(children) and any(
                not p.is_alive() and i not in outcomes and not pipe.poll() for i, (p, pipe, _k) in enumerate(children)
            ):
                raise BenchError("a client process died without reporting")
        srv1, _ = tree_cpu_seconds(server_pid)
        box1 = machine_cpu()
        finished = True
    finally:
        for p, pipe, _kind in children:
            p.join(5 if finished else 0.2)
            if p.is_alive():
                p.kill()
                p.join(5)
            pipe.close()

    receivers: list[dict[str, Any]] = []
    proc_cpu: list[float] = []
    sender: dict[str, Any] = {}
    errors: list[str] = []
    for idx, (_p, _pipe, kind) in enumerate(children):
        tag, payload = outcomes[idx]
        if tag != "done":
            errors.append(f"{kind} process: {payload}")
            continue
        proc_cpu.append(payload["cpu_s"])
        if kind == "sender":
            sender = payload["sender"]
        else:
            receivers += payload["receivers"]
    errors += [f"receiver: {r['error']}" for r in receivers if not r["ok"]]
    if sender and not sender["ok"]:
        errors.append(f"sender: {sender['error']}")
    if len(receivers) != n:
        errors.append(f"{len(receivers)} receiver results for n={n}")
    record.update(sender=sender, receivers=receivers, errors=errors, client_proc_cpu_s=proc_cpu)
    record["server_cpu_s"] = srv1 - srv0
    # the whole box over the same window (sender start .. all clients reported): CPU used by
    # anything that is neither the server nor the client, and time stolen by the hypervisor
    window = box1[2] - box0[2]
    record["window_s"] = window
    record["other_cores"] = max(0.0, (box1[0] - box0[0]) - (srv1 - srv0) - sum(proc_cpu)) / window
    record["steal_cores"] = (box1[1] - box0[1]) / window
    record["server_pids"] = npids
    if not errors and sender.get("t_start"):
        t_end = max(r["t_last"] for r in receivers)
        elapsed = t_end - sender["t_start"]
        record.update(
            ok=True,
            elapsed_s=elapsed,
            mb_s=n * size / elapsed / 1e6,
            server_cpu_s_per_gb=(srv1 - srv0) / (n * size / 1e9),
            client_cpu_s=sum(proc_cpu),
            client_max_proc_util=max(proc_cpu) / elapsed,
            busy_cores=(srv1 - srv0 + sum(proc_cpu)) / elapsed,
            framing=sorted({r["framing"] for r in receivers}),
            sender_log=sender.get("log", ""),
            # both servers say so when every receiver was already waiting as the sender arrived
            receivers_were_waiting=f"{n} receiver(s) has/have been connected" in sender.get("log", ""),
        )
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
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        """SIGTERM the main process, then SIGKILL whatever is left of its process group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def start_ringpipe(workers: int | None, logdir: Path) -> Server:
    log_path = logdir / "ringpipe.log"
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


def start_piping(logdir: Path) -> Server:
    log_path = logdir / "piping-server.log"
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
    }


def stats(values: list[float]) -> tuple[float, float, float] | None:
    return (statistics.median(values), min(values), max(values)) if values else None


def fmt_stat(s: tuple[float, float, float] | None, digits: int = 0) -> str:
    if s is None:
        return "-"
    med, lo, hi = s
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def summarize(cases: list[dict[str, Any]], runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    header = (
        f"{'case':<26} {'server':<14} {'MB/s median (min-max)':>26} {'srv CPU s/GB (min-max)':>24} "
        f"{'client CPU s':>13} {'client max proc':>16} {'busy cores':>11} {'other+steal':>12} {'ok':>5}"
    )
    lines = [header, "-" * len(header)]
    summary = []
    for case in cases:
        meds: dict[str, dict[str, Any]] = {}
        for server in SERVERS:
            mine = [r for r in runs if r["case"] == case["name"] and r["server"] == server]
            good = [r for r in mine if r["ok"]]
            s_mb = stats([r["mb_s"] for r in good])
            s_cpu = stats([r["server_cpu_s_per_gb"] for r in good])
            s_cli = stats([r["client_cpu_s"] for r in good])
            s_util = stats([100 * r["client_max_proc_util"] for r in good])
            s_busy = stats([r["busy_cores"] for r in good])
            s_noise = stats([r["other_cores"] + r["steal_cores"] for r in good])
            meds[server] = {
                "mb_s": s_mb,
                "cpu_per_gb": s_cpu,
                "client_cpu_s": s_cli,
                "client_max_util": s_util,
                "busy_cores": s_busy,
                "other_plus_steal_cores": s_noise,
            }
            label = case["name"] if server == SERVERS[0] else ""
            lines.append(
                f"{label:<26} {server:<14} {fmt_stat(s_mb):>26} {fmt_stat(s_cpu, 2):>24} "
                f"{(f'{s_cli[0]:.2f}' if s_cli else '-'):>13} "
                f"{(f'{s_util[0]:.0f}%' if s_util else '-'):>16} {(f'{s_busy[0]:.2f}' if s_busy else '-'):>11} "
                f"{(f'{s_noise[2]:.2f} max' if s_noise else '-'):>12} "
                f"{f'{len(good)}/{len(mine)}':>5}"
            )
        rp, ps = meds["ringpipe"], meds["piping-server"]
        r_mb = rp["mb_s"][0] / ps["mb_s"][0] if rp["mb_s"] and ps["mb_s"] else None
        r_cpu = rp["cpu_per_gb"][0] / ps["cpu_per_gb"][0] if rp["cpu_per_gb"] and ps["cpu_per_gb"] else None
        lines.append(
            f"{'':<26} {'ratio rp/ps':<14} {(f'{r_mb:.2f}x' if r_mb else '-'):>26} "
            f"{(f'{r_cpu:.2f}x' if r_cpu else '-'):>24}"
        )
        summary.append({"case": case["name"], **meds, "ratio_mb_s": r_mb, "ratio_cpu_per_gb": r_cpu})
    return "\n".join(lines), summary


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="rounds; every case runs once per server per round (3)")
    p.add_argument("--scenarios", default="throughput,fanout", help="comma list of throughput,fanout")
    p.add_argument("--size", default=None, help="throughput: bytes sent 1 -> 1 (1GiB)")
    p.add_argument("--fanout-size", default=None, help="fanout: bytes per receiver (256MiB)")
    p.add_argument("--fanout-n", default=None, help="fanout: comma list of receiver counts (1,16)")
    p.add_argument("--workers", type=int, default=None, help="ringpipe --workers (default: ringpipe's own)")
    p.add_argument("--client-procs", type=int, default=None, help="receiver processes per run (default: nproc)")
    p.add_argument("--chunk", default="256KiB", help="sender chunk size, 64KiB..256KiB recommended (256KiB)")
    p.add_argument("--quick", action="store_true", help="smoke test: 8MiB, n=2, 1 round (< 30 s)")
    p.add_argument("--out", default=None, help="JSON output path (bench/results/<timestamp>.json)")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.size = parse_size(args.size or ("8MiB" if q else "1GiB"))
    args.fanout_size = parse_size(args.fanout_size or ("8MiB" if q else "256MiB"))
    args.fanout_n = [int(x) for x in (args.fanout_n or ("2" if q else "1,16")).split(",") if x.strip()]
    args.chunk = parse_size(args.chunk)
    args.client_procs = args.client_procs or os.cpu_count() or 1
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in args.scenarios:
        if s not in ("throughput", "fanout"):
            p.error(f"unknown scenario {s!r}")
    if not 1 <= args.chunk <= PERIOD:
        p.error("--chunk must be 1 B .. 1 MiB")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases: list[dict[str, Any]] = []
    if "throughput" in args.scenarios:
        cases.append(
            {"name": f"throughput 1->1 {fmt_size(args.size)}", "scenario": "throughput", "n": 1, "size": args.size}
        )
    if "fanout" in args.scenarios:
        for n in args.fanout_n:
            name = f"fanout 1->{n} {fmt_size(args.fanout_size)}/rcv"
            cases.append({"name": name, "scenario": "fanout", "n": n, "size": args.fanout_size})

    facts = machine_facts()
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
        f"  mem {facts['memory']}"
    )
    quiet = "" if facts["busy_cores_before"] < 0.2 else "   WARNING: the machine is busy, results will be noisy"
    print(
        f"  idle      before start: {facts['busy_cores_before']:.2f} cores busy, "
        f"{facts['steal_cores_before']:.2f} stolen (1 s sample){quiet}"
    )
    print(f"  software  python {facts['python']}  node {facts['node']}  kernel {facts['kernel']}")
    print(f"  servers   {facts['ringpipe']} (commit {facts['ringpipe_commit']})  piping-server {PIPING_VERSION}")
    print(
        f"  plan      rounds={args.rounds}  cases={len(cases)}  chunk={fmt_size(args.chunk)}  "
        f"receiver procs<={args.client_procs}  MB = 10^6 bytes, GB = 10^9 bytes"
    )
    sys.stdout.flush()

    servers: dict[str, Server] = {}
    runs: list[dict[str, Any]] = []

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    status = 0
    try:
        ensure_piping()
        servers["ringpipe"] = start_ringpipe(args.workers, logdir)
        servers["piping-server"] = start_piping(logdir)
        print(
            f"  started   ringpipe on :{servers['ringpipe'].port} ({servers['ringpipe'].info.get('workers')} workers), "
            f"piping-server on :{servers['piping-server'].port}; logs in {logdir}\n",
            flush=True,
        )
        for rnd in range(1, args.rounds + 1):
            for case in cases:
                for name in SERVERS:
                    server = servers[name]
                    if server.proc.poll() is not None:
                        raise BenchError(f"{name} exited ({server.proc.returncode}); see {server.log_path}")
                    t0 = time.monotonic()
                    try:
                        rec = run_transfer(
                            server.port, case["n"], case["size"], args.client_procs, args.chunk, server.proc.pid
                        )
                    except BenchError as exc:
                        rec = {"ok": False, "errors": [str(exc)]}
                    rec.update(round=rnd, case=case["name"], scenario=case["scenario"], server=name)
                    runs.append(rec)
                    if rec["ok"]:
                        print(
                            f"  round {rnd} {case['name']:<26} {name:<14} {rec['mb_s']:9.0f} MB/s  "
                            f"{rec['elapsed_s']:6.2f} s  srv {rec['server_cpu_s']:6.2f} CPU-s "
                            f"({rec['server_cpu_s_per_gb']:.2f}/GB)  client {rec['client_cpu_s']:5.2f} CPU-s "
                            f"(max proc {100 * rec['client_max_proc_util']:.0f}%)  "
                            f"server+client {rec['busy_cores']:.2f} cores  "
                            f"other {rec['other_cores']:.2f}  steal {rec['steal_cores']:.2f}",
                            flush=True,
                        )
                    else:
                        status = 1
                        print(
                            f"  round {rnd} {case['name']:<26} {name:<14} FAILED after "
                            f"{time.monotonic() - t0:.1f} s: {'; '.join(rec['errors'])[:500]}",
                            flush=True,
                        )
                    time.sleep(1.0)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        status = 130
    except Exception as exc:
        print(f"\nerror: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        for server in servers.values():
            server.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    table, summary = summarize(cases, runs)
    print()
    print(table)
    print()
    print(
        "MB/s: bytes delivered (n x size) / (first byte sent -> last byte received), every byte verified.\n"
        "srv CPU s/GB: utime+stime of the server process and all its children (/proc) per GB delivered.\n"
        "client CPU s: sender + receiver processes (getrusage); client max proc: the busiest client\n"
        "process's CPU time / elapsed (100% = one core: that process would be the bottleneck).\n"
        f"busy cores: (server + client CPU s) / elapsed, out of {os.cpu_count()} on this machine (client and\n"
        "server share them). other+steal: the worst run's CPU used by other processes on the box plus\n"
        "time stolen by the hypervisor, in cores (/proc/stat); high values mean a disturbed run.\n"
        "Every other column is the median over the successful rounds."
    )
    record = {
        "facts": facts,
        "args": {k: v for k, v in vars(args).items()},
        "servers": {k: {"port": v.port, **v.info, "log": str(v.log_path)} for k, v in servers.items()},
        "cases": cases,
        "summary": summary,
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
