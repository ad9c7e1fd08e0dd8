"""The CLI's progress line on stderr (rich): bytes, rate, and the transfer's state.

Only drawn when stderr is a terminal (the CLI decides); otherwise ``Progress.open`` yields a
progress that does nothing, so scripts and pipes see no control characters. The state text
is the caller's: a sender shows its receivers from its live log, a reader its resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import DownloadColumn, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.progress import Progress as Bar

__all__ = ["Progress"]


class Progress:
    """One task's line; updates are cheap (rich redraws from its own thread)."""

    def __init__(self, bar: Bar | None = None, task: TaskID | None = None) -> None:
        self._bar = bar
        self._task = task

    @classmethod
    @contextlib.contextmanager
    def open(cls, show: bool, label: str) -> Iterator[Progress]:
        """A progress line for ``label`` while the block runs; nothing when not ``show``."""
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
            yield cls(bar, bar.add_task(label, total=None, state=""))

    def advance_to(self, done: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done)

    def state(self, text: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, state=text)
