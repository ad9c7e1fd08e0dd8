"""A real browser on the reserved pages (SPEC 1.4, 17): headless Chromium, real curl.

Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``; installed with apt-get by
``tests/support/externals.py`` when missing and we are root, as in CI), driven through
Playwright's ``playwright-core`` npm package (installed once into ``tests/.playwright/``; it
never downloads a browser). ``tests/support/browser_driver.cjs`` runs the browser and
executes the JavaScript snippets these tests send it, one at a time; curl runs as a real
subprocess.

Scenarios: ``/`` sends a text and a file that curl receives; curl sends and ``/`` receives
(shown live in the page, and downloaded); ``/noscript`` posts a text and a file with its
multipart form and curl receives exactly what was typed or chosen.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.browser import TIMEOUT, Browser, open_page
from tests.support.servers import Server


@dataclass
class Curl:
    """A curl subprocess; ``finish`` returns its output once it exits."""

    proc: subprocess.Popen[bytes]
    headers: Path

    def finish(self, timeout: float = TIMEOUT) -> tuple[bytes, dict[str, str]]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, (self.proc.returncode, err.decode(errors="replace"))
        head: dict[str, str] = {}
        for line in self.headers.read_text("latin-1").splitlines()[1:]:
            name, sep, value = line.partition(":")
            if sep:
                head[name.strip().lower()] = value.strip()
        return out, head


def curl(*args: str, tmp: Path) -> Curl:
    exe = shutil.which("curl")
    assert exe is not None, "curl is needed (apt-get install -y curl)"
    headers = tmp / f"headers-{uuid.uuid4().hex}"
    cmd = [exe, "-sS", "--fail", "--max-time", str(int(TIMEOUT)), "-D", str(headers), *args]
    return Curl(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE), headers)


def fresh_path() -> str:
    return "browser-" + uuid.uuid4().hex[:12]


# A text with non-ASCII characters, spaces at the ends and an empty line: sent as it is.
TEXT = "  héllo ringpipe ✓\n\nsecond line \t end  "


def test_index_sends_text_to_curl(browser: Browser, site: Server, tmp_path: Path) -> None:
    path = fresh_path()
    open_page(browser, site.url + "/")
    browser.run(
        """
        await page.check('#kind-text');
        await page.fill('#send-text', args.text);
        await page.fill('#send-path', args.path);
        await page.click('#send-button');
        await page.locator('#send-status').filter({ hasText: /^(Sending|Uploaded)/ }).waitFor();
        """,
        text=TEXT,
        path=path,
    )
    body, head = curl(f"{site.url}/{path}", tmp=tmp_path).finish()
    assert body == TEXT.encode()
    assert head["content-type"].lower() == "text/plain; charset=utf-8"  # Chrome writes UTF-8 in capitals
    assert head["content-length"] == str(len(TEXT.encode()))
    state = browser.run(
        """
        await page.locator('#send-status').filter({ hasText: /^Sent\\.$/ }).waitFor();
        return { progress: await page.locator('#send-progress').evaluate(e => e.value),
                 log: await page.locator('#send-log').textContent() };
        """
    )
    assert state["progress"] == 100
    assert state["log"].splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."


def test_index_sends_file_to_curl(browser: Browser, site: Server, tmp_path: Path) -> None:
    path = fresh_path()
    data = os.urandom(3 << 20)
    open_page(browser, site.url + "/")
    browser.run(
        """
        await page.check('#kind-file');
        const buffer = Buffer.from(args.b64, 'base64');
        const file = { name: 'résumé "final".bin', mimeType: 'application/x-ringpipe-test', buffer };
        await page.setInputFiles('#send-file', file);
        await page.fill('#send-path', args.path);
        await page.click('#send-button');
        await page.locator('#send-status').filter({ hasText: /^(Sending|Uploaded)/ }).waitFor();
        """,
        b64=_b64(data),
        path=path,
    )
    body, head = curl(f"{site.url}/{path}", tmp=tmp_path).finish()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert head["content-type"] == "application/x-ringpipe-test"
    assert head["content-length"] == str(len(data))
    assert head["content-disposition"] == (
        "attachment; filename=\"r_sum_ _final_.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.bin"
    )
    progress = browser.run(
        """
        await page.locator('#send-status').filter({ hasText: /^Sent\\.$/ }).waitFor();
        return await page.locator('#send-progress').evaluate(e => e.value);
        """
    )
    assert progress == 100


def test_index_receives_text_from_curl(browser: Browser, site: Server, tmp_path: Path) -> None:
    path = fresh_path()
    open_page(browser, site.url + "/")
    browser.run(
        """
        await page.fill('#recv-path', args.path);
        await page.click('#recv-button');
        await page.locator('#recv-status').filter({ hasText: 'Waiting for a sender' }).waitFor();
        """,
        path=path,
    )
    source = tmp_path / "text.txt"
    source.write_bytes(TEXT.encode())
    content_type = "Content-Type: text/plain; charset=utf-8"
    sender = curl("-T", str(source), "-H", content_type, f"{site.url}/{path}", tmp=tmp_path)
    log, _ = sender.finish()
    assert log.decode().splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
    shown = browser.run(
        """
        await page.locator('#recv-status').filter({ hasText: /^Received / }).waitFor();
        return await page.locator('#recv-output').textContent();
        """
    )
    assert shown == TEXT


def test_index_downloads_file_from_curl(browser: Browser, site: Server, tmp_path: Path) -> None:
    """The page's Download link fetches the path itself; its Save link keeps what "Show here" got."""
    data = os.urandom(2 << 20)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    open_page(browser, site.url + "/")

    # 1. Download: the browser downloads the pipe directly, named by the sender's Content-Disposition.
    path = fresh_path()
    browser.run("await page.fill('#recv-path', args.path);", path=path)
    disposition = 'Content-Disposition: attachment; filename="data.bin"'
    sender = curl("-T", str(source), "-H", disposition, f"{site.url}/{path}", tmp=tmp_path)
    saved = browser.run(
        """
        const [download] = await Promise.all([page.waitForEvent('download'), page.click('#recv-download')]);
        return await helpers.download(download, 'direct.bin');
        """
    )
    sender.finish()
    assert saved["failure"] is None and saved["suggested"] == "data.bin"
    assert Path(saved["path"]).read_bytes() == data

    # 2. Show here, then Save: the bytes the page received, as the page holds them.
    path = fresh_path()
    browser.run(
        """
        await page.fill('#recv-path', args.path);
        await page.click('#recv-button');
        await page.locator('#recv-status').filter({ hasText: 'Waiting for a sender' }).waitFor();
        """,
        path=path,
    )
    sender = curl("-T", str(source), "-H", "Content-Type: application/octet-stream", f"{site.url}/{path}", tmp=tmp_path)
    saved = browser.run(
        """
        await page.locator('#recv-status').filter({ hasText: /^Received / }).waitFor();
        const [download] = await Promise.all([page.waitForEvent('download'), page.click('#recv-save')]);
        return await helpers.download(download, 'saved.bin');
        """
    )
    sender.finish()
    assert saved["failure"] is None and saved["suggested"] == path
    assert Path(saved["path"]).read_bytes() == data


@pytest.mark.parametrize("mode", ["text", "file"])
def test_noscript_form_sends_to_curl(browser: Browser, site: Server, tmp_path: Path, mode: str) -> None:
    path = fresh_path()
    # A form submits a textarea's line breaks as CRLF (HTML's form encoding), whatever was typed.
    expected = TEXT.replace("\n", "\r\n").encode() if mode == "text" else os.urandom(300_000)
    csp_violations = browser.run(
        """
        const violations = [];
        page.on('console', m => { if (/Content Security Policy/.test(m.text())) violations.push(m.text()); });
        await page.goto(args.url);
        await page.fill('#path', args.path);
        await page.check(`input[name=mode][value=${args.mode}]`);
        await Promise.all([page.waitForURL(u => u.search.includes('path=')), page.click('text=Apply')]);
        if (args.mode === 'text') {
          await page.fill('#input_text', args.text);
        } else {
          await page.setInputFiles('#input_file',
            { name: 'upload.bin', mimeType: 'application/octet-stream', buffer: Buffer.from(args.b64, 'base64') });
        }
        await page.click('button:has-text("Send")', { noWaitAfter: true });
        return violations;
        """,
        url=site.url + "/noscript",
        path=path,
        mode=mode,
        text=TEXT,
        b64=_b64(expected) if mode == "file" else "",
    )
    assert csp_violations == []
    body, head = curl(f"{site.url}/{path}", tmp=tmp_path).finish()
    assert body == expected
    if mode == "file":
        assert head["content-type"] == "application/octet-stream"
        assert head["content-disposition"] == 'form-data; name="input_file"; filename="upload.bin"'
    else:
        assert "content-type" not in head
        assert head["content-disposition"] == 'form-data; name="input_text"'
    assert head.get("content-length", str(len(expected))) == str(len(expected))
    log = browser.run(
        """
        await page.waitForFunction(() => document.body && /All receiver/.test(document.body.innerText));
        return await page.evaluate(() => document.body.innerText);
        """
    )
    assert log.splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
