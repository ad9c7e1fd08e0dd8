"""The receiver's transfer is ended by its inbox with plain asyncio cancellation
(``receiver._EndOnItem``): its own cancellation is taken back, any other passes on, and one
that arrives after the relay ended never reaches a later await."""

from __future__ import annotations

import asyncio

import pytest

from ringpipe.http.receiver import _EndOnItem


async def _relay_with_ending(relay_time: float, *, fire_at_once: bool = False) -> tuple[bool, bool]:
    """Run a relay of ``relay_time`` s that the inbox ends after 10 ms (or before it starts);
    (whether the relay completed, whether an await after it ran uncancelled)."""
    ends = _EndOnItem()
    loop = asyncio.get_running_loop()
    if fire_at_once:
        ends()
    else:
        loop.call_later(0.01, ends)
    completed = False
    try:
        if relay_time:
            await asyncio.sleep(relay_time)
        completed = True
    except asyncio.CancelledError:
        if not ends.taken_back():
            raise
    finally:
        if ends.pending:
            await ends.absorb()
    await asyncio.sleep(0.02)  # the tear-down's awaits run uncancelled
    return completed, True


def test_an_inbox_item_ends_the_relay_and_the_task_goes_on() -> None:
    async def main() -> tuple[tuple[bool, bool], int]:
        result = await _relay_with_ending(5.0)
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling()

    assert asyncio.run(main()) == ((False, True), 0)


def test_an_ending_that_comes_after_the_relay_never_reaches_the_tear_down() -> None:
    async def main() -> tuple[tuple[bool, bool], int]:
        result = await _relay_with_ending(0.0, fire_at_once=True)
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling()

    assert asyncio.run(main()) == ((True, True), 0)


def test_a_cancellation_from_outside_passes_on() -> None:
    async def main() -> None:
        task = asyncio.create_task(_relay_with_ending(5.0))
        await asyncio.sleep(0.005)
        task.cancel()  # before the inbox's ending (10 ms): only the outside's
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_both_endings_at_once_still_cancel() -> None:
    async def main() -> None:
        async def relay() -> None:
            ends = _EndOnItem()
            ends()
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                if not ends.taken_back():
                    raise

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(relay())

    asyncio.run(main())
