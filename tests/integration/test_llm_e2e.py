"""LLM tokens end to end with real clients: ``examples/fake_llm.py | curl -T -``, read at the
same time by curl, by curl piped into jq (Debian's ``jq``, installed with apt when missing), by
curl's NDJSON framing into jq, and by a Python ``websockets`` client — all on one n=4 pipe.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.support.eventsource import EventSourceModel
from tests.support.externals import ensure_jq
from tests.support.pipes import read_head
from tests.support.servers import ROOT, Server

FAKE_LLM = ROOT / "examples" / "fake_llm.py"
TIMEOUT = 60
JQ_TOKENS = 'select(startswith("data: {")) | .[6:] | fromjson | .choices[0].delta.content // empty'


def fake_llm(*args: str) -> bytes:
    return subprocess.run([sys.executable, str(FAKE_LLM), *args], capture_output=True, check=True).stdout


def shell(command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", "-c", "set -o pipefail; " + command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[bytes]) -> bytes:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, (proc.returncode, err.decode(errors="replace"))
    return out


class WebSocketLines(threading.Thread):
    """A Python ``websockets`` client on ``?format=lines``, in its own thread and loop."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.lines: list[str] = []
        self.code: int | None = None
        self.opened = threading.Event()

    def run(self) -> None:
        asyncio.run(asyncio.wait_for(self._read(), TIMEOUT))

    async def _read(self) -> None:
        async with ws_connect(self.url) as ws:
            self.opened.set()
            try:
                while True:
                    message = await ws.recv()
                    assert isinstance(message, str)
                    self.lines.append(message)
            except ConnectionClosed:
                self.code = ws.close_code


def test_fake_llm_through_curl_read_by_curl_jq_and_websockets(server: Server) -> None:
    jq = shlex.quote(str(ensure_jq()))
    url = f"{server.url}/run-42/tokens?n=4"
    args = ("--created", "1700000000")
    expected = fake_llm("--rate", "0", *args)
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in expected.decode().splitlines()
        if line.startswith("data: {")
    )
    curl = "curl -sS -N --fail --max-time 60"

    raw = shell(f"{curl} {shlex.quote(url)}")
    tokens = shell(f"{curl} {shlex.quote(url)} | {jq} --unbuffered -Rrj {shlex.quote(JQ_TOKENS)}")
    ndjson = shell(f"{curl} {shlex.quote(url + '&format=ndjson')} | {jq} --unbuffered -j '.data // empty'")
    ws = WebSocketLines(url.replace("http://", "ws://") + "&format=lines")
    ws.start()
    assert ws.opened.wait(TIMEOUT)
    time.sleep(1.0)  # let the curl readers register (they get no answer before the producer)

    producer = shell(
        f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_LLM))} --rate 200 {' '.join(args)}"
        f" | {curl} -T - -H 'Content-Type: text/event-stream' {shlex.quote(url)}"
    )
    log = finish(producer).decode()
    assert log.splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."

    assert finish(raw) == expected
    assert finish(tokens).decode() == text
    assert finish(ndjson) == expected
    ws.join(TIMEOUT)
    assert ws.lines == expected.decode().split("\n")[:-1]
    assert ws.code == 1000


def test_fake_llm_is_deterministic_and_ends_like_openai() -> None:
    out = fake_llm("--rate", "0", "--created", "5", "--text", "Hi there")
    events = out.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e[6:]) for e in events[:-2]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hi", " there", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["object"] == "chat.completion.chunk" and c["created"] == 5 for c in chunks)
    assert fake_llm("--rate", "0", "--created", "5", "--text", "Hi there") == out
    nd = fake_llm("--rate", "0", "--created", "5", "--text", "Hi", "--format", "ndjson")
    assert [json.loads(line)["choices"][0]["delta"].get("content") for line in nd.splitlines()] == ["", "Hi", None]


def test_examples_readme_shows_the_two_curls() -> None:
    readme = (ROOT / "examples" / "README.md").read_text()
    assert "python examples/fake_llm.py | curl" in readme
    assert Path(FAKE_LLM).exists()


async def _event_source_attempt(
    port: int, path: str, last_id: str, keep: int | None, body: bytearray | None = None
) -> EventSourceModel:
    """One EventSource connection: ``Last-Event-ID`` as a browser sends it on a reconnect;
    read until ``keep`` events are dispatched (then the network drops: an abrupt close) or
    until the stream ends. The bytes of the stream are appended to ``body`` if given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    model = EventSourceModel()
    body = bytearray() if body is None else body
    try:
        headers = ["Accept: text/event-stream", *([f"Last-Event-ID: {last_id}"] if last_id else [])]
        writer.write(("\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n").encode())
        status, _ = await read_head(reader)
        assert status == 200
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                return model
            chunk = await reader.readexactly(size)
            body += chunk
            model.feed(chunk)
            await reader.readexactly(2)
            if keep is not None and len(model.events) >= keep:
                return model
    finally:
        writer.transport.abort()


def test_an_event_stream_producer_keeps_resume_event_by_event(server: Server) -> None:
    """Issue 13 item 5: ``fake_llm.py | curl -T - -H 'Content-Type: text/event-stream'`` is
    passed through with an id on every event; an EventSource that loses its connection three
    times and reconnects with ``Last-Event-ID`` ends with every event of the producer exactly
    once, in order, then ``event: done``."""
    path = f"/{uuid.uuid4().hex}"
    args = ("--created", "1700000000")
    expected = [block[len("data: ") :] for block in fake_llm("--rate", "0", *args).decode().split("\n\n") if block]
    producer = shell(
        f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_LLM))} --rate 40 {' '.join(args)}"
        f" | curl -sS --fail --max-time 60 -T - -H 'Content-Type: text/event-stream' {server.url}{path}"
    )

    async def reconnecting() -> tuple[list[str], list[str], list[str]]:
        seen: list[str] = []
        ids: list[str] = []
        endings: list[str] = []
        last_id = ""
        for keep in (3, 4, 5, None):
            model = await _event_source_attempt(server.port, path, last_id, keep)
            for event in model.events:
                if event.type == "message":
                    seen.append(event.data)
                    ids.append(event.last_event_id)
                else:
                    endings.append(event.type)
            last_id = model.events[-1].last_event_id if model.events else last_id
            await asyncio.sleep(0.1)
        return seen, ids, endings

    seen, ids, endings = asyncio.run(asyncio.wait_for(reconnecting(), TIMEOUT))
    log = finish(producer).decode()
    assert seen == expected
    assert endings == ["done"]
    offsets = [int(i.rsplit("-", 1)[1]) for i in ids]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert "aborted" not in log


def test_an_event_stream_reader_that_starts_inside_an_event_skips_to_the_next_one(server: Server) -> None:
    """A resume by ``?offset=`` (not an id we issued) may fall inside a producer's event: the
    reader starts at the next event, never with half of one (SPEC 2.1)."""
    path = f"/{uuid.uuid4().hex}"
    args = ("--created", "1700000000")
    expected = [block[len("data: ") :] for block in fake_llm("--rate", "0", *args).decode().split("\n\n") if block]
    producer = shell(
        f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_LLM))} --rate 40 {' '.join(args)}"
        f" | curl -sS --fail --max-time 60 -T - -H 'Content-Type: text/event-stream' {server.url}{path}"
    )

    body = bytearray()

    async def drop_then_offset() -> tuple[EventSourceModel, EventSourceModel]:
        first = await _event_source_attempt(server.port, path, "", 5)
        inside = int(first.events[3].last_event_id.rsplit("-", 1)[1]) - 10  # inside the 4th event
        again = await _event_source_attempt(server.port, f"{path}?offset={inside}", "", None, body)
        return first, again

    first, again = asyncio.run(asyncio.wait_for(drop_then_offset(), TIMEOUT))
    finish(producer)
    assert [e.data for e in first.events[:5]] == expected[:5]
    assert bytes(body).startswith(b"retry: 1000\n\ndata: " + expected[4].encode() + b"\nid: ")
    assert [e.data for e in again.events if e.type == "message"] == expected[4:]
    assert again.events[-1].type == "done"
