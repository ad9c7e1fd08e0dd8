"""The worker-to-worker control mesh: Unix sockets, one outgoing link per peer, ordered frames.

Every worker listens on ``<runtime dir>/ctl-<index>.sock``. To send to peer *w*, a worker
uses its own outgoing link to *w* (opened on first use, re-opened after *w* restarts), so
frames from one worker to another arrive in the order they were sent. ``send`` never
blocks: it appends to the link's outbox, and the link's writer task flushes the whole outbox
in one write (frames sent in one event-loop turn leave in one syscall). A frame to oneself
is dispatched locally on the next loop turn, so callers never re-enter their own handlers.

Both ends say ``Hello`` first, so each side learns the other's pid. A link that reaches EOF
or fails means that peer process is gone (Unix sockets on one host fail no other way):
``on_peer_gone(worker, pid)`` is called once per (worker, pid), and frames still queued for
it are dropped; their parties are failed by that callback, never left waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc

from ringpipe.core import control_frames
from ringpipe.core.control_frames import Frame, Hello
from ringpipe.core.errors import ControlProtocolError

__all__ = ["Mesh", "socket_path"]

log = logging.getLogger(__name__)

#: How long a link keeps trying to reach a peer (a worker restarts within about a second).
CONNECT_PATIENCE_S = 10.0
READ_SIZE = 256 * 1024


def socket_path(runtime_dir: Path, worker: int) -> Path:
    return runtime_dir / f"ctl-{worker}.sock"


class _Link:
    """This worker's outgoing link to one peer."""

    def __init__(self, mesh: Mesh, peer: int) -> None:
        self.mesh = mesh
        self.peer = peer
        self.outbox = bytearray()
        self.has_data = anyio.Event()
        self.running = False

    def push(self, data: bytes) -> None:
        self.outbox += data
        self.has_data.set()
        if not self.running:
            self.running = True
            self.mesh.task_group.start_soon(self._run, name=f"link-{self.peer}")

    async def _connect(self) -> anyio.abc.SocketStream | None:
        path = socket_path(self.mesh.runtime_dir, self.peer)
        with anyio.move_on_after(CONNECT_PATIENCE_S):
            while True:
                try:
                    return await anyio.connect_unix(path)
                except OSError:
                    await anyio.sleep(0.05)
        return None

    async def _run(self) -> None:
        try:
            stream = await self._connect()
            if stream is None:
                log.error("control link to worker %d: unreachable for %.0fs", self.peer, CONNECT_PATIENCE_S)
                self.outbox.clear()
                self.mesh.peer_unreachable(self.peer)
                return
            async with stream:
                await stream.send(control_frames.encode(Hello(self.mesh.index, self.mesh.pid)))
                pid = await self._read_hello(stream)
                if pid is None:
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_eof, stream, pid, tg.cancel_scope)
                    while True:
                        await self.has_data.wait()
                        self.has_data = anyio.Event()
                        data, self.outbox = bytes(self.outbox), bytearray()
                        try:
                            await stream.send(data)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                            self.mesh.peer_gone(self.peer, pid)
                            tg.cancel_scope.cancel()
                            return
        finally:
            self.running = False
            if self.outbox:  # queued for a peer that has since restarted: try the new one
                self.outbox.clear()
                self.has_data = anyio.Event()

    async def _read_hello(self, stream: anyio.abc.SocketStream) -> int | None:
        buffer = bytearray()
        with anyio.move_on_after(CONNECT_PATIENCE_S):
            while True:
                try:
                    chunk = await stream.receive(READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return None
                buffer += chunk
                frames, _used = control_frames.decode(buffer)
                if frames:
                    hello = frames[0]
                    if isinstance(hello, Hello) and hello.worker == self.peer:
                        self.mesh.peer_seen(self.peer, hello.pid)
                        return hello.pid
                    return None
        return None

    async def _watch_eof(self, stream: anyio.abc.SocketStream, pid: int, scope: anyio.CancelScope) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            while await stream.receive(READ_SIZE):
                pass
        self.mesh.peer_gone(self.peer, pid)
        scope.cancel()


class Mesh:
    """Control links of one worker: a listener for its peers, an outgoing link to each."""

    def __init__(
        self,
        *,
        index: int,
        runtime_dir: Path,
        on_frame: Callable[[int, Frame], None],
        on_peer_gone: Callable[[int, int], None],
        on_peer_unreachable: Callable[[int], None],
    ) -> None:
        self.index = index
        self.pid = os.getpid()
        self.runtime_dir = runtime_dir
        self._on_frame = on_frame
        self._on_peer_gone = on_peer_gone
        self._on_peer_unreachable = on_peer_unreachable
        self._links: dict[int, _Link] = {}
        self._gone: set[tuple[int, int]] = set()
        self.peer_pids: dict[int, int] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Frames to itself not yet dispatched, and the loop that dispatches them (``run``'s,
        #: while it runs): a callback per batch, scheduled when the batch's first frame is sent.
        self._local: list[Frame] = []
        self._local_loop: asyncio.AbstractEventLoop | None = None
        self._local_scheduled = False
        #: Set when this worker drains (SIGTERM): peers going away is then the plan.
        self.draining = False

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        assert self._task_group is not None, "Mesh.run() is not running"
        return self._task_group

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen for peers until cancelled. Reports started once the socket is bound."""
        path = socket_path(self.runtime_dir, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = await anyio.create_unix_listener(path, backlog=256)
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            self._local_loop = asyncio.get_running_loop()
            self._schedule_local()
            task_status.started()
            try:
                await listener.serve(self._serve_incoming, task_group=tg)
            finally:
                self._local_loop = None
                await listener.aclose()

    def send(self, worker: int, frame: Frame) -> None:
        """Queue ``frame`` for ``worker``; never blocks, never raises."""
        if worker == self.index:
            self._local.append(frame)
            if not self._local_scheduled:
                self._schedule_local()
            return
        link = self._links.get(worker)
        if link is None:
            link = self._links[worker] = _Link(self, worker)
        link.push(control_frames.encode(frame))

    def _schedule_local(self) -> None:
        """Dispatch the frames to oneself on the next loop turn, if ``run`` runs and some wait.

        A plain loop callback per batch: a task per batch cost ~12 us in anyio, and a
        long-lived pump task two task steps per batch, several batches per pipe set up."""
        loop = self._local_loop
        if loop is not None and self._local:
            self._local_scheduled = True
            loop.call_soon(self._pump_local)

    def _pump_local(self) -> None:
        """Dispatch the batch of frames to oneself; frames the handlers send to us meanwhile
        form the next batch, dispatched on the next turn."""
        self._local_scheduled = False
        if self._local_loop is None:  # ``run`` ended: the frames wait (the worker is exiting)
            return
        frames, self._local = self._local, []
        on_frame, index = self._on_frame, self.index
        for frame in frames:
            try:  # ``_dispatch``, inlined: every frame of a pipe whose parties are all here
                on_frame(index, frame)
            except Exception:  # a bug in a handler must not take the mesh down
                log.exception("control frame handler failed on %r", frame)

    def _dispatch(self, worker: int, frame: Frame) -> None:
        try:
            self._on_frame(worker, frame)
        except Exception:  # a bug in a handler must not take the mesh down
            log.exception("control frame handler failed on %r", frame)

    async def _serve_incoming(self, stream: anyio.abc.SocketStream) -> None:
        peer: Hello | None = None
        buffer = bytearray()
        try:
            async with stream:
                try:
                    await stream.send(control_frames.encode(Hello(self.index, self.pid)))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return  # gone at once: a probe (/readyz) that only checked we accept
                while True:
                    try:
                        chunk = await stream.receive(READ_SIZE)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
                    buffer += chunk
                    frames, used = control_frames.decode(buffer)
                    del buffer[:used]
                    for frame in frames:
                        if peer is None:
                            if not isinstance(frame, Hello):
                                raise ControlProtocolError(f"expected Hello, got {type(frame).__name__}")
                            peer = frame
                            self.peer_seen(peer.worker, peer.pid)
                        else:
                            self._dispatch(peer.worker, frame)
        except ControlProtocolError as exc:
            log.error("control link from worker %s dropped: %s", peer.worker if peer else "?", exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the caller hung up before our Hello (a /readyz probe that gave up): not a fault
        finally:
            if peer is not None:
                self.peer_gone(peer.worker, peer.pid)

    def peer_seen(self, worker: int, pid: int) -> None:
        old = self.peer_pids.get(worker)
        self.peer_pids[worker] = pid
        if old is not None and old != pid:
            self.peer_gone(worker, old)

    def peer_gone(self, worker: int, pid: int) -> None:
        if (worker, pid) in self._gone:
            return
        self._gone.add((worker, pid))
        if self.draining:  # every worker is stopping: peers leaving is expected, not a fault
            log.info("worker %d (pid %d) left", worker, pid)
        else:
            log.warning("worker %d (pid %d) is gone; failing what depended on it", worker, pid)
        try:
            self._on_peer_gone(worker, pid)
        except Exception:
            log.exception("peer-gone handler failed")

    def peer_unreachable(self, worker: int) -> None:
        try:
            self._on_peer_unreachable(worker)
        except Exception:
            log.exception("peer-unreachable handler failed")
