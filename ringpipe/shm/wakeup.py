"""Cross-process wake-ups for ring sleepers: one Unix datagram per wake, no stream, no JSON.

A reader that found its ring empty (or a writer that found it full) sets its *waiting*
word and sleeps; the other side, after publishing, wakes it. Within one worker that is an
event; across workers it used to be a ``Wake`` frame on the control mesh, which cost two
task switches and a JSON round trip per wake-up — measured at about 1 CPU-second per GB
relayed between two workers. Here a wake is one ``sendto`` of a few bytes to the target
worker's datagram socket (``runtime_dir/wake-<slot>.sock``), and the target's event loop
reads a batch of them in one reader callback.

Losing a datagram (the target's socket buffer full, or the target restarting) is harmless:
every sleep in ``relay.py`` has a timeout, so a lost wake costs latency, never a hang. The
waiting words make wakes rare in the first place (one per sleep, not one per chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["WakeChannel", "wake_socket_path"]

#: Datagrams read per reader callback at most (keeps one busy sender from starving the loop).
BATCH: Final = 256


def wake_socket_path(runtime_dir: Path, worker: int) -> Path:
    return runtime_dir / f"wake-{worker}.sock"


class WakeChannel:
    """This worker's wake-up socket: sends wakes to peers and delivers the ones it receives."""

    def __init__(self, runtime_dir: Path, index: int, deliver: Callable[[str, int], None]) -> None:
        self._runtime_dir = runtime_dir
        self._deliver = deliver
        self._paths: dict[int, bytes] = {}
        path = wake_socket_path(runtime_dir, index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self._sock.bind(str(path))
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Deliver incoming wakes from the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def send(self, worker: int, segment: str, slots: list[int]) -> None:
        """Wake ``slots`` of ring ``segment`` in ``worker`` with one datagram (best effort)."""
        path = self._paths.get(worker)
        if path is None:
            path = self._paths[worker] = str(wake_socket_path(self._runtime_dir, worker)).encode()
        message = ",".join(map(str, slots)).encode() + b" " + segment.encode()
        try:
            self._sock.sendto(message, path)
        except OSError:  # full, or the peer is restarting: its sleeper's timeout covers it
            pass

    def _on_readable(self) -> None:
        for _ in range(BATCH):
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            slots, _, segment = data.partition(b" ")
            name = segment.decode(errors="replace")
            try:
                for slot in slots.split(b","):
                    self._deliver(name, int(slot))
            except ValueError:
                continue

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
