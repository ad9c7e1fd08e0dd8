"""The socket object an adopting worker builds for a handed-over connection (``handoff.py``):
with the family its sender named, or, for a family it did not name, the one the descriptor has."""

from __future__ import annotations

import socket

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
