"""HTTPS on the pipe port (SPEC Part 4, TLS): real certificates, real TLS clients, real bytes.

The server runs TLS itself (``ringpipe/tls.py``) after looking at each connection's first
byte, so these tests check what that must keep: every byte of a large transfer arrives over
TLS on both sides (the raw-socket fast paths are off for TLS), curl works as sender and
receiver, plain HTTP still works on the same port unless ``--ssl-only``, and broken or
stalled handshakes cost the server nothing lasting.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.externals import ensure_tool, self_signed_cert
from tests.support.pipes import Conn, head, pattern, request
from tests.support.servers import ROOT, Server
from tests.support.tls_clients import transfer

MIB = 1 << 20


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def client_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """A client that trusts exactly our throwaway certificate (full verification, not -k)."""
    return ssl.create_default_context(cafile=str(cert[0]))


def tls_server(factory: Callable[..., Server], cert: tuple[Path, Path], *extra: str) -> Server:
    return factory("--workers", "2", "--ssl-certfile", str(cert[0]), "--ssl-keyfile", str(cert[1]), *extra)


def _same_workers(server: Server, before: dict[int, int]) -> None:
    assert server.workers_by_slot() == before
    assert sorted(server.workers()) == sorted(before.values())
    assert not [line for line in server.raw_lines if "worker_died" in line]


def test_50_mib_over_https_byte_for_byte(
    server_factory: Callable[..., Server], cert: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    """Sender and receiver on HTTPS: every byte arrives, and the sender's log is the usual one."""
    server = tls_server(server_factory, cert)
    assert server.url.startswith("https://")
    data = pattern(50 * MIB, seed=5)
    start = time.monotonic()
    log = asyncio.run(transfer(server.port, "/tls-50m", data, client_tls, client_tls))
    assert log.decode().splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
    assert time.monotonic() - start < 90


def test_chunked_upload_over_https_and_mixed_schemes(
    server_factory: Callable[..., Server], cert: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    """A chunked upload is framed right over TLS; an HTTPS sender meets a plain-HTTP receiver
    on the same port and the other way round."""
    server = tls_server(server_factory, cert)
    data = pattern(8 * MIB, seed=6)

    async def main() -> None:
        await transfer(server.port, "/tls-chunked", data, client_tls, client_tls, chunked=True)
        await transfer(server.port, "/tls-to-plain", data, client_tls, None)
        await transfer(server.port, "/plain-to-tls", data, None, client_tls, chunked=True)

    asyncio.run(main())


def test_curl_k_sender_and_receiver(
    server_factory: Callable[..., Server], cert: tuple[Path, Path], tmp_path: Path
) -> None:
    curl = ensure_tool("curl", "curl")
    server = tls_server(server_factory, cert)
    data = pattern(12 * MIB, seed=7)
    source, out = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(data)
    url = f"https://127.0.0.1:{server.port}/curl-tls"
    receiver = subprocess.Popen([curl, "-sSk", "--fail", "-o", str(out), url], stderr=subprocess.PIPE)
    time.sleep(0.3)
    sender = subprocess.run([curl, "-sSk", "--fail", "-T", str(source), url], capture_output=True, timeout=120)
    assert receiver.wait(120) == 0, receiver.stderr.read() if receiver.stderr else ""
    assert sender.returncode == 0, sender.stderr
    assert sender.stdout.decode().splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
    assert out.read_bytes() == data
    version = subprocess.run([curl, "-sSk", f"https://127.0.0.1:{server.port}/version"], capture_output=True)
    assert version.returncode == 0 and version.stdout.strip()


def test_keep_alive_over_https(
    server_factory: Callable[..., Server], cert: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    server = tls_server(server_factory, cert)

    async def main() -> None:
        conn = await Conn.open(server.port, tls=client_tls)
        for _ in range(3):
            await conn.send(head("GET", "/version"))
            reply = await conn.reply(timeout=10)
            assert reply.status == 200 and reply.complete and not reply.closed
        conn.close()

    asyncio.run(main())


def test_ssl_only_refuses_plain_http(
    server_factory: Callable[..., Server], cert: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    server = tls_server(server_factory, cert, "--ssl-only")

    async def main() -> None:
        conn = await Conn.open(server.port)
        await conn.send(request("PUT", "/plain", b"x" * 100_000))
        reply = await conn.reply(method="PUT", timeout=10)
        assert reply.status == 400 and reply.body == b"[ERROR] This server only accepts HTTPS.\n"
        assert reply.header("content-type") == "text/plain"
        assert reply.header("access-control-allow-origin") == "*"
        assert await conn.closed_within(5)
        await transfer(server.port, "/only-tls", pattern(MIB), client_tls, client_tls)

    asyncio.run(main())
    assert any('"status": 400' in line and "HTTPS" in line for line in server.raw_lines)


def test_broken_and_stalled_handshakes_cost_nothing_lasting(
    server_factory: Callable[..., Server], cert: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    """Garbage after a handshake byte, a client leaving mid-handshake, one that never finishes
    it (closed at --header-timeout), and one that fails verification: the workers stay, and a
    transfer works afterwards."""
    server = tls_server(server_factory, cert, "--header-timeout", "2")
    before = server.workers_by_slot()

    def raw(data: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(data)
        return sock

    garbage = raw(b"\x16\x03\x01\x00\x05garbage-that-is-no-client-hello")
    garbage.settimeout(5)
    with contextlib.suppress(ConnectionError):  # a reset is an end too
        while garbage.recv(4096):  # an alert, then EOF, promptly (a timeout fails the test)
            pass
    garbage.close()
    left = raw(b"\x16\x03\x01")
    left.close()
    stalled = raw(b"\x16\x03\x01\x02\x00\x01")  # a record header and one byte of a ClientHello
    stalled.settimeout(10)
    started = time.monotonic()
    with contextlib.suppress(ConnectionError):
        while stalled.recv(4096):
            pass
    assert time.monotonic() - started < 8, "a stalled handshake must be cut at --header-timeout"
    stalled.close()

    async def untrusting() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            await Conn.open(server.port, tls=ssl.create_default_context())

    asyncio.run(untrusting())
    asyncio.run(transfer(server.port, "/after-handshakes", pattern(2 * MIB), client_tls, client_tls))
    _same_workers(server, before)


def test_connection_limit_and_header_timeout_on_a_tls_port(
    server_factory: Callable[..., Server], cert: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    """Over --max-connections a TLS client is cut before its handshake and a plain one gets the
    503; after a finished handshake, a request head not completed in time is still cut."""
    server = server_factory(
        "--workers", "1", "--ssl-certfile", str(cert[0]), "--ssl-keyfile", str(cert[1]),
        "--max-connections", "2", "--header-timeout", "2",
    )  # fmt: skip

    async def main() -> None:
        first = await Conn.open(server.port, tls=client_tls)
        await first.send(b"GET /partial HTTP/1.1\r\nHost: x\r\n")  # handshake done, head never finished
        second = socket.create_connection(("127.0.0.1", server.port))
        await asyncio.sleep(0.3)
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await Conn.open(server.port, tls=client_tls)
        plain = await Conn.open(server.port)
        await plain.send(head("GET", "/version"))
        reply = await plain.reply(timeout=5)
        assert reply.status == 503 and reply.body == b"[ERROR] The server is at its connection limit.\n"
        started = time.monotonic()
        assert await first.closed_within(6)
        assert 1.0 < time.monotonic() - started < 6
        second.close()
        await asyncio.sleep(0.5)
        await transfer(server.port, "/tls-after-limit", pattern(MIB), client_tls, None)

    asyncio.run(main())


def test_unreadable_certificate_stops_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    cmd = [sys.executable, "-m", "ringpipe", "serve", "--port", "0", "--workers", "1"]
    cmd += ["--ssl-certfile", str(missing), "--ssl-keyfile", str(missing)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot load the TLS certificate" in done.stderr
