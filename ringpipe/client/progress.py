"""The CLI's progress line on stderr (rich): bytes, rate, and the pipe's receivers or resumes.

Only drawn when stderr is a terminal (the CLI decides); otherwise ``Progress.open`` yields a
progress that does nothing, so scripts and pipes see no control characters. A sender's line
shows the pipe's receivers from ``HEAD`` once a second, since the sender's own log is only
read after the upload (``sending.py``); without the ``status`` scope it shows bytes alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from rich.console import Console
from rich.progress import DownloadColumn, SpinnerColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.progress import Progress as Bar

from ringpipe.client.errors import ClientError
from ringpipe.client.transport import status

__all__ = ["Progress"]

POLL_S = 1.0


class Progress:
    """One task's line; ``advance_to`` is cheap (rich redraws from its own thread)."""

    def __init__(self, bar: Bar | None = None) -> None:
        self._bar = bar
        self._task = bar.add_task("", total=None, state="") if bar is not None else None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        show: bool,
        label: str,
        *,
        url: str | None = None,
        credentials: dict[str, str | None] | None = None,
    ) -> AsyncIterator[Progress]:
        """A progress line for ``label`` while the block runs (nothing when not ``show``);
        with ``url``, the pipe's receivers are polled into it."""
        if not show:
            yield cls()
            return
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[state]}"),
        )
        with Bar(*columns, console=Console(stderr=True)) as bar:
            progress = cls(bar)
            progress.describe(label)
            if url is None:
                yield progress
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(progress._poll, url, credentials or {})
                yield progress
                tg.cancel_scope.cancel()

    def describe(self, label: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=label)

    def advance_to(self, done: int, *, reconnects: int = 0) -> None:
        if self._bar is None or self._task is None:
            return
        state = f"resumed ×{reconnects}" if reconnects else None
        if state is None:
            self._bar.update(self._task, completed=done)
        else:
            self._bar.update(self._task, completed=done, state=state)

    async def _poll(self, url: str, credentials: dict[str, str | None]) -> None:
        while True:
            try:
                pipe = await status(url, token=credentials.get("token"), read_key=credentials.get("read_key"))
            except ClientError:
                return  # no status scope, or the relay is gone: bytes alone
            if self._bar is not None and self._task is not None:
                if pipe.state == "free":
                    state = ""
                else:
                    state = f"{pipe.state} {pipe.connected}/{pipe.n} receiver(s)"
                self._bar.update(self._task, state=state)
            await anyio.sleep(POLL_S)
