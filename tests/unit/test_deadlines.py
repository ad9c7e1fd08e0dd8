"""``limits.Deadlines``: the connections' head and keep-alive deadlines on one timer per tick.

A deadline fires once, not before its delay and at most a tick after it; a cancelled one
never fires; a callback that raises is logged and the others of its tick still run.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from ringpipe.http.limits import Deadlines

TICK = 0.05


def test_a_deadline_fires_once_within_a_tick_after_its_delay() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, tick=TICK)
        started = loop.time()
        fired: list[float] = []
        for delay in (0.1, 0.23, 0.23):
            deadlines.add(delay, lambda delay=delay: fired.append(loop.time() - started - delay))
        await asyncio.sleep(0.6)
        return fired

    late = asyncio.run(main())
    assert len(late) == 3
    assert all(-0.002 <= lateness < TICK + 0.1 for lateness in late), late


def test_a_cancelled_deadline_never_fires() -> None:
    async def main() -> list[str]:
        deadlines = Deadlines(asyncio.get_running_loop(), tick=TICK)
        fired: list[str] = []

        def kept() -> None:
            fired.append("kept")

        def cancelled() -> None:
            fired.append("cancelled")

        deadlines.add(0.1, kept)
        deadlines.add(0.1, cancelled).discard(cancelled)
        await asyncio.sleep(0.4)
        return fired

    assert asyncio.run(main()) == ["kept"]


def test_a_failing_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[str]:
        deadlines = Deadlines(asyncio.get_running_loop(), tick=TICK)
        fired: list[str] = []

        def fails() -> None:
            raise RuntimeError("boom")

        deadlines.add(0.1, fails)
        deadlines.add(0.1, lambda: fired.append("ran"))
        await asyncio.sleep(0.4)
        return fired

    with caplog.at_level(logging.ERROR, logger="ringpipe.limits"):
        assert asyncio.run(main()) == ["ran"]
    assert any("deadline failed" in record.message for record in caplog.records)
