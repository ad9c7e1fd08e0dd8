"""The supervisor: bind once, fork N workers, keep them alive, drain them on SIGTERM.

Its loop is a list of verbs (gunicorn's arbiter): wait for a signal or a readiness note →
``handle_<signal>`` → reap → respawn. Signal handlers only enqueue (``signal.set_wakeup_fd``
writes the signal number to a pipe; the loop reads it). No logging, no locks in handlers.

Rules it keeps:

- The listening socket is bound once, here, and inherited by every worker through
  ``fork()``. The supervisor starts no thread and no event loop before it forks.
- ``PROMETHEUS_MULTIPROC_DIR`` is prepared and exported before anything imports
  ``prometheus_client``: the worker modules are imported only after that.
- A worker that dies, for any reason, is replaced in its slot at once (SIGCHLD wakes the
  loop); its metrics are marked dead and the rings it owned are swept from ``/dev/shm``.
  The worker count never changes: it is an input to ``owner_of``.
- A worker that fails before it ever became ready (exit 3) halts the supervisor instead of
  being forked again in a loop.
- SIGHUP is forwarded to every worker, which re-reads the tokens file. A worker ignores
  SIGHUP from its fork until its own handler is installed (SIGHUP's default would kill it).
- Listening on an address that is not loopback with no access control configured logs one
  warning: the relay is then open to anyone who can guess a path (SPEC Part 4).
- At start the open-files soft limit is raised to the hard limit (``raise_open_files_limit``),
  so that the workers, which inherit it, can each hold their share of ``--max-connections``
  (``Settings.connections_per_worker``); the limit is logged, with a warning when the hard
  limit is below what that share needs.
- The fleet file (``<runtime dir>/fleet.json``: slot → pid, which slots reported ready,
  whether it is stopping) is rewritten atomically on every change. ``/readyz`` and the
  per-worker process metrics read it; it is the only state the supervisor shares.
- SIGTERM/SIGINT: stop accepting, SIGTERM the workers, wait ``graceful_timeout`` (+5 s for
  their own clean-up), SIGKILL stragglers, sweep every ring of this supervisor, remove the
  runtime directory, exit 0. A second SIGINT cuts the wait short.
- Nothing ticks while it serves: it sleeps until a signal or a readiness note comes. Each
  worker learns that the supervisor is gone (``kill -9`` included) from its lifeline: the read
  end of a pipe whose only write end the supervisor holds turns readable (EOF) when it exits.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import resource
import select
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from ringpipe.core.access import configured
from ringpipe.core.config import Settings
from ringpipe.core.errors import SupervisorHalt
from ringpipe.http.tls import TlsError, server_context
from ringpipe.ops.fleet import BOOT_ERROR, FLEET_FILE, Fleet, write_fleet
from ringpipe.ops.logs import setup_logging
from ringpipe.shm import segment

__all__ = ["Supervisor"]

log = logging.getLogger("ringpipe.supervisor")

HANDLED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGQUIT)
CLEANUP_MARGIN_S: Final = 5.0
#: Descriptors a worker holds besides its client connections and rings (listener, control,
#: wake-up and hand-off sockets, epoll, metrics files, logs).
FIXED_FDS: Final = 256
#: The kernel's ceiling on one process's descriptors when the hard limit is "unlimited".
NR_OPEN: Final = Path("/proc/sys/fs/nr_open")


def open_files_needed(settings: Settings) -> int:
    """Descriptors one worker needs at its limits: a socket per connection it may hold (its
    share of ``--max-connections``, hand-offs included) and a mapped ring per pipe it may
    own (its share of ``--max-pipes``: Python's ``mmap`` keeps a descriptor per mapping).

    A ring owned elsewhere that a party here maps takes one more; the hand-off makes that
    the exception (fan-outs above ``--colocate-max-n``, hand-offs that could not happen).
    """
    return FIXED_FDS + settings.connections_per_worker + settings.pipes_per_worker


def raise_open_files_limit(settings: Settings) -> int:
    """Raise ``RLIMIT_NOFILE``'s soft limit to the hard limit; return the soft limit now in force.

    Distributions start processes at 1024 (the soft limit) while allowing far more (the hard
    limit, often 524288 or more): at 1024 a worker runs out of descriptors at a few hundred
    token streams. Workers inherit the limit through ``fork``, and each needs
    ``open_files_needed(settings)``. Logs the limit, and a warning
    when even the hard limit is below that.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(NR_OPEN.read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, target, exc)
    needed = open_files_needed(settings)
    extra = {"event": "open_files_limit", "limit": soft, "hard_limit": hard, "needed": needed}
    if soft < needed:
        log.warning(
            "open files limit %d is below the %d that --max-connections %d and --max-pipes %d need per "
            "worker (%d connections and %d pipes each over %d workers): connections beyond it fail "
            "(raise the hard limit: ulimit -Hn, LimitNOFILE=, docker --ulimit nofile=)",
            soft,
            needed,
            settings.max_connections,
            settings.max_pipes,
            settings.connections_per_worker,
            settings.pipes_per_worker,
            settings.workers,
            extra=extra,
        )
    else:
        log.info("open files limit %d", soft, extra=extra)
    return soft


class Supervisor:
    """Owns the listening socket and the fleet of worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.workers: dict[int, int] = {}  # slot -> pid
        self.ready: set[int] = set()
        #: Slots whose worker died and was respawned, until the new one reports ready.
        self.replaced: set[int] = set()
        self.stopping = False
        self.force = False
        self.listener: socket.socket | None = None
        #: The HTTPS context, loaded once here (a bad certificate stops the start with one
        #: clear line) and inherited by every worker through ``fork()``.
        self.tls: ssl.SSLContext | None = None
        self.runtime_dir = Path()
        self._wakeup_r = self._wakeup_w = self._ready_r = self._ready_w = -1
        #: A pipe nobody writes to: the supervisor holds its write end, every worker its read
        #: end, which turns readable (EOF) when the supervisor is gone, however it went.
        self._lifeline_r = self._lifeline_w = -1
        self._signals: list[int] = []

    # -- setup --

    def bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, socktype, proto, _name, address = infos[0]
        sock = socket.socket(family, socktype, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    def prepare_runtime(self) -> None:
        self.runtime_dir = Path(tempfile.mkdtemp(prefix=f"ringpipe-{self.pid}-"))
        metrics_dir = self.runtime_dir / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        removed = segment.sweep_orphans()
        if removed:
            log.warning("swept %d ring segment(s) left by dead supervisors", len(removed))

    # -- main --

    def run(self) -> int:
        setup_logging(self.settings.log_level, "supervisor", self.settings.log_format)
        if self.settings.ssl_certfile is not None and self.settings.ssl_keyfile is not None:
            try:
                self.tls = server_context(self.settings.ssl_certfile, self.settings.ssl_keyfile)
            except TlsError as exc:
                log.error("%s", exc)
                return 1
        try:
            self.listener = self.bind()
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", self.settings.host, self.settings.port, exc.strerror)
            return 1
        raise_open_files_limit(self.settings)
        self.prepare_runtime()
        self.publish_fleet()
        from ringpipe.ops import metrics  # noqa: F401 - after PROMETHEUS_MULTIPROC_DIR is set
        from ringpipe.process import worker  # noqa: F401 - preload the worker stack before forking

        self._install_signals()
        port = self.listener.getsockname()[1]
        host = self.settings.host
        scheme = "http" if self.tls is None else "https"
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
        log.info(
            "listening",
            extra={"event": "listening", "url": url, "port": port, "workers": self.settings.workers},
        )
        self.warn_if_open(self.listener.getsockname()[0])
        try:
            for slot in range(self.settings.workers):
                self.spawn(slot)
            self.loop(url)
        except SupervisorHalt as halt:
            log.error("halting: %s", halt.reason)
            self.stop_workers(timeout=0)
            return halt.exit_status
        finally:
            self.cleanup()
        return 0

    def warn_if_open(self, address: str) -> None:
        """One warning line when a non-loopback listener has no tokens and no signing key."""
        try:
            loopback = ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not configured(self.settings):
            log.warning(
                "listening on %s with no access control: the relay is open to anyone who can reach it "
                "and guess a path (use --token/--tokens-file or --signing-key; see SECURITY.md)",
                address,
                extra={"event": "open_relay", "host": self.settings.host},
            )

    def loop(self, url: str) -> None:
        announced = False
        deadline: float | None = None
        while True:
            if self.stopping:
                if not self.workers:
                    return
                if deadline is None:
                    deadline = time.monotonic() + self.settings.graceful_timeout + CLEANUP_MARGIN_S
                if self.force or time.monotonic() >= deadline:
                    log.warning("killing %d worker(s) still running after the grace period", len(self.workers))
                    self.stop_workers(timeout=0)
                    return
            # Nothing to poll while serving: signals (SIGCHLD included) and readiness notes
            # wake the loop, so an idle supervisor sleeps until one comes.
            self.wait_for_events(timeout=None if deadline is None else 1.0)
            self.handle_signals()
            self.reap()
            if not announced and len(self.ready) == self.settings.workers:
                announced = True
                log.info("ready", extra={"event": "ready", "url": url, "workers": self.workers})

    def wait_for_events(self, timeout: float | None) -> None:
        try:
            readable, _, _ = select.select([self._wakeup_r, self._ready_r], [], [], timeout)
        except InterruptedError:
            return
        if self._wakeup_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._signals += list(os.read(self._wakeup_r, 512))
        if self._ready_r in readable:
            with contextlib.suppress(BlockingIOError):
                for line in os.read(self._ready_r, 4096).decode().split():
                    slot = int(line)
                    self.ready.add(slot)
                    self.publish_fleet()
                    if slot in self.replaced:
                        self.replaced.discard(slot)
                        log.info(
                            "replacement worker ready",
                            extra={"event": "worker_ready", "slot": slot, "worker_pid": self.workers.get(slot)},
                        )

    # -- signals: handlers only enqueue (via the wakeup fd) --

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ready_r, self._ready_w = os.pipe2(os.O_NONBLOCK)
        self._lifeline_r, self._lifeline_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in (*HANDLED, signal.SIGHUP):
            signal.signal(sig, lambda s, f: None)

    def handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            handler = getattr(self, f"handle_{signal.Signals(sig).name[3:].lower()}", None)
            if handler is not None:
                handler()

    def handle_term(self) -> None:
        if not self.stopping:
            log.info("stopping: draining workers", extra={"grace_s": self.settings.graceful_timeout})
            self.stopping = True
            self.publish_fleet()
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            self.signal_workers(signal.SIGTERM)

    def handle_int(self) -> None:
        if self.stopping:
            self.force = True
        self.handle_term()

    def handle_quit(self) -> None:
        self.force = True
        self.handle_term()

    def handle_hup(self) -> None:
        """Workers re-read the tokens file (each logs what it loaded, or why it kept the old)."""
        if not self.stopping:
            log.info("SIGHUP: reloading tokens in every worker", extra={"event": "reload"})
            self.signal_workers(signal.SIGHUP)

    def handle_chld(self) -> None:
        pass  # the wake-up itself is the point: reap() runs after every wake-up

    # -- the fleet --

    def spawn(self, slot: int) -> None:
        assert self.listener is not None
        # Everything the supervisor holds (the preloaded worker stack: tens of MiB of objects)
        # leaves the collector's view before the fork: a worker's full collection would
        # otherwise write to the GC header of every inherited object and copy every page of
        # them (copy-on-write), once per worker. Measured (bench/run.py idle, 2 workers):
        # that copy showed up as ~3 KiB per waiting receiver.
        gc.freeze()
        pid = os.fork()
        if pid:
            self.workers[slot] = pid
            self.publish_fleet()
            return
        # child: undo the supervisor's signal plumbing, then become a worker
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED:
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's reload handler is in
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            os.close(self._ready_r)
            os.close(self._lifeline_w)  # else a worker would keep its own lifeline alive
            from ringpipe.process.worker import run_worker

            code = run_worker(
                self.settings,
                index=slot,
                listener=self.listener,
                runtime_dir=self.runtime_dir,
                supervisor_pid=self.pid,
                ready_fd=self._ready_w,
                lifeline_fd=self._lifeline_r,
                tls=self.tls,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                logging.getLogger("ringpipe.worker").exception("worker %d failed to boot", slot)
            code = BOOT_ERROR
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def reap(self) -> None:
        from ringpipe.ops import metrics

        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s, p in self.workers.items() if p == pid), None)
            if slot is None:
                continue
            del self.workers[slot]
            was_ready = slot in self.ready
            self.ready.discard(slot)
            self.publish_fleet()
            metrics.mark_process_dead(pid)
            swept = segment.sweep(segment.segment_prefix(self.pid, pid))
            how = self._describe(status)
            if self.stopping:
                log.info("worker exited", extra={"slot": slot, "worker_pid": pid, "how": how})
                continue
            log.error(
                "worker died; replacing it",
                extra={"event": "worker_died", "slot": slot, "worker_pid": pid, "how": how, "rings_swept": len(swept)},
            )
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_ERROR and not was_ready:
                raise SupervisorHalt(f"worker {slot} failed to boot (exit {BOOT_ERROR})", exit_status=1)
            metrics.WORKER_RESTARTS.inc()
            self.replaced.add(slot)
            self.spawn(slot)

    def publish_fleet(self) -> None:
        """Rewrite the fleet file atomically (write a temporary file, then rename it)."""
        if not self.runtime_dir.name:
            return
        fleet = Fleet(
            supervisor_pid=self.pid,
            expected=self.settings.workers,
            workers=dict(self.workers),
            ready=frozenset(self.ready),
            stopping=self.stopping,
        )
        try:
            write_fleet(self.runtime_dir, fleet)
        except OSError as exc:  # the runtime directory is ours; this is a broken machine
            log.error("cannot write %s: %s", self.runtime_dir / FLEET_FILE, exc.strerror)

    @staticmethod
    def _describe(status: int) -> str:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name
            return f"killed by {name}" + (" (out of memory?)" if sig == signal.SIGKILL else "")
        return f"exit {os.WEXITSTATUS(status)}"

    def signal_workers(self, sig: int) -> None:
        for pid in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop_workers(self, timeout: float) -> None:
        """SIGKILL every worker (after ``timeout`` seconds of grace) and reap them all."""
        end = time.monotonic() + timeout
        while self.workers and time.monotonic() < end:
            self.wait_for_events(0.1)
            self.reap()
        self.signal_workers(signal.SIGKILL)
        for pid in list(self.workers.values()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.workers.clear()

    def cleanup(self) -> None:
        swept = segment.sweep(segment.segment_prefix(self.pid))
        if swept:
            log.info("swept %d ring segment(s) at exit", len(swept))
        if self.listener is not None:
            self.listener.close()
        for fd in (self._wakeup_r, self._wakeup_w, self._ready_r, self._ready_w, self._lifeline_r, self._lifeline_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("stopped")
