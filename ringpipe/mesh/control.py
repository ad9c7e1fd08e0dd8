"""The worker-to-worker control mesh: Unix sockets, one outgoing link per peer, ordered frames.

Every worker listens on ``<runtime dir>/ctl-<index>.sock``. To send to peer *w*, a worker
uses its own outgoing link to *w* (opened on first use, re-opened after *w* restarts), so
frames from one worker to another arrive in the order they were sent. ``send`` never
blocks: it appends to the link's outbox, and the whole outbox goes out in one write on the
next loop turn (frames sent in one event-loop turn leave in one syscall). A frame to oneself
is dispatched locally on the next loop turn, so callers never re-enter their own handlers.

Both ends say ``Hello`` first, so each side learns the other's pid. A link that reaches EOF
or fails means that peer process is gone (Unix sockets on one host fail no other way):
``on_peer_gone(worker, pid)`` is called once per (worker, pid), and frames still queued for
it are dropped; their parties are failed by that callback, never left waiting.

Both ends are ``asyncio`` protocols on the event loop's own transports: bytes arrive in
``data_received``, an end in ``connection_lost``, and a write never waits (the transport
buffers what the socket does not take at once). No task waits on a socket, so nothing can
be cancelled while the socket turns readable: anyio's socket streams wait with a future
that the loop's reader callback completes, and under uvloop a task cancelled in that wait
(every worker's links, at shutdown, as its peers close theirs) could have the callback
complete the cancelled future, an ``InvalidStateError`` logged at error level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import anyio
import anyio.abc

from ringpipe.core import control_frames
from ringpipe.core.control_frames import Frame, Hello
from ringpipe.core.errors import ControlProtocolError

__all__ = ["Mesh", "socket_path"]

log = logging.getLogger(__name__)

#: How long a link keeps trying to reach a peer (a worker restarts within about a second),
#: and how long a peer that accepted may take to say ``Hello``.
CONNECT_PATIENCE_S = 10.0


def socket_path(runtime_dir: Path, worker: int) -> Path:
    return runtime_dir / f"ctl-{worker}.sock"


class _Link(asyncio.Protocol):
    """This worker's outgoing link to one peer.

    Frames wait in ``outbox`` until the peer's ``Hello`` has come (then every loop turn's
    frames leave in one write); a link that ends drops what it still holds, and the next
    frame for that peer opens a new one.
    """

    def __init__(self, mesh: Mesh, peer: int) -> None:
        self.mesh = mesh
        self.peer = peer
        self.outbox = bytearray()
        #: Open from the connect until the link ends; ``pid`` is set once the peer said Hello.
        self.transport: asyncio.Transport | None = None
        self.pid: int | None = None
        self.connecting = False
        self._flush_scheduled = False
        self._hello = bytearray()

    def push(self, data: bytes) -> None:
        self.outbox += data
        if self.pid is not None:
            loop = self.mesh.loop
            if not self._flush_scheduled and loop is not None:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif not self.connecting and self.transport is None:
            self.connecting = True
            self.mesh.task_group.start_soon(self._connect, name=f"link-{self.peer}")

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is not None and self.pid is not None and self.outbox:
            data, self.outbox = bytes(self.outbox), bytearray()
            self.transport.write(data)

    async def _connect(self) -> None:
        """Open the link (retrying while the peer is not there yet, as when it restarts)."""
        loop = asyncio.get_running_loop()
        path = str(socket_path(self.mesh.runtime_dir, self.peer))
        try:
            with anyio.move_on_after(CONNECT_PATIENCE_S):
                while True:
                    try:
                        await loop.create_unix_connection(lambda: self, path)
                        return
                    except OSError:
                        await anyio.sleep(0.05)
            log.error("control link to worker %d: unreachable for %.0fs", self.peer, CONNECT_PATIENCE_S)
            self.outbox.clear()
            self.mesh.peer_unreachable(self.peer)
        finally:
            self.connecting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast("asyncio.Transport", transport)  # uvloop's: not a subclass
        self.mesh.links_open.add(self)
        transport.write(control_frames.encode(Hello(self.mesh.index, self.mesh.pid)))
        if self.mesh.loop is not None:
            self.mesh.loop.call_later(CONNECT_PATIENCE_S, self._hello_overdue, transport)

    def _hello_overdue(self, transport: asyncio.Transport) -> None:
        if self.transport is transport and self.pid is None:
            log.error("control link to worker %d: no Hello in %.0fs", self.peer, CONNECT_PATIENCE_S)
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.pid is not None:
            return  # a peer says nothing after its Hello on our link: only its end matters
        self._hello += data
        try:
            frames, _used = control_frames.decode(self._hello)
        except ControlProtocolError as exc:
            log.error("control link to worker %d dropped: %s", self.peer, exc)
            self._abort()
            return
        if not frames:
            return
        hello = frames[0]
        self._hello = bytearray()
        if not isinstance(hello, Hello) or hello.worker != self.peer:
            self._abort()  # not the peer this link is for (a stale socket file): start over
            return
        self.pid = hello.pid
        self.mesh.peer_seen(self.peer, hello.pid)
        self._flush()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        pid, self.pid = self.pid, None
        self.transport = None
        self.mesh.links_open.discard(self)
        self.outbox.clear()  # queued for a peer that is gone: its parties are failed by peer_gone
        self._hello = bytearray()
        if pid is not None:
            self.mesh.peer_gone(self.peer, pid)


class _Inbound(asyncio.Protocol):
    """A peer's link to this worker: its Hello, then frames to dispatch, in order."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.peer: Hello | None = None
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast("asyncio.Transport", transport)  # uvloop's: not a subclass
        self.mesh.inbound_open.add(self)
        # A /readyz probe hangs up once it has this: the write then fails quietly.
        transport.write(control_frames.encode(Hello(self.mesh.index, self.mesh.pid)))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        try:
            frames, used = control_frames.decode(buffer)
            del buffer[:used]
            for frame in frames:
                if self.peer is None:
                    if not isinstance(frame, Hello):
                        raise ControlProtocolError(f"expected Hello, got {type(frame).__name__}")
                    self.peer = frame
                    self.mesh.peer_seen(frame.worker, frame.pid)
                else:
                    self.mesh.dispatch(self.peer.worker, frame)
        except ControlProtocolError as exc:
            log.error("control link from worker %s dropped: %s", self.peer.worker if self.peer else "?", exc)
            self.buffer = bytearray()  # not cleared: the exception's frames still hold a view of it
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.mesh.inbound_open.discard(self)
        self.transport = None
        if self.peer is not None:
            self.mesh.peer_gone(self.peer.worker, self.peer.pid)


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
        #: Links (ours and peers') with an open transport, to close when ``run`` ends.
        self.links_open: set[_Link] = set()
        self.inbound_open: set[_Inbound] = set()
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
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop ``run`` runs on (None when it does not run)."""
        return self._local_loop

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        assert self._task_group is not None, "Mesh.run() is not running"
        return self._task_group

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen for peers until cancelled. Reports started once the socket is bound; on the
        way out closes every link (peers see this worker leave)."""
        path = socket_path(self.runtime_dir, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _Inbound(self), str(path), backlog=256)
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                self._local_loop = loop
                self._schedule_local()
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._local_loop = None
            server.close()
            transports = [link.transport for link in self.links_open]
            transports += [inbound.transport for inbound in self.inbound_open]
            for transport in transports:
                if transport is not None:
                    transport.close()

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
            try:  # ``dispatch``, inlined: every frame of a pipe whose parties are all here
                on_frame(index, frame)
            except Exception:  # a bug in a handler must not take the mesh down
                log.exception("control frame handler failed on %r", frame)

    def dispatch(self, worker: int, frame: Frame) -> None:
        """Hand a peer's ``frame`` to the handler (an exception there is logged, not raised)."""
        try:
            self._on_frame(worker, frame)
        except Exception:  # a bug in a handler must not take the mesh down
            log.exception("control frame handler failed on %r", frame)

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
