"""The background data-loss check's scheduling (``LossCheck``), without a broker: the check it
runs is a coroutine the test controls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from driftswitch.streams.service.dataloss import CHECK_INTERVAL, Checked, LossCheck, Lost, Mark


class Finder:
    """A check the test answers: each call waits for its own ``answer`` future."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[Any, int], dict[Any, Mark]]] = []
        self.answers: list[asyncio.Future[dict[Any, Lost]]] = []
        self.closed: list[int] = []

    async def __call__(
        self, positions: Mapping[Any, int], marks: Mapping[Any, Mark]
    ) -> dict[Any, Lost]:
        n = len(self.calls)
        self.calls.append((dict(positions), dict(marks)))
        answer: asyncio.Future[dict[Any, Lost]] = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        try:
            return await answer
        finally:
            await asyncio.sleep(0)  # closing its consumer takes a moment
            self.closed.append(n)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_poll_gives_the_finished_check_once_with_the_positions_it_started_from() -> None:
    async def main() -> None:
        find = Finder()
        check = LossCheck(find)
        positions = {("a", 0): 10, ("a", 1): 20}
        marks = {("a", 0): Mark(9, 1, 2)}
        check.start(positions, marks)
        positions[("a", 0)] = 99  # the caller reads on: the check keeps what it started from
        assert check.pending
        await _settle()
        assert check.poll() is None  # still running
        assert find.calls == [({("a", 0): 10, ("a", 1): 20}, {("a", 0): Mark(9, 1, 2)})]
        find.answers[0].set_result({("a", 1): Lost(5)})
        await _settle()
        got = check.poll()
        assert got == Checked({("a", 0): 10, ("a", 1): 20}, {("a", 1): Lost(5)})
        assert got.error is None
        assert check.poll() is None
        assert not check.pending

    asyncio.run(main())


def test_a_failed_check_is_a_warning_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        find = Finder()
        check = LossCheck(find, "join stage")
        check.start({("a", 0): 3}, {})
        await _settle()
        find.answers[0].set_exception(TimeoutError("no answer from the broker"))
        await _settle()
        with caplog.at_level(logging.WARNING):
            got = check.poll()
        assert got == Checked({("a", 0): 3}, {}, error="no answer from the broker")
        assert [r.getMessage() for r in caplog.records] == [
            "join stage: checking the input for lost data failed: no answer from the broker"
        ]

    asyncio.run(main())


def test_a_new_check_supersedes_the_running_one() -> None:
    async def main() -> None:
        find = Finder()
        check = LossCheck(find)
        check.start({("a", 0): 1}, {})
        await _settle()
        check.start({("a", 0): 2, ("a", 1): 7}, {})
        await _settle()
        assert find.answers[0].cancelled()  # the first one was cancelled
        assert find.closed == [0]
        assert check.poll() is None
        find.answers[1].set_result({})
        await _settle()
        assert check.poll() == Checked({("a", 0): 2, ("a", 1): 7}, {})

    asyncio.run(main())


def test_cancel_drops_a_running_or_finished_check_and_close_waits_for_it() -> None:
    async def main() -> None:
        find = Finder()
        check = LossCheck(find)
        check.start({("a", 0): 1}, {})
        await _settle()
        find.answers[0].set_result({("a", 0): Lost(0)})
        await _settle()
        check.cancel()  # finished but never polled: its answer is not applied
        assert check.poll() is None
        assert not check.pending
        check.start({("a", 0): 1}, {})
        await asyncio.sleep(0)
        await check.close()  # running: cancelled, and closed before close() returns
        assert find.closed == [0, 1]
        assert find.answers[1].cancelled()
        assert check.poll() is None

    asyncio.run(main())


def test_a_failure_nobody_polled_is_not_logged_as_never_retrieved() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        find = Finder()
        check = LossCheck(find)
        check.start({("a", 0): 1}, {})
        await _settle()
        find.answers[0].set_exception(OSError("connection reset"))
        await _settle()
        check.start({("a", 0): 1}, {})  # supersedes the finished, failed one
        await check.close()
        import gc

        gc.collect()
        await _settle()
        assert unhandled == []

    asyncio.run(main())


def test_wait_gives_the_pending_check_and_none_without_one() -> None:
    async def main() -> None:
        find = Finder()
        check = LossCheck(find)
        assert await check.wait() is None
        check.start({("a", 0): 4}, {})
        waiting = asyncio.ensure_future(check.wait())
        await _settle()
        assert not waiting.done()
        find.answers[0].set_result({})
        assert await waiting == Checked({("a", 0): 4}, {})
        assert not check.pending

    asyncio.run(main())


def test_idle_checks_start_at_most_every_interval() -> None:
    async def main() -> None:
        find = Finder()
        clock = Clock()
        check = LossCheck(find, clock=clock)
        assert check.due()  # none yet
        check.start({("a", 0): 1}, {})
        clock.now += 2 * CHECK_INTERVAL
        assert not check.due()  # one is pending (running)
        await _settle()
        find.answers[0].set_result({})
        await _settle()
        assert not check.due()  # finished, not polled yet
        assert check.poll() is not None
        assert check.due()  # started two intervals ago
        check.start({("a", 0): 1}, {})
        await _settle()
        find.answers[1].set_result({})
        await _settle()
        assert check.poll() is not None
        clock.now += CHECK_INTERVAL - 0.5
        assert not check.due()
        clock.now += 0.5
        assert check.due()

    asyncio.run(main())
