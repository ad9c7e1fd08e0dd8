"""A sender and a receiver over plain HTTP or TLS (``ssl`` context or None), on real sockets,
and a whole transfer between them with every byte checked (SHA-256)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl

from tests.support.pipes import Conn, head

__all__ = ["receive", "send", "transfer"]


async def send(port: int, path: str, data: bytes, tls: ssl.SSLContext | None, *, chunked: bool = False) -> bytes:
    """Upload ``data`` (in 256 KiB writes) while reading the sender's log; returns the log."""
    conn = await Conn.open(port, tls=tls)
    headers = [("Transfer-Encoding", "chunked")] if chunked else [("Content-Length", str(len(data)))]
    await conn.send(head("PUT", path, headers))
    log = asyncio.create_task(conn.reply(method="PUT", timeout=120))
    step = 256 << 10
    for i in range(0, len(data), step):
        piece = data[i : i + step]
        await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
    if chunked:
        await conn.send(b"0\r\n\r\n")
    reply = await log
    conn.close()
    assert reply.status == 200 and reply.complete, reply
    return reply.body


async def receive(port: int, path: str, tls: ssl.SSLContext | None) -> tuple[int, str, bool]:
    """GET ``path``; (body size, sha256 of the body, whether it ended cleanly), read incrementally."""
    conn = await Conn.open(port, tls=tls)
    await conn.send(head("GET", path))
    reader = conn.reader
    status = (await reader.readline()).split()[1]
    assert status == b"200", status
    length = None
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding":
            chunked = value.strip().lower() == "chunked"
    digest = hashlib.sha256()
    size = 0
    complete = False
    if chunked:
        while True:
            chunk = int((await reader.readline()).split(b";")[0], 16)
            if chunk == 0:
                await reader.readline()
                complete = True
                break
            data = await reader.readexactly(chunk)
            digest.update(data)
            size += len(data)
            await reader.readexactly(2)
    else:
        assert length is not None
        while size < length and (data := await reader.read(1 << 20)):
            digest.update(data)
            size += len(data)
        complete = size == length
    conn.close()
    return size, digest.hexdigest(), complete


async def transfer(
    port: int, path: str, data: bytes, send_tls: ssl.SSLContext | None, recv_tls: ssl.SSLContext | None, **kw: bool
) -> bytes:
    receiver = asyncio.create_task(receive(port, path, recv_tls))
    await asyncio.sleep(0.2)
    log = await asyncio.wait_for(send(port, path, data, send_tls, **kw), 120)
    size, digest, complete = await asyncio.wait_for(receiver, 120)
    assert (size, digest, complete) == (len(data), hashlib.sha256(data).hexdigest(), True)
    return log
