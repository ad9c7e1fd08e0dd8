"""``ringpipe.flag.Flag`` behaves like ``asyncio.Event`` where the connection code relies on it."""

from __future__ import annotations

import asyncio

from ringpipe.shm.flag import Flag


def test_set_wakes_every_waiter_even_if_cleared_before_they_run() -> None:
    async def main() -> list[bool]:
        flag = Flag()
        waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        flag.set()
        flag.clear()
        return await asyncio.gather(*waiters)

    assert asyncio.run(main()) == [True, True, True]


def test_wait_returns_at_once_when_set_and_clear_rearms() -> None:
    async def main() -> None:
        flag = Flag(True)
        assert flag.is_set()
        assert await flag.wait() is True
        flag.clear()
        assert not flag.is_set()
        waiter = asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        flag.set()
        assert await waiter is True

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_no_trace() -> None:
    async def main() -> None:
        flag = Flag()
        try:
            await asyncio.wait_for(flag.wait(), 0.01)
        except TimeoutError:
            pass
        assert flag._waiters is None
        other = asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        flag.set()
        assert await other is True

    asyncio.run(main())
