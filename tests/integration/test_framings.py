"""Reader framings on a real server (SPEC 2.1, 2.2, 2.7): raw, SSE, NDJSON and WebSocket readers.

Each reader is a real client on a loopback socket: ``tests/support/pipes`` for HTTP (it reports whether
a response ended cleanly), the ``websockets`` library for WebSocket, and the SSE stream is
read back through ``EventSourceModel``, the WHATWG parser the unit tests use too. Every
ending is checked in every framing: done, aborted, cancelled (``DELETE``) and lagged (stall
eviction), and watchers join a running pipe in each framing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.support.eventsource import EventSourceModel, normalize
from tests.support.pipes import Response, get, put, read_body, read_head, request_head, run
from tests.support.readers import CHUNKS, TEXT, HttpReader, WsReader, delete_pipe, paced, wait_registered
from tests.support.servers import Server

PROXY_SAFE = {"cache-control": "no-cache, no-transform", "x-accel-buffering": "no"}


def sse_events(body: bytes) -> EventSourceModel:
    client = EventSourceModel()
    client.feed(body)
    return client


def ndjson_lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


def test_mixed_framings_on_one_pipe(server: Server) -> None:
    """raw + SSE (by Accept) + NDJSON + WebSocket binary on one n=4 pipe: each gets the bytes in its framing."""
    path = "/mixed?n=4"
    port = server.port

    async def main() -> None:
        raw = HttpReader(port, path)
        sse = HttpReader(port, path, [("Accept", "text/event-stream")])
        nd = HttpReader(port, path + "&format=ndjson")
        ws = WsReader(f"ws://127.0.0.1:{port}{path}")
        tasks = [asyncio.create_task(r.run()) for r in (raw, sse, nd, ws)]
        await asyncio.wait_for(sse.head_seen.wait(), 10)  # SSE gets its head before any producer
        await asyncio.wait_for(ws.opened.wait(), 10)
        assert raw.response is None and nd.response is None  # raw-like readers wait unanswered
        await wait_registered()
        log = await put(port, path, paced(CHUNKS), [("Content-Type", "text/plain; charset=utf-8")])
        raw_resp, sse_resp, nd_resp, ws_done = await asyncio.gather(*tasks)

        assert log.text.splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
        assert {k: log.header(k) for k in PROXY_SAFE} == PROXY_SAFE

        assert raw_resp.complete and raw_resp.body == TEXT.encode()
        assert raw_resp.header("content-type") == "text/plain; charset=utf-8"
        assert {k: raw_resp.header(k) for k in PROXY_SAFE} == PROXY_SAFE

        assert sse_resp.complete and sse_resp.header("content-type") == "text/event-stream"
        assert {k: sse_resp.header(k) for k in PROXY_SAFE} == PROXY_SAFE
        assert sse_resp.header("access-control-allow-origin") == "*"
        assert sse_resp.header("content-encoding") is None
        events = sse_events(sse_resp.body)
        assert events.retry == 1000
        assert events.text() == normalize(TEXT)
        ids = [e.last_event_id for e in events.events]
        epoch = ids[0].split("-")[0]
        assert epoch and all(i.startswith(epoch + "-") for i in ids)
        (done,) = events.named("done")
        assert json.loads(done.data) == {"ending": "done", "offset": len(TEXT.encode())}
        assert events.events[-1] is done

        assert nd_resp.complete and nd_resp.header("content-type") == "application/x-ndjson"
        assert {k: nd_resp.header(k) for k in PROXY_SAFE} == PROXY_SAFE
        lines = ndjson_lines(nd_resp.body)
        assert "".join(line.get("data", "") for line in lines) == TEXT  # exact, CRLF kept
        assert lines[-1] == {"end": "done", "offset": len(TEXT.encode())}

        assert b"".join(m for m in ws_done.messages if isinstance(m, bytes)) == TEXT.encode()
        assert ws_done.code == 1000

    run(main())


def test_websocket_lines_and_text(server: Server) -> None:
    path = "/ws-lines?n=2"

    async def main() -> None:
        lines = WsReader(f"ws://127.0.0.1:{server.port}{path}&format=lines")
        text = WsReader(f"ws://127.0.0.1:{server.port}{path}&format=text")
        tasks = [asyncio.create_task(r.run()) for r in (lines, text)]
        await asyncio.wait_for(asyncio.gather(lines.opened.wait(), text.opened.wait()), 10)
        await wait_registered()
        await put(server.port, path, paced(CHUNKS), [("Content-Type", "text/plain")])
        await asyncio.gather(*tasks)
        assert lines.messages == ["Hello, wörld ✓", "line two", "three", "end"]
        assert all(isinstance(m, str) for m in text.messages)
        assert "".join(str(m) for m in text.messages) == TEXT
        assert len(text.messages) >= 4  # token by token, not one message at the end
        assert lines.code == text.code == 1000

    run(main())


def test_sse_head_and_pings_while_waiting(server_factory: Callable[..., Server]) -> None:
    """SPEC 2.7: the SSE head at once, then ``: ping`` comments while nothing else is sent."""
    server = server_factory("--workers", "2", "--heartbeat", "0.5")
    path = "/pings?format=sse"

    async def main() -> None:
        sse = HttpReader(server.port, path)
        task = asyncio.create_task(sse.run())
        await asyncio.wait_for(sse.head_seen.wait(), 10)
        assert sse.response is not None and sse.response.status == 200
        await asyncio.sleep(2.0)
        waiting = b"".join(sse.chunks)
        assert waiting.startswith(b"retry: 1000\n\n")
        assert waiting.count(b": ping\n\n") >= 2
        await put(server.port, path, b"hi", [("Content-Type", "text/plain")])
        resp = await task
        assert sse_events(resp.body).text() == "hi"

    run(main())


def test_binary_producer_is_base64_in_text_framings(server: Server) -> None:
    data = bytes(range(256)) * 3
    path = "/binary?n=3"

    async def main() -> None:
        import base64

        sse = HttpReader(server.port, path + "&format=sse")
        nd = HttpReader(server.port, path + "&format=ndjson")
        forced = HttpReader(server.port, path + "&format=sse&encoding=base64")
        tasks = [asyncio.create_task(r.run()) for r in (sse, nd, forced)]
        await asyncio.wait_for(sse.head_seen.wait(), 10)
        await wait_registered()
        await put(server.port, path, data, [("Content-Type", "application/octet-stream")])
        sse_resp, nd_resp, forced_resp = await asyncio.gather(*tasks)
        for resp in (sse_resp, forced_resp):
            events = sse_events(resp.body)
            assert b"".join(base64.b64decode(e.data) for e in events.named("base64")) == data
            assert events.named("done")
        assert b"".join(base64.b64decode(x["base64"]) for x in ndjson_lines(nd_resp.body) if "base64" in x) == data

    run(main())


def test_event_stream_producer_passes_through_and_done_openai(server: Server) -> None:
    produced = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
    path = "/passthrough?n=2"

    async def main() -> None:
        plain = HttpReader(server.port, path + "&format=sse")
        openai = HttpReader(server.port, "/openai?format=sse&done=openai")
        task = asyncio.create_task(plain.run())
        task2 = asyncio.create_task(openai.run())
        raw = asyncio.create_task(HttpReader(server.port, path).run())
        await asyncio.wait_for(plain.head_seen.wait(), 10)
        await asyncio.wait_for(openai.head_seen.wait(), 10)
        await wait_registered()
        await put(server.port, path, produced, [("Content-Type", "text/event-stream")])
        await put(server.port, "/openai", b"tok", [("Content-Type", "text/plain")])
        resp, resp2, raw_resp = await asyncio.gather(task, task2, raw)
        events = sse_events(resp.body)
        epoch = events.events[0].last_event_id.rsplit("-", 1)[0]
        # Passed through as it is, but for an id at each event's end (SPEC 2.1: resumable).
        with_ids = produced.replace(b"}\n\n", b"}\nid: %s-48\n\n" % epoch.encode()).replace(
            b"[DONE]\n\n", b"[DONE]\nid: %s-62\n\n" % epoch.encode()
        )
        assert resp.body.startswith(b"retry: 1000\n\n" + with_ids)
        assert [e.data for e in events.named("message")] == ['{"choices":[{"delta":{"content":"Hi"}}]}', "[DONE]"]
        assert events.named("done")
        assert raw_resp.body == produced
        events2 = sse_events(resp2.body)
        assert [e.type for e in events2.events] == ["message", "done", "message"]
        assert events2.events[-1].data == "[DONE]"

    run(main())


def test_aborted_ending_in_every_framing(server: Server) -> None:
    """The producer vanishes mid-body: raw is cut; SSE, NDJSON and WebSocket say "aborted"."""
    path = "/aborted?n=4"

    async def vanish() -> None:
        raise ConnectionAbortedError("the producer vanishes")

    async def main() -> None:
        raw = HttpReader(server.port, path)
        sse = HttpReader(server.port, path + "&format=sse")
        nd = HttpReader(server.port, path + "&format=ndjson")
        ws = WsReader(f"ws://127.0.0.1:{server.port}{path}")
        tasks = [asyncio.create_task(r.run()) for r in (raw, sse, nd, ws)]
        await asyncio.wait_for(sse.head_seen.wait(), 10)
        await asyncio.wait_for(ws.opened.wait(), 10)
        await wait_registered()
        body = paced([b"partial ", b"output"], then=vanish)
        log = await put(server.port, path, body, [("Content-Type", "text/plain")])
        assert not log.complete
        raw_resp, sse_resp, nd_resp, ws_done = await asyncio.gather(*tasks)
        assert not raw_resp.complete
        assert raw_resp.body == b"partial output"
        events = sse_events(sse_resp.body)
        assert events.text() == "partial output"
        assert events.events[-1].type == "error"
        assert json.loads(events.events[-1].data)["ending"] == "aborted"
        assert not events.named("done")
        lines = ndjson_lines(nd_resp.body)
        assert lines[-1]["end"] == "aborted"
        assert ws_done.code == 4001

    run(main())


def test_unknown_format_is_rejected(server: Server) -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_head("GET", "/x?format=xml", server.port, [], "1.1"))
        await writer.drain()
        status, head = await read_head(reader)
        resp = await read_body(reader, Response(status, head))
        writer.close()
        assert status == 400
        assert resp.body == b"[ERROR] Unknown format 'xml': use raw, sse or ndjson.\n"
        assert resp.header("access-control-allow-origin") == "*"

    run(main())


def test_websocket_rejections(server: Server) -> None:
    """Every refusal is an HTTP answer before the handshake, the owner's too: never a 101
    and a close (SPEC 2.4)."""

    async def refused(url: str) -> tuple[int, bytes]:
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as refusal:
            async with ws_connect(url):
                pass
        return refusal.value.response.status_code, refusal.value.response.body or b""

    async def main() -> None:
        base = f"ws://127.0.0.1:{server.port}"
        assert await refused(f"{base}/wsr?n=0") == (400, b"[ERROR] n should > 0, but n = 0.\n")
        assert await refused(f"{base}/help") == (400, b"[ERROR] Cannot receive from the reserved path '/help'.\n")
        first = WsReader(f"{base}/wsr?n=2")
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(first.opened.wait(), 10)
        assert await refused(f"{base}/wsr?n=3") == (400, b"[ERROR] The number of receivers should be 2 but 3.\n")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


async def _refusal(port: int, target: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """An SSE reader's answer, which must be a plain HTTP refusal (the piping error form)."""
    reader = HttpReader(port, target, headers or [("Accept", "text/event-stream")])
    resp = await asyncio.wait_for(reader.run(), 10)
    assert resp.header("content-type") == "text/plain", (target, resp.status, resp.body)
    assert resp.complete and resp.body.startswith(b"[ERROR] ") and b"event:" not in resp.body
    assert resp.header("access-control-allow-origin") == "*"
    return resp


async def _pipe_state(port: int, path: str) -> str | None:
    """``Ringpipe-State`` of ``path`` (HEAD, SPEC 2.6); None while it is free."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head("HEAD", path, port, [("Connection", "close")], "1.1"))
        await writer.drain()
        _, head = await read_head(reader)
        return dict(head).get("ringpipe-state")
    finally:
        writer.close()


async def _ws_refusal(port: int, target: str) -> tuple[int, bytes]:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refusal:
        async with ws_connect(f"ws://127.0.0.1:{port}{target}"):
            pass
    return refusal.value.response.status_code, refusal.value.response.body or b""


def test_refusals_come_before_the_head(server_factory: Callable[..., Server]) -> None:
    """SPEC 2.4: an SSE or WebSocket reader the pipe refuses (established, ``?n`` mismatch,
    over ``n``, a limit, nothing to watch) gets the plain HTTP status and ``[ERROR]`` body
    (EventSource stops on a 4xx, it retries a 200 forever); an admitted reader that waits
    still gets its head (and pings) before any producer."""
    server = server_factory("--workers", "2", "--max-watchers", "1", "--heartbeat", "0.5")
    port = server.port

    async def main() -> None:
        # Waiting pipe: an admitted SSE receiver, SSE watcher and WebSocket get their heads at once.
        admitted = HttpReader(port, "/wait?n=2&format=sse")
        watcher = HttpReader(port, "/wait?watch=1&format=sse")
        ws_admitted = WsReader(f"ws://127.0.0.1:{port}/wait?n=2")
        tasks = [asyncio.create_task(admitted.run())]
        await asyncio.wait_for(admitted.head_seen.wait(), 10)  # the pipe waits: now there is something to watch
        tasks += [asyncio.create_task(r.run()) for r in (watcher, ws_admitted)]
        await asyncio.wait_for(asyncio.gather(watcher.head_seen.wait(), ws_admitted.opened.wait()), 10)
        for sse in (admitted, watcher):
            assert sse.response is not None and sse.response.status == 200
            assert sse.response.header("content-type") == "text/event-stream"
        await asyncio.sleep(1.5)
        assert b"".join(admitted.chunks).startswith(b"retry: 1000\n\n")
        assert b": ping\n\n" in b"".join(admitted.chunks)

        mismatch = await _refusal(port, "/wait?n=3&format=sse")
        assert (mismatch.status, mismatch.text) == (400, "[ERROR] The number of receivers should be 2 but 3.\n")
        full = await _refusal(port, "/wait?n=2&format=sse")  # two receivers wait already
        assert (full.status, full.text) == (400, "[ERROR] The number of receivers has reached limits.\n")
        assert await _ws_refusal(port, "/wait?n=2") == (400, b"[ERROR] The number of receivers has reached limits.\n")
        too_many = await _refusal(port, "/wait?watch=1&format=sse")
        assert (too_many.status, too_many.text) == (503, "[ERROR] '/wait' has its limit of watchers.\n")
        assert (await _ws_refusal(port, "/wait?watch=1"))[0] == 503
        nothing = await _refusal(port, "/nothing-here?watch=1&format=sse")
        assert (nothing.status, nothing.text) == (404, "[ERROR] Nothing to watch on '/nothing-here'.\n")
        assert (await _ws_refusal(port, "/nothing-here?watch=1"))[0] == 404

        # Established pipe: a late reader in any framing is refused with 400, before any head.
        log = await put(port, "/wait?n=2", paced([b"one ", b"two"], pause=0.5), [("Content-Type", "text/plain")])
        assert log.complete
        for resp in await asyncio.gather(*tasks[:2]):
            assert sse_events(resp.body).text() == "one two"
        assert b"".join(m for m in (await tasks[2]).messages if isinstance(m, bytes)) == b"one two"

        running = asyncio.create_task(
            put(port, "/est", paced([b"x"] * 40, pause=0.1), [("Content-Type", "text/plain")])
        )
        receiver = asyncio.create_task(HttpReader(port, "/est").run())
        while await _pipe_state(port, "/est") != "established":
            await asyncio.sleep(0.05)
        established = "[ERROR] Connection on '/est' has been established already.\n"
        for target, headers in [("/est?format=sse", None), ("/est", [("Accept", "text/event-stream")])]:
            late = await _refusal(port, target, headers)
            assert (late.status, late.text) == (400, established)
        assert await _ws_refusal(port, "/est") == (400, established.encode())
        await asyncio.gather(running, receiver)

    run(main())


def test_an_admitted_reader_that_times_out_gets_an_ending(server_factory: Callable[..., Server]) -> None:
    """SPEC 2.4/2.8: after its head, a waiting reader that waits too long gets an ending
    that says why (SSE ``event: error``, WebSocket close 4001), never ``event: rejected``."""
    server = server_factory("--workers", "2", "--wait-timeout", "1")

    async def main() -> None:
        sse = HttpReader(server.port, "/too-long?n=2&format=sse")
        ws = WsReader(f"ws://127.0.0.1:{server.port}/too-long?n=2")
        resp, ws_done = await asyncio.gather(sse.run(), ws.run())
        assert resp.status == 200 and resp.complete
        events = sse_events(resp.body)
        assert [e.type for e in events.events] == ["error"]
        ending = json.loads(events.events[0].data)
        assert ending == {"ending": "aborted", "offset": 0, "reason": "Nobody else came to '/too-long' within 1 s."}
        assert (ws_done.code, ws_done.reason) == (4001, "Nobody else came to '/too-long' within 1 s.")

    run(main())


# -- endings that need the lifecycle branch (SPEC 2.3, 2.5) --


def test_cancelled_ending_in_every_framing(server: Server) -> None:
    path = "/cancelled?n=4"

    async def main() -> None:
        hold = asyncio.Event()

        async def wait_for_cancel() -> None:
            await hold.wait()

        raw = HttpReader(server.port, path)
        sse = HttpReader(server.port, path + "&format=sse")
        nd = HttpReader(server.port, path + "&format=ndjson")
        ws = WsReader(f"ws://127.0.0.1:{server.port}{path}")
        tasks = [asyncio.create_task(r.run()) for r in (raw, sse, nd, ws)]
        await asyncio.wait_for(sse.head_seen.wait(), 10)
        await wait_registered()
        sender = asyncio.create_task(put(server.port, path, paced([b"some"], then=wait_for_cancel)))
        await asyncio.sleep(1.0)
        try:
            assert await delete_pipe(server.port, "/cancelled") == 204
            raw_resp, sse_resp, nd_resp, ws_done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            hold.set()
            sender.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(sender, *tasks, return_exceptions=True)
        assert not raw_resp.complete
        assert sse_events(sse_resp.body).events[-1].type == "cancelled"
        assert ndjson_lines(nd_resp.body)[-1]["end"] == "cancelled"
        assert ws_done.code == 4002

    run(main())


@pytest.mark.parametrize("framing", ["raw", "sse", "ndjson", "websocket"])
def test_lagged_ending_for_a_stalled_reader(server_factory: Callable[..., Server], framing: str) -> None:
    """A reader that stalls past ``?stall_timeout=1`` is evicted with the lagged ending; the
    other reader gets every byte."""
    server = server_factory("--workers", "2", "--ring-bytes", "65536")
    path = "/lagged?n=2&stall_timeout=1"
    data = b"x" * (48 << 20)  # far more than the socket buffers of a stalled reader hold

    async def main() -> None:
        healthy = HttpReader(server.port, path)
        healthy_task = asyncio.create_task(healthy.run())
        stalled_query = {"raw": "", "sse": "&format=sse", "ndjson": "&format=ndjson", "websocket": ""}[framing]
        if framing == "websocket":
            async with ws_connect(f"ws://127.0.0.1:{server.port}{path}", compression=None, max_queue=1) as ws:
                sender = asyncio.create_task(put(server.port, path, data))
                await asyncio.sleep(4)  # stall: read nothing
                try:
                    while True:
                        await ws.recv()
                except ConnectionClosed:
                    pass
                assert ws.close_code == 4003
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 16)
            writer.write(request_head("GET", path + stalled_query, server.port, [], "1.1"))
            await writer.drain()
            await asyncio.sleep(0.5)
            sender = asyncio.create_task(put(server.port, path, data))
            await asyncio.sleep(4)  # stall: read nothing
            status, head = await read_head(reader)
            resp = await read_body(reader, Response(status, head))
            writer.close()
            if framing == "raw":
                assert not resp.complete
            elif framing == "sse":
                assert sse_events(resp.body).events[-1].type == "lagged"
            else:
                assert ndjson_lines(resp.body)[-1]["end"] == "lagged"
        await sender
        healthy_resp = await healthy_task
        assert healthy_resp.complete and healthy_resp.body == data

    run(main(), timeout=40)


def test_multipart_upload_framed_from_its_first_part(server: Server) -> None:
    """A form upload (SPEC 1.4, 16): framed readers get the first part's bytes, typed by the
    part's Content-Type, with offsets that do not count the ring's header block."""
    boundary = "rpBoundary42"
    part = "tökens from a form\r\n"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="input_text"\r\n'
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{part}\r\n--{boundary}--\r\n"
    ).encode()
    path = "/form?n=3"

    async def main() -> None:
        sse = HttpReader(server.port, path + "&format=sse")
        nd = HttpReader(server.port, path + "&format=ndjson")
        ws = WsReader(f"ws://127.0.0.1:{server.port}{path}&format=text")
        tasks = [asyncio.create_task(r.run()) for r in (sse, nd, ws)]
        await asyncio.wait_for(sse.head_seen.wait(), 10)
        await asyncio.wait_for(ws.opened.wait(), 10)
        await wait_registered()
        content_type = f"multipart/form-data; boundary={boundary}"
        await put(server.port, path, body, [("Content-Type", content_type)], method="POST")
        sse_resp, nd_resp, ws_done = await asyncio.gather(*tasks)
        size = len(part.encode())
        events = sse_events(sse_resp.body)
        assert events.text() == normalize(part)
        assert json.loads(events.named("done")[0].data) == {"ending": "done", "offset": size}
        lines = ndjson_lines(nd_resp.body)
        assert "".join(x.get("data", "") for x in lines) == part
        assert lines[-1] == {"end": "done", "offset": size}
        assert "".join(str(m) for m in ws_done.messages) == part and ws_done.code == 1000

    run(main())


def test_websocket_reader_is_pinged_while_waiting(server_factory: Callable[..., Server]) -> None:
    """SPEC 2.7: a WebSocket reader gets a ping frame every heartbeat, even before the producer;
    its query string (where read keys and signatures go) reaches no log line."""
    server = server_factory("--workers", "2", "--heartbeat", "0.5")

    async def main() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]
        writer.write(request_head("GET", "/pinged?sig=s3cr3t-in-query", server.port, headers, "1.1"))
        await writer.drain()
        status, head = await read_head(reader)
        assert status == 101
        assert dict(head)["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        first, length = await asyncio.wait_for(reader.readexactly(2), 5)
        assert first == 0x89  # FIN + ping
        await reader.readexactly(length & 0x7F)
        writer.close()

    run(main())
    assert not [line for line in server.raw_lines if "s3cr3t" in line]  # no query string in any log


def test_watchers_in_every_framing_join_a_running_pipe(server: Server) -> None:
    """SPEC 2.4: ``?watch=1`` in any framing joins an established pipe without a slot and starts
    at the oldest byte still held (here: the first, the text is far smaller than the window)."""
    path = "/watched"

    async def main() -> None:
        hold = asyncio.Event()

        async def until_watched() -> None:
            await hold.wait()

        receiver = HttpReader(server.port, path)
        receiving = asyncio.create_task(receiver.run())
        await wait_registered()
        sender = asyncio.create_task(put(server.port, path, paced(CHUNKS[:3], then=until_watched)))
        await asyncio.wait_for(receiver.head_seen.wait(), 10)
        sse = HttpReader(server.port, path + "?watch=1&format=sse")
        nd = HttpReader(server.port, path + "?watch=1&format=ndjson")
        ws = WsReader(f"ws://127.0.0.1:{server.port}{path}?watch=1&format=text")
        watchers = [asyncio.create_task(r.run()) for r in (sse, nd, ws)]
        try:
            await asyncio.wait_for(sse.head_seen.wait(), 10)
            await asyncio.sleep(0.5)
            hold.set()
            log = await asyncio.wait_for(sender, 20)
            sse_resp, nd_resp, ws_done = await asyncio.wait_for(asyncio.gather(*watchers), 20)
            await receiving
        finally:
            hold.set()
            for task in [sender, receiving, *watchers]:
                task.cancel()
            await asyncio.gather(sender, receiving, *watchers, return_exceptions=True)
        text = b"".join(CHUNKS[:3]).decode("utf-8", "replace")
        assert log.text.splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
        assert sse_events(sse_resp.body).text() == text
        assert "".join(x.get("data", "") for x in ndjson_lines(nd_resp.body)) == text
        assert "".join(str(m) for m in ws_done.messages) == text and ws_done.code == 1000

    run(main())


# -- SSE / NDJSON granularity (SPEC 2.1, issue 13 item 1) --


def test_issue_example_json_lines_read_by_curl_as_three_sse_events(server: Server) -> None:
    """The issue's reproduction with curl on both sides: a JSON-lines producer whose third
    line comes in two pieces gives three events, ``JSON.parse``-able, ids at each line's end."""
    url = f"{server.url}/{uuid.uuid4().hex}"
    reader = subprocess.Popen(["curl", "-sN", "--max-time", "30", url + "?format=sse"], stdout=subprocess.PIPE)
    time.sleep(0.5)
    producer = (
        "(printf '{\"a\":1}\\n{\"b\":2}\\n'; sleep 0.3; printf '{\"c\":'; sleep 0.3; printf '3}\\n')"
        f" | curl -sS -T - -H 'Content-Type: application/x-ndjson' {url} >/dev/null"
    )
    subprocess.run(["bash", "-c", producer], check=True, timeout=30)
    out, _ = reader.communicate(timeout=30)
    events = sse_events(out).events
    epoch = events[0].last_event_id.rsplit("-", 1)[0]
    assert [(e.type, e.data, e.last_event_id) for e in events[:3]] == [
        ("message", '{"a":1}', f"{epoch}-8"),
        ("message", '{"b":2}', f"{epoch}-16"),
        ("message", '{"c":3}', f"{epoch}-24"),
    ]
    assert [json.loads(e.data) for e in events[:3]] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert [e.type for e in events[3:]] == ["done"]


def test_granularity_is_chosen_per_reader(server: Server) -> None:
    """``?sse=`` and ``?ndjson=`` override the default by Content-Type, each reader its own,
    on one pipe; each granularity keeps its rule (chunks: appending rebuilds the text; lines:
    the records are the producer's lines)."""
    path = "/granularity?n=4"
    lines_text = "first line\n\nsecond {line}\r\nthird"
    chunks = [b"first ", b"line\n\nsec", b"ond {line}\r\nthi", b"rd"]

    async def main() -> list[Response]:
        readers = [
            HttpReader(server.port, path + "&format=sse&sse=lines"),
            HttpReader(server.port, path + "&format=sse"),
            HttpReader(server.port, path + "&format=ndjson&ndjson=lines"),
            HttpReader(server.port, path + "&format=ndjson&ndjson=chunks&sse=lines"),
        ]
        tasks = [asyncio.create_task(r.run()) for r in readers]
        await wait_registered()
        log = await put(server.port, path, paced(chunks, 0.1), [("Content-Type", "text/plain; charset=utf-8")])
        assert log.text.splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
        return list(await asyncio.wait_for(asyncio.gather(*tasks), 20))

    sse_lines, sse_chunks, nd_lines, nd_chunks = run(main())
    events = sse_events(sse_lines.body).events
    assert [e.data for e in events if e.type == "message"] == ["first line", "second {line}", "third"]
    assert [e.last_event_id.rsplit("-", 1)[1] for e in events if e.type == "message"] == ["11", "27", "32"]
    chunk_events = sse_events(sse_chunks.body)
    assert chunk_events.text() == normalize(lines_text)
    assert len(chunk_events.named("message")) == len(chunks)  # one event per chunk: live tokens
    records = ndjson_lines(nd_lines.body)
    assert [(r["data"], r["offset"]) for r in records[:-1]] == [
        ("first line", 11),
        ("", 12),
        ("second {line}", 27),
        ("third", 32),
    ]
    assert records[-1] == {"end": "done", "offset": 32}
    assert "".join(r.get("data", "") for r in ndjson_lines(nd_chunks.body)) == lines_text


def test_an_unknown_granularity_is_refused_like_other_parameters(server: Server) -> None:
    async def main() -> list[Response]:
        return [
            await get(server.port, "/g?format=sse&sse=words"),
            await get(server.port, "/g?format=ndjson&ndjson=records"),
        ]

    sse, nd = run(main())
    assert sse.status == 400 and sse.body == b"[ERROR] Unknown sse granularity 'words': use lines or chunks.\n"
    assert nd.status == 400 and nd.body == b"[ERROR] Unknown ndjson granularity 'records': use lines or chunks.\n"


# -- a waiting reader hit by DELETE (SPEC 2.4, issue 13 item 3) --


def test_a_waiting_reader_that_is_cancelled_gets_the_cancelled_ending(server: Server) -> None:
    """No producer yet: DELETE ends every waiting reader with the cancelled ending of its
    framing, never a refusal; a raw reader (no head yet, no ending but a cut) gets 410."""
    path = "/waiting-cancelled?n=4"

    async def main() -> tuple[Response, Response, Response, WsReader]:
        raw = HttpReader(server.port, path)
        sse = HttpReader(server.port, path + "&format=sse")
        nd = HttpReader(server.port, path + "&format=ndjson")
        ws = WsReader(f"ws://127.0.0.1:{server.port}{path}")
        tasks = [asyncio.create_task(r.run()) for r in (raw, sse, nd, ws)]
        try:
            await asyncio.wait_for(sse.head_seen.wait(), 10)
            await asyncio.wait_for(ws.opened.wait(), 10)
            await wait_registered()
            assert await delete_pipe(server.port, "/waiting-cancelled") == 204
            raw_resp, sse_resp, nd_resp, ws_done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return raw_resp, sse_resp, nd_resp, ws_done

    raw, sse, nd, ws = run(main())
    assert raw.status == 410 and raw.text == "[ERROR] The transfer on '/waiting-cancelled' was cancelled.\n"
    events = sse_events(sse.body).events
    assert sse.status == 200 and sse.complete
    assert [e.type for e in events] == ["cancelled"] and json.loads(events[0].data)["ending"] == "cancelled"
    assert b"rejected" not in sse.body
    assert nd.status == 200 and nd.complete
    assert nd.header("content-type") == "application/x-ndjson"
    assert [r["end"] for r in ndjson_lines(nd.body)] == ["cancelled"]
    assert ws.code == 4002
