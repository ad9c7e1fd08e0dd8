"""Connection hand-off: a small pipe's connections all go to its owner worker.

Why: the kernel spreads accepted connections over the workers at random, so a pipe's
sender and receiver usually land on different workers, which then meet through the
owner's control frames, one shared-memory segment attached by both, and a datagram plus
a process wake-up every time a reader waits for bytes. For the common small pipe (an LLM
token stream to one or a few readers) that is most of its cost: measured on a 2-core VM,
a 64-byte record took ~0.13 ms longer across workers than within one, and a 1 MiB pipe
cost ~1.3 ms more server CPU. So a worker that reads a request head for a pipe whose
``?n`` is at most ``--colocate-max-n`` (and whose path another worker owns) passes the
socket itself, with the bytes it has read, to the owner (``SCM_RIGHTS`` over a Unix
``SOCK_SEQPACKET`` socket), which serves it as if it had accepted it. Larger fan-outs keep their
readers where the kernel put them: their writes then spread over every core.

The hand-off is an optimisation, never a requirement: whenever it cannot happen (the
owner is restarting or draining, its queue is full, the read is too large, TLS state
lives in this process, a request is still being answered on the connection) the
connection is served where it is, and the pipe's ends meet across workers as before.
A connection is handed off at most once per request (the adopter never passes it on for
the request it was given), so a disagreement about owners cannot bounce it around.

The sockets live in the supervisor's private runtime folder (``mkdtemp``: mode 0700),
like the control and wake-up sockets: only the server's own user can hand it a descriptor.

``handoff_target`` (and ``handoff_targeting``, the same bound to a worker) is pure (no I/O);
``HandoffChannel`` is the socket.
"""

from __future__ import annotations

import _socket
import array
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ringpipe.core.paths import RESERVED_PATHS, normalize_path, owner_of, query_n

__all__ = [
    "MAX_HANDOFF_BYTES",
    "Handoff",
    "HandoffChannel",
    "handoff_socket_path",
    "handoff_target",
    "handoff_targeting",
]

log = logging.getLogger("ringpipe.handoff")

#: The most bytes read from a connection that go along with it (a head, and perhaps the
#: start of a body): one whole read of uvloop's (256 KiB), so that a sender that writes its
#: head and first chunk at once is handed off too. A larger first read is served where it
#: was read.
MAX_HANDOFF_BYTES: Final = 320 * 1024
#: Hand-offs taken per wake-up of the channel, so one burst cannot starve the loop.
_BATCH: Final = 64
#: Each message's first byte: the connection's address family, so the adopter need not ask
#: the descriptor for it (``_adopted_socket``); ``\0``: not one of these, ask.
_FAMILY_BYTE: Final = {int(family): bytes([family]) for family in (socket.AF_INET, socket.AF_INET6)}
#: ``recvmsg`` flags of a message cut short (as a plain int: an ``enum.IntFlag`` operation is a
#: Python call), and the ancillary space for one descriptor.
_TRUNCATED: Final = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)
_ONE_FD_SPACE: Final = socket.CMSG_SPACE(array.array("i").itemsize)


def handoff_target(head: bytes, *, index: int, workers: int, max_n: int) -> int | None:
    """The worker to hand a connection to, given its request ``head``; None: serve it here.

    ``head`` begins with one whole request head (request line through the blank line;
    what follows it is not read). Only
    origin-form targets on pipe paths (not ``RESERVED_PATHS``) whose ``?n`` (default 1,
    parsed as the app parses it) is 1..``max_n`` qualify, and only when another worker
    owns the path. Anything unexpected means "here": the app then answers it as usual.
    """
    return handoff_targeting(index=index, workers=workers, max_n=max_n)(head)


def handoff_targeting(*, index: int, workers: int, max_n: int) -> Callable[[bytes], int | None]:
    """``handoff_target`` for worker ``index``: what its HTTP protocol asks of every request
    head (a closure: one call per head, not a wrapper's two, and no keywords)."""

    def target(head: bytes) -> int | None:
        if workers < 2 or max_n < 1:
            return None
        line_end = head.find(b"\r\n")
        parts = head[: line_end if line_end >= 0 else len(head)].split(b" ")
        if len(parts) != 3 or not parts[1].startswith(b"/"):
            return None
        raw_path, _, query = parts[1].partition(b"?")
        raw_path = raw_path.partition(b"#")[0]
        key = normalize_path(raw_path)
        if key in RESERVED_PATHS:
            return None
        n = query_n(query.partition(b"#")[0]) if query else 1  # ``query_n(b"")`` is 1
        if n is None or not 1 <= n <= max_n:
            return None
        owner = owner_of(key, workers)
        return None if owner == index else owner

    return target


def handoff_socket_path(runtime_dir: Path, worker: int) -> Path:
    return runtime_dir / f"handoff-{worker}.sock"


class HandoffChannel:
    """This worker's hand-off sockets: passes connections to peers, adopts theirs.

    ``SOCK_SEQPACKET`` over Unix sockets: one listening socket per worker
    (``handoff-<i>.sock`` in the runtime folder), one connection from each worker to each
    peer it hands to, opened on first use. Each message is one connection: the bytes
    read from it, with its descriptor attached (``SCM_RIGHTS``). Not datagrams: a Unix
    datagram queue holds only ``net.unix.max_dgram_qlen`` messages (10 by default), so a
    burst of connections would mostly be served where they landed; a stream of packets
    is bounded by bytes (``SO_SNDBUF``) instead, thousands of request heads.

    ``adopt(sock, data)`` gets each connection handed here, with the bytes already read
    from it; it owns ``sock`` from then on.
    """

    def __init__(self, runtime_dir: Path, index: int, adopt: Callable[[socket.socket, bytes], None]) -> None:
        self._runtime_dir = runtime_dir
        self._adopt = adopt
        self._peers: dict[int, socket.socket] = {}
        self._inbound: dict[int, socket.socket] = {}
        path = handoff_socket_path(runtime_dir, index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._listener = _packet_socket()
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.open = True

    def start(self) -> None:
        """Adopt incoming connections from the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._listener.fileno(), self._on_peer_connecting)

    def send(self, worker: int, fd: int, data: bytes, family: int = 0) -> bool:
        """Pass connection ``fd`` (of address ``family``; 0: unknown) and the ``data`` read
        from it to ``worker``; True if it took them (the caller must then close its copy
        without a word to the client)."""
        if not self.open or len(data) > MAX_HANDOFF_BYTES:
            return False
        peer = self._peers.get(worker)
        if peer is None:
            peer = _packet_socket()
            try:
                peer.connect(str(handoff_socket_path(self._runtime_dir, worker)))
            except OSError:  # not there yet (starting, restarting) or its backlog is full
                peer.close()
                return False
            self._peers[worker] = peer
        try:
            peer.sendmsg(
                [_FAMILY_BYTE.get(family, b"\0"), data],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
            )
        except BlockingIOError:  # its queue is full: serve it here
            return False
        except OSError:  # the peer went away (died, draining): reconnect next time
            del self._peers[worker]
            peer.close()
            return False
        return True

    def _on_peer_connecting(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            log.exception("hand-off listener failed")
            return
        sock.setblocking(False)
        fd = sock.fileno()
        self._inbound[fd] = sock
        assert self._loop is not None
        self._loop.add_reader(fd, self._on_readable, sock)

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(_BATCH):
            fds = array.array("i")
            try:
                data, ancillary, flags, _addr = sock.recvmsg(MAX_HANDOFF_BYTES + 2, _ONE_FD_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, ancillary, flags = b"", [], 0
            if not data and not ancillary:  # the peer closed (exited or died)
                self._forget(sock)
                return
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if len(fds) != 1 or flags & _TRUNCATED or len(data) < 2:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                log.warning("dropped a malformed hand-off", extra={"event": "handoff_dropped"})
                continue
            try:
                conn = _adopted_socket(data[0], fds[0])
                data = data[1:]
            except OSError:
                with contextlib.suppress(OSError):
                    os.close(fds[0])
                continue
            try:
                self._adopt(conn, data)
            except Exception:
                log.exception("could not adopt a handed-off connection")
                conn.close()

    def _forget(self, sock: socket.socket) -> None:
        if self._inbound.pop(sock.fileno(), None) is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(sock.fileno())
        sock.close()

    def close(self) -> None:
        """Take no more hand-offs (draining, exit): peers then serve their connections themselves.

        Connections already queued here are still adopted by nobody: closing the sockets
        closes them (the clients see the connection drop, as with any worker exit)."""
        if not self.open:
            return
        self.open = False
        if self._loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        for sock in list(self._inbound.values()):
            self._forget(sock)
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()


class _HandedSocket(socket.socket):
    """A handed-over connection's socket, whose ``family`` and ``type`` are plain ints.

    The event loop reads both when it adopts the socket (``connect_accepted_socket``), and
    ``socket.socket`` turns each into an enum member by a Python call every time; the
    integers compare the same.
    """

    __slots__ = ()

    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]


def _adopted_socket(family: int, fd: int) -> socket.socket:
    """A socket object for a handed-over TCP connection. Named by the sender, its family
    spares three system calls (``socket.socket`` asks the descriptor for its family, type
    and protocol when they are not given); an unknown family (0) is asked for."""
    if family in _FAMILY_BYTE:
        return _HandedSocket(family, socket.SOCK_STREAM, 0, fd)
    return _HandedSocket(fileno=fd)


def _packet_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return sock


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a worker's HTTP protocol needs to hand a connection off (``connection.py``)."""

    #: ``handoff_target`` bound to this worker: request head -> worker index, or None.
    target: Callable[[bytes], int | None]
    #: ``HandoffChannel.send``: (worker, fd, bytes read, address family) -> whether it was taken.
    send: Callable[[int, int, bytes, int], bool]
