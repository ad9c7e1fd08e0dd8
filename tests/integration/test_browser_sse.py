"""A real browser reading a pipe with ``EventSource`` (SPEC 2.1, 2.4): headless Chromium, real curl.

The browser and the server are the conftest's ``browser`` and ``site``, as in
``test_browser.py`` (Debian's Chromium through ``playwright-core``). The producer is
``curl -T -`` fed by a small paced writer, so bytes reach the server while the page watches:

- ``EventSource`` on ``?format=sse`` shows tokens *live*: the page holds part of the text
  while the producer is still running, and exactly the producer's text at the end;
- a page reloaded mid-stream resumes from its last event id and ends with the producer's
  text, nothing lost or doubled, for a text producer and for an OpenAI-style
  ``text/event-stream`` one (whose events get ringpipe's ids);
- an ``EventSource`` that comes with an id of the path's previous pipe gets ``event: gap``
  and the new stream on its first connection, instead of a refusal it would retry forever;
- the ``/`` page's "Watch" view renders a stream and names its ending (done, aborted).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.browser import Browser, open_page
from tests.support.servers import Server, kill_group

TOKENS = ["Streaming ", "tökens ", "live", ",\r\n", "one ", "by ", "one", "\n", "✓ ", "end."]
TEXT = "".join(TOKENS).replace("\r\n", "\n")
WRITER = (
    "import sys, time\n"
    "pause = float(sys.argv[1])\n"
    "for token in sys.argv[2:]:\n"
    "    sys.stdout.buffer.write(token.encode()); sys.stdout.flush(); time.sleep(pause)\n"
)


def producer(url: str, pause: float, tokens: list[str] = TOKENS) -> subprocess.Popen[bytes]:
    """``python -c WRITER | curl -T -``: tokens reach the server ``pause`` seconds apart."""
    writer = " ".join(shlex.quote(a) for a in [sys.executable, "-c", WRITER, str(pause), *tokens])
    curl = f"curl -sS --fail --max-time 60 -T - -H 'Content-Type: text/plain; charset=utf-8' {shlex.quote(url)}"
    return subprocess.Popen(
        ["bash", "-c", f"set -o pipefail; {writer} | {curl}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        kill_group(proc, wait=10)
    proc.communicate(timeout=10)


def fresh_path() -> str:
    return "sse-" + uuid.uuid4().hex[:12]


# The page-side reader: every event is recorded with its type, data and id.
LISTEN = """
window.rp = { text: "", events: [], ending: null, lastId: "" };
const source = new EventSource(args.url);
window.rpSource = source;
source.onmessage = (e) => { rp.text += e.data; rp.lastId = e.lastEventId; rp.events.push(["message", e.data]); };
for (const name of ["done", "error", "cancelled", "lagged", "gap"]) {
  source.addEventListener(name, (e) => {
    if (name === "error" && !e.data) return;  // a connection error, not an ending
    rp.events.push([name, e.data]);
    if (name !== "gap") { rp.ending = name; source.close(); }
  });
}
"""


def in_page(code: str) -> str:
    """Node-side code that runs ``code`` in the page, with the test's ``args``."""
    return "await page.evaluate((args) => {" + code + "}, args);"


def test_eventsource_shows_tokens_live(browser: Browser, site: Server) -> None:
    path = fresh_path()
    open_page(browser, site.url + "/version")
    browser.run(in_page(LISTEN), url=f"{site.url}/{path}?format=sse")
    time.sleep(0.5)
    sender = producer(f"{site.url}/{path}", pause=0.4)
    try:
        partial = browser.run(
            "await page.waitForFunction(() => rp.text.length > 0); return await page.evaluate(() => rp.text);"
        )
        assert sender.poll() is None, "the producer had already finished: nothing was shown live"
        assert TEXT.startswith(partial) and partial != TEXT
        state = browser.run(
            "await page.waitForFunction(() => rp.ending !== null); return await page.evaluate(() => rp);"
        )
        out, err = sender.communicate(timeout=60)
        assert sender.returncode == 0, err
    finally:
        stop(sender)
    assert state["text"] == TEXT
    assert state["ending"] == "done"
    assert [e[0] for e in state["events"]][-1] == "done"
    assert len([e for e in state["events"] if e[0] == "message"]) >= 5  # token by token


def reload_mid_stream(
    browser: Browser,
    site: Server,
    url: str,
    resume: str,
    start_sender: Callable[[], subprocess.Popen[bytes]],
    reload_when: str,
    timeout_ms: int,
) -> dict[str, Any]:
    """Run ``resume`` (a page script that keeps its state in ``sessionStorage`` and sets
    ``rp.ending``) on ``url``, start the sender, reload the page once ``reload_when`` holds, run
    ``resume`` again, and return ``rp`` once an ending came; the sender must exit 0."""
    open_page(browser, site.url + "/version")
    browser.run(in_page("sessionStorage.clear();"))
    browser.run(in_page(resume), url=url)
    time.sleep(0.5)
    sender = start_sender()
    try:
        browser.run(f"await page.waitForFunction(() => {reload_when});")
        browser.run("await page.reload();")
        browser.run(in_page(resume), url=url)
        state: dict[str, Any] = browser.run(
            f"await page.waitForFunction(() => rp.ending !== null, null, {{timeout: {timeout_ms}}});"
            " return await page.evaluate(() => rp);"
        )
        assert sender.wait(30) == 0
    finally:
        stop(sender)
        browser.run(in_page("sessionStorage.clear();"))
    return state


def test_reload_mid_stream_resumes_exactly(browser: Browser, site: Server) -> None:
    """The page keeps its text and last event id in sessionStorage; after a reload it reconnects
    with ``?last_event_id=`` and ends with the producer's text, nothing lost or doubled."""
    path = fresh_path()
    url = f"{site.url}/{path}?format=sse"
    resume = """
    const saved = JSON.parse(sessionStorage.getItem("rp") || '{"text": "", "lastId": ""}');
    window.rp = { text: saved.text, ending: null };
    const target = saved.lastId ? args.url + "&last_event_id=" + encodeURIComponent(saved.lastId) : args.url;
    const source = new EventSource(target);
    source.onmessage = (e) => {
      rp.text += e.data;
      sessionStorage.setItem("rp", JSON.stringify({ text: rp.text, lastId: e.lastEventId }));
    };
    for (const name of ["done", "error", "cancelled", "lagged"]) {
      source.addEventListener(name, (e) => {
        if (name === "error" && !e.data) return;
        rp.ending = name; source.close();
      });
    }
    """
    state = reload_mid_stream(
        browser, site, url, resume, lambda: producer(f"{site.url}/{path}", pause=0.5), "rp.text.length > 0", 20000
    )
    assert state["ending"] == "done"
    assert state["text"] == TEXT


def watch_a_fresh_path(browser: Browser, site: Server) -> str:
    """Open ``/``, start its Watch view on a fresh path, and wait until it says it waits."""
    path = fresh_path()
    open_page(browser, site.url + "/")
    browser.run(
        """
        await page.fill('#watch-path', args.path);
        await page.click('#watch-button');
        await page.locator('#watch-status').filter({ hasText: 'Waiting for a sender' }).waitFor();
        """,
        path=path,
    )
    return path


def test_index_watch_view_renders_a_live_stream(browser: Browser, site: Server) -> None:
    path = watch_a_fresh_path(browser, site)
    sender = producer(f"{site.url}/{path}", pause=0.4)
    try:
        shown = browser.run(
            """
            await page.locator('#watch-status').filter({ hasText: 'Streaming' }).waitFor();
            return await page.locator('#watch-output').textContent();
            """
        )
        assert sender.poll() is None and TEXT.startswith(shown)
        state = browser.run(
            """
            await page.locator('#watch-status').filter({ hasText: /^Done/ }).waitFor();
            return { text: await page.locator('#watch-output').textContent(),
                     button: await page.locator('#watch-button').isEnabled() };
            """
        )
        assert sender.wait(60) == 0
    finally:
        stop(sender)
    assert state == {"text": TEXT, "button": True}


def test_index_watch_view_names_an_aborted_stream(browser: Browser, site: Server) -> None:
    path = watch_a_fresh_path(browser, site)
    sender = producer(f"{site.url}/{path}", pause=5.0, tokens=["partial ", "never sent"])
    try:
        browser.run("await page.locator('#watch-status').filter({ hasText: 'Streaming' }).waitFor();")
    finally:
        stop(sender)  # the producer vanishes mid-body
    state = browser.run(
        """
        await page.locator('#watch-status').filter({ hasText: /^Aborted/ }).waitFor();
        return await page.locator('#watch-output').textContent();
        """
    )
    assert state == "partial "


FAKE_LLM = Path(__file__).resolve().parents[2] / "examples" / "fake_llm.py"


def llm_producer(url: str, rate: float) -> subprocess.Popen[bytes]:
    """``examples/fake_llm.py | curl -T -`` as an OpenAI-style ``text/event-stream`` producer."""
    llm = " ".join(shlex.quote(a) for a in [sys.executable, str(FAKE_LLM), "--rate", str(rate), "--created", "1"])
    curl = f"curl -sS --fail --max-time 60 -T - -H 'Content-Type: text/event-stream' {shlex.quote(url)}"
    return subprocess.Popen(
        ["bash", "-c", f"set -o pipefail; {llm} | {curl}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_reload_resumes_an_event_stream_producer_exactly(browser: Browser, site: Server) -> None:
    """Issue 13 item 5 in a real browser: an OpenAI-style ``text/event-stream`` producer is
    passed through with ringpipe's ids, so a page reloaded mid-stream resumes with its last
    event id at the next event: the deltas put together are the model's whole text, once."""
    path = fresh_path()
    url = f"{site.url}/{path}?format=sse"
    resume = """
    const saved = JSON.parse(sessionStorage.getItem("rp") || '{"text": "", "lastId": "", "events": 0}');
    window.rp = { text: saved.text, events: saved.events, ending: null };
    const target = saved.lastId ? args.url + "&last_event_id=" + encodeURIComponent(saved.lastId) : args.url;
    const source = new EventSource(target);
    source.onmessage = (e) => {
      if (e.data !== "[DONE]") rp.text += JSON.parse(e.data).choices[0].delta.content || "";
      rp.events += 1;
      sessionStorage.setItem("rp", JSON.stringify({ text: rp.text, lastId: e.lastEventId, events: rp.events }));
    };
    for (const name of ["done", "error", "cancelled", "lagged", "gap"]) {
      source.addEventListener(name, (e) => {
        if (name === "error" && !e.data) return;
        rp.ending = name; source.close();
      });
    }
    """
    expected = subprocess.run(
        [sys.executable, str(FAKE_LLM), "--rate", "0", "--created", "1"], capture_output=True, check=True
    ).stdout.decode()
    chunks = [json.loads(b[6:]) for b in expected.split("\n\n") if b.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    state = reload_mid_stream(
        browser, site, url, resume, lambda: llm_producer(f"{site.url}/{path}", rate=8), "rp.events >= 3", 30000
    )
    assert state["ending"] == "done"
    assert state["text"] == text
    assert state["events"] == len(chunks) + 1  # every chunk and [DONE], none twice


def test_eventsource_with_an_older_pipes_id_streams_instead_of_looping(browser: Browser, site: Server) -> None:
    """Issue 13 item 2 in a real browser: an EventSource that comes with the id of the path's
    previous pipe gets ``event: gap`` and the new stream on its first connection (it used to
    get ``event: rejected`` and reconnect every second, forever)."""
    path = fresh_path()
    old = subprocess.run(
        [
            "bash",
            "-c",
            f"curl -sN --max-time 20 '{site.url}/{path}?format=sse' & sleep 0.5;"
            f" echo old | curl -sS -T - {site.url}/{path} >/dev/null; wait",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    old_id = next(line[4:] for line in old.splitlines() if line.startswith("id: "))
    listen = """
    window.rp = { text: "", events: [], opened: 0, ending: null };
    const source = new EventSource(args.url + "&last_event_id=" + encodeURIComponent(args.id));
    source.onopen = () => { rp.opened += 1; };
    source.onmessage = (e) => { rp.text += e.data; };
    for (const name of ["done", "error", "cancelled", "lagged", "gap", "rejected"]) {
      source.addEventListener(name, (e) => {
        if (name === "error" && !e.data) return;
        rp.events.push([name, e.data]);
        if (name !== "gap") { rp.ending = name; source.close(); }
      });
    }
    """
    open_page(browser, site.url + "/version")
    browser.run(in_page(listen), url=f"{site.url}/{path}?format=sse", id=old_id)
    time.sleep(0.5)
    sender = producer(f"{site.url}/{path}", pause=0.2)
    try:
        state = browser.run(
            "await page.waitForFunction(() => rp.ending !== null, null, {timeout: 30000});"
            " return await page.evaluate(() => rp);"
        )
        assert sender.wait(30) == 0
    finally:
        stop(sender)
    assert state["events"][0] == ["gap", '{"from":0,"to":0}']
    assert state["ending"] == "done" and state["opened"] == 1
    assert state["text"] == TEXT
