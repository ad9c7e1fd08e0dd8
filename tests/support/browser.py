"""One headless Chromium, driven by ``browser_driver.cjs`` over its stdin and stdout.

Chromium is Debian's ``chromium`` package (installed with apt-get by
``externals.ensure_chromium`` when missing and we are root, as in CI), driven through
Playwright's ``playwright-core`` npm package (installed once into ``tests/.playwright/``; it
never downloads a browser). The driver runs the browser and executes the JavaScript snippets
a test sends it, one at a time, answering each with one JSON line.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.support.externals import ensure_chromium, ensure_playwright_core, node
from tests.support.servers import kill_group

DRIVER = Path(__file__).resolve().parent / "browser_driver.cjs"
TIMEOUT = 30.0


class BrowserError(AssertionError):
    pass


class Browser:
    """One Chromium behind ``browser_driver.cjs``; ``run`` executes a JavaScript snippet."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._next = 1
        threading.Thread(target=self._pump, daemon=True).start()
        hello = self._answer(0, 60.0)
        self.version = hello["version"]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _answer(self, want: int, timeout: float) -> dict[str, Any]:
        try:
            message = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"no answer from the browser in {timeout} s; log:\n{self.tail()}") from None
        if message is None:
            raise BrowserError(f"the browser driver exited; log:\n{self.tail()}")
        if not message["ok"]:
            raise BrowserError(message["error"])
        assert message["id"] == want, message
        return message["value"]  # type: ignore[no-any-return]

    def run(self, code: str, timeout: float = TIMEOUT, **args: Any) -> Any:
        """Run ``code`` (an async function body of ``page, context, args, helpers``)."""
        ident, self._next = self._next, self._next + 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": ident, "code": code, "args": args}) + "\n")
        self.proc.stdin.flush()
        return self._answer(ident, timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)


def start_browser(home: Path) -> Browser:
    """Chromium with a fresh profile (``--user-data-dir``) and downloads folder under ``home``;
    the driver's log is ``home/driver.log``."""
    chromium = ensure_chromium()
    playwright = ensure_playwright_core()
    profile, downloads = home / "profile", home / "downloads"
    downloads.mkdir()
    log = home / "driver.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [node(), str(DRIVER), str(playwright), str(chromium), str(profile), str(downloads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    return Browser(proc, log)


def open_page(browser: Browser, url: str) -> None:
    status = browser.run("const r = await page.goto(args.url); return r.status();", url=url)
    assert status == 200
