"""Forked client processes and the way they report to the benchmark.

A run forks its clients afresh (``Clients``); each runs ``await fn(ctl, **kwargs)`` on its own
event loop and talks to the benchmark over a pipe: ("ready", ...), phase messages, then
("done", {"result", "cpu_s"}) or ("error", text). Inside a client, every party runs under
``guard`` (its failure is its own result, not the process's) and ``watch`` cancels them all on
a stall or the run's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .common import STALL_S, BenchError
from .measure import cpu_self
from .wire import wait_fd


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


async def run_receivers(ctl: Ctl, recvs: list[Any], budget_s: float) -> None:
    """Connect every receiver (``open``), tell the benchmark ``ready``, run them all under
    ``guard`` and ``watch`` (progress: body bytes) until done, a stall or ``budget_s``; close them."""
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


class Ctl:
    """A client process's end of its control pipe, awaitable without threads."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, tag: str, payload: Any = None) -> None:
        # uvloop's add_reader leaves the pipe non-blocking, and Connection.send must not see
        # EAGAIN halfway through a message
        os.set_blocking(self.conn.fileno(), True)
        self.conn.send((tag, payload))

    async def recv(self) -> Any:
        loop = asyncio.get_running_loop()
        while not self.conn.poll():
            await wait_fd(loop, self.conn.fileno(), write=False)
        return self.conn.recv()

    async def expect(self, want: str) -> Any:
        msg = await self.recv()
        tag, payload = msg if isinstance(msg, tuple) else (msg, None)
        if tag != want:
            raise BenchError(f"expected {want!r} from the bench, got {tag!r}")
        return payload


def _client_entry(
    conn: Any, fn: Callable[..., Coroutine[Any, Any, Any]], kwargs: dict[str, Any], fast_loop: bool
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and kills us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cpu0 = cpu_self()
    try:
        with asyncio.Runner(loop_factory=loop_factory() if fast_loop else None) as runner:
            result = runner.run(fn(Ctl(conn), **kwargs))
        msg: tuple[str, Any] = ("done", {"result": result, "cpu_s": cpu_self() - cpu0})
    except BaseException as exc:
        msg = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
    with contextlib.suppress(Exception):
        os.set_blocking(conn.fileno(), True)
        conn.send(msg)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it comes with uvicorn[standard]), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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

    def spawn(
        self, kind: str, fn: Callable[..., Coroutine[Any, Any, Any]], *, fast_loop: bool = False, **kwargs: Any
    ) -> int:
        """Fork a client running ``fn``; ``fast_loop``: on uvloop when it is installed."""
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_client_entry, args=(child, fn, kwargs, fast_loop), daemon=True)
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
