"""SPEC 2.4 resume against a real server: receivers that drop and come back, over real sockets.

A resumable receiver (``?resume=1``, or any reader that came with an offset) keeps its slot
for ``reconnect_grace`` seconds after it drops; it continues with ``?offset=N``,
``Last-Event-ID: <epoch>-<offset>`` or ``Range: bytes=N-`` and must get exactly the
producer's bytes, no loss, no duplicate. An offset no longer held, or of another pipe
(wrong epoch), is answered 410 to a raw reader; an SSE or NDJSON reader is never refused for
it: it gets the gap (the lost range), then the stream from the oldest byte held, then its
ending (so a browser's EventSource does not reconnect in a loop).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable

from tests.support.eventsource import EventSourceModel
from tests.support.pipes import Response, fresh, get, pattern, put, read_head, run
from tests.support.readers import Attempt
from tests.support.servers import Server, ServerFactory


async def paced(data: bytes, chunk: int, every: float) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]
        await asyncio.sleep(every)


async def head(port: int, path: str) -> dict[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status, headers = await read_head(reader)
        return {"status": str(status), **dict(headers)}
    finally:
        writer.close()


def test_several_drops_and_resumes_get_exactly_the_producers_bytes(server: Server) -> None:
    """Eight drop/resume cycles, alternating ?offset=, Last-Event-ID and Range: the bytes
    put together equal the upload, and the sender's log never hears of an abort."""
    data = pattern(600_000, seed=11)
    rng = random.Random(5)

    async def scenario() -> tuple[Response, bytes, list[Attempt]]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, paced(data, 3000, 0.01)))
        got = bytearray()
        attempts: list[Attempt] = []
        epoch = ""
        for cycle in range(9):
            headers: list[tuple[str, str]] = []
            target = path + "?resume=1"
            if cycle > 0:
                way = cycle % 3
                if way == 0:
                    target = f"{path}?offset={len(got)}"
                elif way == 1:
                    headers = [("Last-Event-ID", f"{epoch}-{len(got)}")]
                else:
                    headers = [("Range", f"bytes={len(got)}-")]
            attempt = Attempt(server.port, target, headers)
            attempts.append(attempt)
            await attempt.run(None if cycle == 8 else rng.randint(1, 60_000))
            got += attempt.body
            if cycle == 0:
                epoch = (await head(server.port, path)).get("ringpipe-epoch", "")
            await asyncio.sleep(rng.uniform(0, 0.3))
        return await sender, bytes(got), attempts

    log, got, attempts = run(scenario())
    assert [a.status for a in attempts] == [200, 200, 206, 200, 200, 206, 200, 200, 206]
    assert attempts[-1].complete and not any(a.complete for a in attempts[:-1])
    offsets = [int(a.head["ringpipe-offset"]) for a in attempts[1:]]
    assert offsets == sorted(offsets) and offsets[0] > 0
    assert attempts[2].head["content-range"].startswith(f"bytes {offsets[1]}-")
    assert len(got) == len(data) and got == data
    assert "aborted" not in log.text
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")


def test_raw_readers_get_410_for_offsets_not_held_and_wrong_epochs(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--ring-bytes", "65536", "--replay-bytes", "16384")
    data = pattern(2_000_000, seed=3)

    async def scenario() -> tuple[list[Attempt], Response]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, paced(data, 16384, 0.005)))
        first = Attempt(server.port, path + "?resume=1", [])
        await first.run(10)
        await asyncio.sleep(0.5)
        out = [
            Attempt(server.port, path + "?offset=0", []),
            Attempt(server.port, path, [("Last-Event-ID", "wrongepoch-10")]),
            Attempt(server.port, fresh() + "?offset=5", []),
        ]
        for attempt in out:
            await attempt.run(None)
        sender.cancel()
        free = await get(server.port, fresh() + "?last_event_id=abc-1")
        return out, free

    refused, free = run(scenario())
    assert [a.status for a in refused] == [410, 410, 410]
    assert free.status == 410 and free.text.startswith("[ERROR] ")


def test_a_drain_does_not_wait_out_a_dropped_readers_grace(server_factory: ServerFactory) -> None:
    """SIGTERM while a resumable reader is in its reconnect grace: a draining server would
    refuse its return (503), so the grace ends at once, as an abort the sender hears, and the
    server exits long before the grace would have run out."""
    server = server_factory("--workers", "2", "--reconnect-grace", "120")

    async def scenario() -> tuple[Response, float]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, paced(pattern(4_000_000), 4000, 0.01)))
        await Attempt(server.port, path + "?resume=1", []).run(20_000)
        await asyncio.sleep(0.5)  # the drop is seen; the slot is reserved
        stopped = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        log = await sender
        return log, time.monotonic() - stopped

    log, took = run(scenario())
    assert log.text.endswith("[INFO] A receiver aborted.\n[INFO] All receiver(s) was/were aborted halfway.\n")
    assert server.proc.wait(60) == 0
    assert took < 60, f"the sender waited {took:.1f} s for a reader that could not come back"


def test_grace_expires_into_a_plain_abort(server_factory: ServerFactory) -> None:
    """A resumable receiver that does not come back is aborted when its grace ends; a plain
    receiver is aborted at once, as in piping-server."""
    server = server_factory("--workers", "2", "--reconnect-grace", "6")

    async def scenario(resumable: bool) -> tuple[Response, float]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, paced(pattern(400_000), 2000, 0.01)))
        attempt = Attempt(server.port, path + ("?resume=1" if resumable else ""), [])
        await attempt.run(5000)
        dropped = time.monotonic()
        log = await sender
        return log, time.monotonic() - dropped

    log, took = run(scenario(True))
    assert log.text.endswith("[INFO] All receiver(s) was/were aborted halfway.\n")
    assert 5.0 < took < 30  # the slot was held for the grace
    log, took = run(scenario(False))
    assert log.text.endswith("[INFO] All receiver(s) was/were aborted halfway.\n")
    assert took < 4  # at once (generous: the machine is noisy)


def test_a_reloaded_page_takes_the_stream_back_from_the_oldest_byte(server: Server) -> None:
    """n=1 survives a reload: the dropped reader's slot is kept, and a new resumable reader
    without an offset (a reloaded page) takes it, from the oldest byte still held."""
    data = pattern(120_000, seed=4)

    async def scenario() -> tuple[Response, Attempt, Attempt]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, paced(data, 2000, 0.01)))
        first = Attempt(server.port, path + "?resume=1", [])
        await first.run(10_000)
        await asyncio.sleep(0.2)
        again = Attempt(server.port, path + "?resume=1", [])
        await again.run(None)
        return await sender, first, again

    log, first, again = run(scenario())
    assert first.status == 200 and again.status == 200
    assert again.complete and bytes(again.body) == data
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")


def text_lines(count: int) -> bytes:
    return b"".join(b"line %06d of the stream\n" % i for i in range(count))


def sse_of(body: bytes) -> EventSourceModel:
    model = EventSourceModel()
    model.feed(body)
    return model


def test_issue_example_an_older_pipes_id_gets_a_gap_then_the_stream(server: Server) -> None:
    """Issue 13 item 2, with curl as in the issue: a reader that comes back with an id of the
    path's previous pipe gets ``event: gap`` and the new pipe from its oldest byte, then done
    (it used to get ``event: rejected`` 410 and an EventSource reconnected every second)."""
    url = f"{server.url}/{uuid.uuid4().hex}"
    first = subprocess.Popen(["curl", "-sN", "--max-time", "30", url + "?format=sse"], stdout=subprocess.PIPE)
    time.sleep(0.5)
    subprocess.run(["bash", "-c", f"echo old | curl -sS -T - {url} >/dev/null"], check=True, timeout=30)
    old = sse_of(first.communicate(timeout=30)[0]).events[0].last_event_id
    assert old.endswith("-4")
    producer = subprocess.Popen(
        ["bash", "-c", f'(for i in $(seq 15); do echo "token $i"; sleep 0.2; done) | curl -sS -T - {url}'],
        stdout=subprocess.PIPE,
    )
    subprocess.run(["curl", "-sN", "-m", "1", "-o", "/dev/null", url + "?format=sse"], check=False, timeout=30)
    again = subprocess.run(
        ["curl", "-sN", "--max-time", "30", "-H", f"Last-Event-ID: {old}", url + "?format=sse"],
        capture_output=True,
        check=True,
        timeout=40,
    )
    log = producer.communicate(timeout=30)[0].decode()
    events = sse_of(again.stdout).events
    assert events[0].type == "gap", again.stdout
    assert json.loads(events[0].data) == {"from": 0, "to": 0}
    new_epoch = events[0].last_event_id.rsplit("-", 1)[0]
    assert new_epoch and new_epoch != old.rsplit("-", 1)[0]
    assert "".join(e.data for e in events if e.type == "message") == "".join(f"token {i}\n" for i in range(1, 16))
    assert events[-1].type == "done" and b"rejected" not in again.stdout
    assert log.endswith("[INFO] All receiver(s) was/were received successfully.\n")


def test_framed_readers_resuming_out_of_the_window_get_a_gap_then_the_oldest_bytes(
    server_factory: ServerFactory,
) -> None:
    """An SSE and an NDJSON reader each drop, and come back at an offset the ring no longer
    holds (and an NDJSON one with a foreign event id): each gets the lost range, then exactly
    the producer's bytes from the oldest one held, then done; the producer's log never hears
    of an abort."""
    server = server_factory("--workers", "2", "--ring-bytes", "65536", "--replay-bytes", "16384")
    data = text_lines(40_000)  # 1 MB of text

    async def one(framing: str, comeback: Callable[[str], list[tuple[str, str]]]) -> tuple[Response, bytes]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, paced(data, 8192, 0.002), [("Content-Type", "text/plain")]))
        first = Attempt(server.port, f"{path}?format={framing}", [])
        await first.run(300_000)  # far past the replay window
        epoch = (await head(server.port, path))["ringpipe-epoch"]
        await asyncio.sleep(0.2)
        again = Attempt(server.port, f"{path}?format={framing}", comeback(epoch))
        await again.run(None)
        assert again.status == 200 and again.complete
        return await sender, bytes(again.body)

    async def scenario() -> list[tuple[Response, bytes]]:
        return list(
            await asyncio.gather(
                one("sse", lambda epoch: [("Last-Event-ID", f"{epoch}-1000")]),
                one("ndjson", lambda epoch: [("Last-Event-ID", f"{epoch}-1000")]),
                one("ndjson", lambda epoch: [("Last-Event-ID", "chatcmpl-fake.7")]),
                one("sse", lambda epoch: [("Range", "bytes=20-")]),
            )
        )

    (sse_log, sse_body), (nd_log, nd_body), (foreign_log, foreign_body), (range_log, range_body) = run(scenario())
    for log in (sse_log, nd_log, foreign_log, range_log):
        assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n"), log.text
    events = sse_of(sse_body).events
    assert events[0].type == "gap"
    lost = json.loads(events[0].data)
    assert lost["from"] == 1000 and lost["to"] > 16384
    assert events[0].last_event_id.endswith(f"-{lost['to']}")
    assert "".join(e.data for e in events if e.type == "message") == data[lost["to"] :].decode()
    assert events[-1].type == "done"
    records = [json.loads(line) for line in nd_body.splitlines()]
    assert records[0]["gap"]["from"] == 1000 and records[0]["gap"]["to"] > 16384
    assert "".join(r.get("data", "") for r in records) == data[records[0]["gap"]["to"] :].decode()
    assert records[-1]["end"] == "done"
    foreign = [json.loads(line) for line in foreign_body.splitlines()]
    assert foreign[0]["gap"]["from"] == 0 and foreign[0]["gap"]["to"] > 16384  # an id that names no offset
    assert "".join(r.get("data", "") for r in foreign) == data[foreign[0]["gap"]["to"] :].decode()
    ranged = sse_of(range_body).events
    assert json.loads(ranged[0].data)["from"] == 20 and ranged[-1].type == "done"


def test_a_range_at_the_end_of_a_known_length_is_416(server_factory: ServerFactory) -> None:
    """``Range: bytes=N-`` where N is the upload's whole Content-Length: nothing is left, so
    416 with ``Content-Range: bytes */N`` (not a 206 with an impossible range); the reader
    holds the whole body, so the sender hears of success.

    The upload is larger than what the kernel's socket buffers take (up to 4 MiB on the
    server's side), so that the dropped reader had not been sent all of it, and smaller
    than the ring, which then holds all of it for that reader's slot."""
    server = server_factory("--workers", "2", "--ring-bytes", str(16 << 20), "--reconnect-grace", "60")
    data = pattern(10 << 20, seed=8)

    async def scenario() -> tuple[Response, Attempt]:
        path = fresh()
        sender = asyncio.create_task(put(server.port, path, data))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path}?resume=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, head_lines = await read_head(reader)
        assert status == 200 and dict(head_lines)["content-length"] == str(len(data))
        await reader.readexactly(1000)
        writer.transport.abort()  # dropped with most of the body unread: its slot is held
        for _ in range(200):  # the whole upload is in the ring, held for the dropped reader
            if (await head(server.port, path)).get("ringpipe-offset") == str(len(data)):
                break
            await asyncio.sleep(0.05)
        at_end = Attempt(server.port, path, [("Range", f"bytes={len(data)}-")])
        await at_end.run(None)
        return await sender, at_end

    log, at_end = run(scenario())
    assert at_end.status == 416
    assert at_end.head["content-range"] == f"bytes */{len(data)}"
    assert at_end.head["content-type"] == "text/plain"
    assert log.text.endswith("[INFO] All receiver(s) was/were received successfully.\n")
