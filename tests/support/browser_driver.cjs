// Drives one headless Chromium for the Python browser tests (tests/integration/test_browser.py).
//
//   node browser_driver.cjs PLAYWRIGHT_CORE_DIR CHROMIUM USER_DATA_DIR DOWNLOADS_DIR
//
// Reads one JSON command per line on stdin, {"id": 1, "code": "...", "args": {...}}, runs
// `code` as the body of an async function of (page, context, args), and answers one JSON
// line on stdout: {"id": 1, "ok": true, "value": ...} or {"id": 1, "ok": false, "error": "..."}.
// A "download" helper saves a Playwright Download and returns its path and suggested name.
// Stdin closing closes the browser and ends the process.
"use strict";

const readline = require("readline");
const [playwrightDir, executablePath, userDataDir, downloadsPath] = process.argv.slice(2);
const { chromium } = require(playwrightDir);

const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;

function answer(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

async function main() {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    acceptDownloads: true,
    downloadsPath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  const helpers = {
    async download(download, name) {
      const target = require("path").join(downloadsPath, name);
      await download.saveAs(target);
      return { path: target, suggested: download.suggestedFilename(), failure: await download.failure() };
    },
  };
  answer({ id: 0, ok: true, value: { version: context.browser() ? context.browser().version() : null } });

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const { id, code, args } = JSON.parse(line);
    try {
      const value = await new AsyncFunction("page", "context", "args", "helpers", code)(page, context, args, helpers);
      answer({ id, ok: true, value: value === undefined ? null : value });
    } catch (error) {
      answer({ id, ok: false, error: String((error && error.stack) || error) });
    }
  }
  await context.close();
}

main().catch((error) => {
  answer({ id: 0, ok: false, error: String((error && error.stack) || error) });
  process.exit(1);
});
