"""A browser's ``EventSource`` on a signed URL (SPEC Part 4), cross-origin, in headless Chromium.

``EventSource`` cannot send an ``Authorization`` header: a signed URL is how a page reads a
protected pipe. The page is served by this test from its own http origin (another port, so
every request to ringpipe is a CORS request), and ringpipe runs with ``--signing-key`` and
``--cors-origins`` naming exactly that origin. A producer (curl, with a signed send URL)
uploads SSE-formatted text as ``text/event-stream``, which ringpipe passes through to a raw
receiver; the page receives the events. After ``rp_exp`` the same URL is refused: the
``EventSource`` fails for good, a ``fetch`` from the page sees the 401, and curl gets
``401 [ERROR] Signature expired.``
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ringpipe.core.signing import signed_query
from tests.support.browser import Browser
from tests.support.servers import Server, start_server, stop_and_check

KEY = "browser-signing-key-81f0"
PAGE = b"<!doctype html><meta charset=utf-8><title>signed EventSource</title><p>ringpipe EventSource test</p>\n"
#: What the producer uploads: SSE as a server would write it, with a long retry so the
#: browser does not reconnect on its own during the test.
EVENTS = b"retry: 600000\ndata: first event\n\nevent: token\ndata: second\n\nevent: done\ndata: bye\n\n"
TTL = 12


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_origin() -> Iterator[str]:
    """An http origin of our own (127.0.0.1 on another port) serving one small page."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


@pytest.fixture
def relay(page_origin: str) -> Iterator[Server]:
    server = start_server("--workers", "2", "--signing-key", KEY, "--cors-origins", page_origin)
    yield server
    problems = stop_and_check(server)
    assert not problems, problems


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("curl")
    assert exe is not None, "curl is needed (apt-get install -y curl)"
    return subprocess.run([exe, "-sS", "--max-time", "30", *args], capture_output=True, timeout=60)


def test_event_source_on_a_signed_url(browser: Browser, relay: Server, page_origin: str, tmp_path: Path) -> None:
    status = browser.run("const r = await page.goto(args.url); return r.status();", url=page_origin + "/")
    assert status == 200

    path = f"/signed-{uuid.uuid4().hex[:12]}"
    exp = int(time.time()) + TTL
    recv_url = f"{relay.url}{path}?{signed_query(KEY.encode(), path, ['recv'], exp)}"
    send_url = f"{relay.url}{path}?{signed_query(KEY.encode(), path, ['send'], exp)}"

    # The page opens the stream first (a receiver waiting), then the producer uploads.
    browser.run(
        """
        await page.evaluate((url) => {
          window.got = []; window.errors = 0; window.done = false;
          const es = new EventSource(url);
          window.es = es;
          es.onmessage = (e) => window.got.push('message:' + e.data);
          es.addEventListener('token', (e) => window.got.push('token:' + e.data));
          es.addEventListener('done', (e) => { window.got.push('done:' + e.data); window.done = true; es.close(); });
          es.onerror = () => { window.errors += 1; };
        }, args.url);
        """,
        url=recv_url,
    )
    events = tmp_path / "events.txt"
    events.write_bytes(EVENTS)
    sender = curl("--fail", "-H", "Content-Type: text/event-stream", "--data-binary", f"@{events}", send_url)
    assert sender.returncode == 0, sender.stderr
    assert sender.stdout.decode().splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
    got = browser.run(
        """
        await page.waitForFunction(() => window.done, null, { timeout: 20000 });
        return await page.evaluate(() => ({ got: window.got, errors: window.errors }));
        """
    )
    assert got == {"got": ["message:first event", "token:second", "done:bye"], "errors": 0}

    # After rp_exp the same URL is refused, to the page and to curl.
    while time.time() <= exp + 1:
        time.sleep(0.2)
    refused = browser.run(
        """
        return await page.evaluate(async (url) => {
          const failed = await new Promise((resolve) => {
            const es = new EventSource(url);
            es.onmessage = () => resolve('a message');
            es.onerror = () => { const state = es.readyState; es.close(); resolve(state); };
          });
          const answer = await fetch(url);
          return { eventSourceState: failed, status: answer.status, body: await answer.text() };
        }, args.url);
        """,
        url=recv_url,
    )
    # readyState 2 (CLOSED): a 401 fails the EventSource for good, it does not retry.
    assert refused == {"eventSourceState": 2, "status": 401, "body": "[ERROR] Signature expired.\n"}
    direct = curl("-o", "-", "-w", "\n%{http_code}", recv_url)
    body, _, code = direct.stdout.decode().rpartition("\n")
    assert (code, body) == ("401", "[ERROR] Signature expired.\n")
