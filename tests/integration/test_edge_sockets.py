"""Edge objects given real sockets: the socket object an adopting worker builds for a
handed-over connection (``handoff.py``: with the family its sender named, or, for a family it
did not name, the one the descriptor has), and the hang-up watcher given a socket that is
already closed (it must count as hung up at once, never raise)."""

from __future__ import annotations

import asyncio
import socket

from ringpipe.http.hangup import HangupWatcher
from ringpipe.mesh.handoff import _adopted_socket


def test_named_family_gives_a_tcp_socket_of_that_family() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        adopted = _adopted_socket(int(socket.AF_INET), accepted.detach())
        try:
            assert adopted.family == socket.AF_INET
            assert adopted.type == socket.SOCK_STREAM
            assert adopted.getpeername() == client.getsockname()
            adopted.sendall(b"x")
            assert client.recv(1) == b"x"
        finally:
            adopted.close()
            client.close()


def test_unnamed_family_is_asked_of_the_descriptor() -> None:
    left, right = socket.socketpair()
    adopted = _adopted_socket(0, left.detach())
    try:
        assert adopted.family == socket.AF_UNIX
        adopted.sendall(b"y")
        assert right.recv(1) == b"y"
    finally:
        adopted.close()
        right.close()


def test_hangup_watcher_takes_a_closed_socket() -> None:
    """A socket closed before it is watched (``fileno()`` -1) counts as hung up, at once."""

    async def main() -> None:
        watcher = HangupWatcher()
        sock = socket.socket()
        sock.close()
        called = asyncio.Event()
        watcher.watch(sock.fileno(), called.set)
        await asyncio.wait_for(called.wait(), 1)
        watcher.unwatch(sock.fileno())
        watcher.close()

    asyncio.run(main())
