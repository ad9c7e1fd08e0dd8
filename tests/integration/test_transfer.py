"""SPEC Part 1.1-1.3 against a real multi-worker server: what a curl user would check."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

from tests.support.pipes import Response, fresh, get, pattern, put, run
from tests.support.servers import Server


async def settle() -> None:
    await asyncio.sleep(0.3)


def test_sender_first_then_receiver(server: Server) -> None:
    path, data = fresh(), pattern(300_000)

    async def scenario() -> tuple[Response, Response]:
        sender = asyncio.create_task(put(server.port, path, data, [("Content-Type", "application/octet-stream")]))
        await settle()
        receiver = await get(server.port, path)
        return await sender, receiver

    log, got = run(scenario())
    assert got.status == 200 and got.complete and got.body == data
    assert got.header("content-length") == str(len(data))
    assert got.header("content-type") == "application/octet-stream"
    assert log.status == 200 and log.complete
    assert log.header("content-type") == "text/plain"
    assert log.header("access-control-allow-origin") == "*"
    assert log.text.splitlines() == [
        "[INFO] Waiting for 1 receiver(s)...",
        "[INFO] A receiver was connected.",
        "[INFO] Start sending to 1 receiver(s)!",
        "[INFO] Sent successfully!",
        "[INFO] All receiver(s) was/were received successfully.",
    ]


def test_receivers_first_then_sender_with_n3(server: Server) -> None:
    path, data = fresh() + "?n=3", pattern(1_000_000, seed=3)

    async def scenario() -> tuple[Response, list[Response]]:
        receivers = [asyncio.create_task(get(server.port, path)) for _ in range(3)]
        await settle()
        log = await put(server.port, path, data, chunked=True)
        return log, [await r for r in receivers]

    log, got = run(scenario())
    for response in got:
        assert response.status == 200 and response.complete and response.body == data
        assert response.header("transfer-encoding") == "chunked"  # the sender gave no length
    assert log.text.splitlines() == [
        "[INFO] Waiting for 3 receiver(s)...",
        "[INFO] 3 receiver(s) has/have been connected.",
        "[INFO] Start sending to 3 receiver(s)!",
        "[INFO] Sent successfully!",
        "[INFO] All receiver(s) was/were received successfully.",
    ]


def test_mixed_arrival_order(server: Server) -> None:
    path, data = fresh() + "?n=2", pattern(200_000, seed=5)

    async def scenario() -> tuple[Response, list[Response]]:
        first = asyncio.create_task(get(server.port, path))
        await settle()
        sender = asyncio.create_task(put(server.port, path, data))
        await settle()
        second = await get(server.port, path)
        return await sender, [await first, second]

    log, got = run(scenario())
    assert [r.body == data and r.complete for r in got] == [True, True]
    assert log.text.splitlines()[:3] == [
        "[INFO] Waiting for 2 receiver(s)...",
        "[INFO] 1 receiver(s) has/have been connected.",
        "[INFO] A receiver was connected.",
    ]


def test_zero_length_and_chunked_uploads(server: Server) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(50):
            yield pattern(1000 + i, seed=i)

    expected = b"".join(pattern(1000 + i, seed=i) for i in range(50))

    async def scenario() -> tuple[Response, Response]:
        p1, p2 = fresh(), fresh()
        r1 = asyncio.create_task(get(server.port, p1))
        r2 = asyncio.create_task(get(server.port, p2))
        await settle()
        await put(server.port, p1, b"")
        await put(server.port, p2, chunks())
        return await r1, await r2

    empty, chunked = run(scenario())
    assert empty.status == 200 and empty.complete and empty.body == b"" and empty.header("content-length") == "0"
    assert chunked.complete and chunked.body == expected


def test_headers_forwarded_exactly(server: Server) -> None:
    path = fresh()
    sent = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Disposition", 'attachment; filename="a.html"'),
        ("X-Piping", "one"),
        ("X-Piping", "two"),
        ("Cookie", "secret=1"),
        ("Authorization", "Bearer nope"),
        ("X-Custom", "nope"),
    ]

    async def scenario() -> Response:
        receiver = asyncio.create_task(get(server.port, path))
        await settle()
        await put(server.port, path, b"<b>hi</b>", sent)
        return await receiver

    got = run(scenario())
    names = {k for k, _ in got.headers}
    assert got.header("content-type") == "text/plain; charset=utf-8"
    assert got.header("content-disposition") == 'attachment; filename="a.html"'
    assert got.header_all("x-piping") == ["one", "two"]
    assert got.header("access-control-allow-origin") == "*"
    assert got.header("access-control-expose-headers") == "X-Piping"
    assert got.header("x-robots-tag") == "none"
    assert not names & {"cookie", "authorization", "x-custom", "set-cookie"}


def test_conflicts_leave_waiting_parties_unharmed(server: Server) -> None:
    path = fresh()
    data = pattern(50_000)

    async def scenario() -> tuple[list[Response], Response, list[Response]]:
        waiting = asyncio.create_task(get(server.port, path + "?n=2"))
        await settle()
        refusals = [
            await get(server.port, path + "?n=3"),
            await put(server.port, path + "?n=1", b"x"),
        ]
        second = asyncio.create_task(get(server.port, path + "?n=2"))
        await settle()
        refusals.append(await get(server.port, path + "?n=2"))  # a third receiver for n=2
        halfway = asyncio.Event()

        async def paused_body() -> AsyncIterator[bytes]:
            yield data[:25_000]
            await halfway.wait()  # keep the pipe established while the late sender knocks
            yield data[25_000:]

        sender = asyncio.create_task(put(server.port, path + "?n=2", paused_body()))
        await settle()
        refusals.append(await put(server.port, path + "?n=2", b"y"))  # path established by now
        halfway.set()
        return refusals, await sender, [await waiting, await second]

    refusals, log, got = run(scenario())
    assert [r.status for r in refusals] == [400, 400, 400, 400]
    assert refusals[0].text == "[ERROR] The number of receivers should be 2 but 3.\n"
    assert refusals[1].text == "[ERROR] The number of receivers should be 2 but 1.\n"
    assert refusals[2].text == "[ERROR] The number of receivers has reached limits.\n"
    assert refusals[3].text == f"[ERROR] Connection on '{path}' has been established already.\n"
    for r in refusals:
        assert r.header("content-type") == "text/plain" and r.header("access-control-allow-origin") == "*"
    assert [r.body == data and r.complete for r in got] == [True, True]
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")


def test_second_sender_rejected(server: Server) -> None:
    path = fresh()

    async def scenario() -> tuple[Response, Response, Response]:
        first = asyncio.create_task(put(server.port, path, b"first"))
        await settle()
        second = await put(server.port, path, b"second")
        receiver = await get(server.port, path)
        return second, receiver, await first

    second, receiver, _log = run(scenario())
    assert second.status == 400 and second.text == f"[ERROR] Another sender has been connected on '{path}'.\n"
    assert receiver.body == b"first"


def test_bad_n(server: Server) -> None:
    async def scenario() -> list[Response]:
        return [
            await get(server.port, "/x?n=abc"),
            await put(server.port, "/x?n=abc", b""),
            await get(server.port, "/x?n=0"),
            await get(server.port, "/x?n=-3"),
            await get(server.port, "/x?n=257"),
        ]

    answers = run(scenario())
    assert [r.status for r in answers] == [400] * 5
    assert answers[0].text == '[ERROR] Invalid query parameter "n"\n'
    assert answers[1].text == '[ERROR] Invalid "n" query parameter\n'
    assert answers[2].text == "[ERROR] n should > 0, but n = 0.\n"
    assert answers[3].text == "[ERROR] n should > 0, but n = -3.\n"
    assert "256" in answers[4].text


def test_dot_segments_share_a_pipe_and_query_is_ignored(server: Server) -> None:
    base = fresh()

    async def scenario() -> Response:
        receiver = asyncio.create_task(get(server.port, f"{base}/a/../b?ignored=1"))
        await settle()
        await put(server.port, f"{base}/./b", b"same pipe")
        return await receiver

    assert run(scenario()).body == b"same pipe"


def test_waiting_parties_that_leave_free_their_slots(server: Server) -> None:
    path = fresh()

    async def leave_after(make: object) -> None:
        task = asyncio.create_task(make)  # type: ignore[arg-type]
        await settle()
        task.cancel()
        await asyncio.sleep(0.3)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * 1024
            await asyncio.sleep(0.01)

    async def scenario() -> tuple[Response, Response]:
        await leave_after(get(server.port, path))  # a waiting receiver leaves
        await leave_after(put(server.port, path, endless()))  # a waiting sender leaves (body never read)
        receiver = asyncio.create_task(get(server.port, path))
        await settle()
        log = await put(server.port, path, b"after")
        return log, await receiver

    log, got = run(scenario())
    assert got.body == b"after" and got.complete
    assert log.text.startswith("[INFO] Waiting for 1 receiver(s)...\n[INFO] 1 receiver(s) has/have been connected.")


def test_sender_vanishing_mid_body_cuts_every_receiver(server: Server) -> None:
    path = fresh() + "?n=2"

    async def scenario() -> list[Response]:
        receivers = [asyncio.create_task(get(server.port, path)) for _ in range(2)]
        await settle()

        async def dies() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"a" * 10_000
                await asyncio.sleep(0.01)
            raise ConnectionAbortedError("sender dies")

        try:
            await put(server.port, path, dies())
        except ConnectionAbortedError:
            pass
        return [await r for r in receivers]

    got = run(scenario())
    for response in got:
        assert response.status == 200
        assert not response.complete, "a cut transfer must never look complete"


def test_sender_vanishing_with_content_length_is_visible(server: Server) -> None:
    path = fresh()

    async def scenario() -> Response:
        receiver = asyncio.create_task(get(server.port, path))
        await settle()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode() + b"b" * 5000)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.transport.abort()
        return await receiver

    got = run(scenario())
    assert got.header("content-length") == "1000000"
    assert got is None or not got.complete and len(got.body) < 1_000_000


def test_one_receiver_leaving_never_harms_the_others(server: Server) -> None:
    path = fresh() + "?n=3"
    total = 4_000_000

    async def slow_body() -> AsyncIterator[bytes]:
        data = pattern(total, seed=9)
        for i in range(0, total, 100_000):
            yield data[i : i + 100_000]
            await asyncio.sleep(0.02)

    async def quitter() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await reader.read(200_000)
        writer.transport.abort()

    async def scenario() -> tuple[Response, list[Response]]:
        stayers = [asyncio.create_task(get(server.port, path)) for _ in range(2)]
        leaver = asyncio.create_task(quitter())
        await settle()
        log = await put(server.port, path, slow_body())
        await leaver
        return log, [await s for s in stayers]

    log, got = run(scenario())
    for response in got:
        assert response.complete and response.body == pattern(total, seed=9)
    lines = log.text.splitlines()
    assert lines.count("[INFO] A receiver aborted.") == 1
    assert lines[-1] == "[INFO] All receiver(s) was/were received successfully."


def test_all_receivers_leaving_ends_the_sender_and_frees_the_path(server: Server) -> None:
    path = fresh() + "?n=2"

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):
            yield b"e" * 50_000
            await asyncio.sleep(0.005)

    async def quitter() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await reader.read(100_000)
        writer.transport.abort()

    async def scenario() -> tuple[Response, Response]:
        quitters = [asyncio.create_task(quitter()) for _ in range(2)]
        await settle()
        log = await put(server.port, path, endless())
        await asyncio.gather(*quitters)
        free_again = path.split("?")[0]  # the path is free: a new pipe with another n may use it
        receiver = asyncio.create_task(get(server.port, free_again))
        await settle()
        await put(server.port, free_again, b"again")
        return log, await receiver

    log, again = run(scenario())
    lines = log.text.splitlines()
    assert lines.count("[INFO] A receiver aborted.") == 2
    assert lines[-1] == "[INFO] All receiver(s) was/were aborted halfway."
    assert again.body == b"again"


def test_expect_100_continue_is_answered_at_once(server: Server) -> None:
    path = fresh()

    async def scenario() -> tuple[bytes, Response]:
        receiver = asyncio.create_task(get(server.port, path))
        await settle()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode())
        await writer.drain()
        first = await asyncio.wait_for(reader.readline(), 5)  # before any body byte is sent
        writer.write(b"hello")
        await writer.drain()
        rest = await asyncio.wait_for(reader.readuntil(b"received successfully.\n"), 10)
        writer.close()
        return first + rest, await receiver

    head, got = run(scenario())
    assert head.startswith(b"HTTP/1.1 100 Continue")
    assert got.body == b"hello"


def test_http10_sender_gets_its_log_as_one_response(server: Server) -> None:
    path = fresh()

    async def scenario() -> tuple[Response, Response]:
        receiver = asyncio.create_task(get(server.port, path))
        await settle()
        log = await put(server.port, path, b"old client", version="1.0", chunked=False)
        return log, await receiver

    log, got = run(scenario())
    assert got.body == b"old client"
    assert log.header("content-length") == str(len(log.body)) and log.complete
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")


def test_curl_round_trip(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What the README promises: curl -T file and curl, bytes identical."""
    source = tmp_path / "in.bin"
    source.write_bytes(pattern(3_000_000, seed=11))
    url = f"{server.url}{fresh()}"
    receiver = subprocess.Popen(["curl", "-sS", "--fail", "-o", str(tmp_path / "out.bin"), url])
    sender = subprocess.run(["curl", "-sS", "-T", str(source), url], capture_output=True, timeout=60)
    assert receiver.wait(60) == 0
    assert sender.returncode == 0
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert b"[INFO] All receiver(s) was/were received successfully." in sender.stdout


def test_n_256_receivers_each_get_every_byte(server: Server) -> None:
    path, data = fresh() + "?n=256", pattern(200_000, seed=9)

    async def scenario() -> tuple[Response, list[Response]]:
        receivers = [asyncio.create_task(get(server.port, path)) for _ in range(200)]
        await settle()
        sender = asyncio.create_task(put(server.port, path, data))
        receivers += [asyncio.create_task(get(server.port, path)) for _ in range(56)]
        return await sender, [await r for r in receivers]

    log, got = run(scenario())
    assert "[INFO] Start sending to 256 receiver(s)!" in log.text
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")
    assert len(got) == 256 and all(r.status == 200 and r.complete and r.body == data for r in got)


def test_multipart_form_relays_the_first_part_with_its_headers(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SPEC 1.4, 16, with real curl -F: a file field then another field; n=2 receivers get the
    file's bytes, its Content-Type (text/html made text/plain) and Content-Disposition, and
    no Content-Length (the form's length would be wrong for the part)."""
    source = tmp_path / "page.html"
    source.write_bytes(pattern(700_000, seed=5))
    url = f"{server.url}{fresh()}?n=2"
    receivers = [
        subprocess.Popen(["curl", "-sS", "-D", str(tmp_path / f"h{i}"), "-o", str(tmp_path / f"o{i}"), url])
        for i in range(2)
    ]
    sender = subprocess.run(
        ["curl", "-sS", "-F", f"input_data=@{source};type=text/html", "-F", "note=second field", url],
        capture_output=True,
        timeout=60,
    )
    assert sender.returncode == 0, sender.stderr
    assert sender.stdout.endswith(b"[INFO] All receiver(s) was/were received successfully.\n")
    for i, receiver in enumerate(receivers):
        assert receiver.wait(60) == 0
        assert (tmp_path / f"o{i}").read_bytes() == source.read_bytes()
        head = (tmp_path / f"h{i}").read_text().lower()
        assert "content-type: text/plain\n" in head
        assert 'content-disposition: form-data; name="input_data"; filename="page.html"' in head
        assert "content-length" not in head and "transfer-encoding: chunked" in head


def test_a_multipart_body_without_its_boundary_cuts_the_receiver(server: Server) -> None:
    """The receiver is cut; the sender's log says why, unless the server's close (with the
    rest of the body unread) resets the connection before the client read it."""
    path = fresh()

    async def receive() -> Response | None:
        try:
            return await get(server.port, path)
        except ConnectionError:  # closed before a status line: cut, visibly
            return None

    async def scenario() -> tuple[Response | None, Response | None]:
        receiver = asyncio.create_task(receive())
        await settle()
        try:
            log: Response | None = await put(
                server.port,
                path,
                b"no boundary here\r\n" * 5000,
                headers=[("Content-Type", "multipart/form-data; boundary=XyZ")],
            )
        except ConnectionError:
            log = None
        return log, await receiver

    log, got = run(scenario())
    if log is not None and log.body:
        assert log.text.endswith(
            "[ERROR] The multipart upload is malformed: no boundary in the first 64 KiB of the body.\n"
        )
    assert got is None or not got.complete
