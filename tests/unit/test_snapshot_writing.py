"""``Writing``: the one snapshot or join checkpoint a loop took and a task is still writing."""

from __future__ import annotations

import asyncio

import pytest

from driftswitch.streams.service.snapshot import Writing


def test_one_write_at_a_time_in_order() -> None:
    order: list[str] = []

    async def write(name: str, gate: asyncio.Event) -> None:
        await gate.wait()
        order.append(name)

    async def scenario() -> tuple[bool, bool]:
        writing = Writing()
        first, second = asyncio.Event(), asyncio.Event()
        writing.start(write("first", first))
        refused = write("second", second)
        with pytest.raises(AssertionError):
            writing.start(refused)  # not settled: refused, nothing started
        refused.close()
        await asyncio.sleep(0)
        pending = writing.pending
        writing.check()  # still running: nothing to raise
        first.set()
        await writing.settle()
        writing.start(write("second", second))
        second.set()
        await writing.settle()
        return pending, writing.pending

    pending, after = asyncio.run(scenario())
    assert (pending, after) == (True, False)
    assert order == ["first", "second"]


def test_a_failed_write_is_raised_in_the_loop_once() -> None:
    async def failing() -> None:
        raise RuntimeError("broker gone")

    async def scenario() -> None:
        writing = Writing()
        writing.start(failing())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="broker gone"):
            writing.check()
        writing.check()  # raised once: it is gone
        await writing.settle()
        writing.start(failing())
        with pytest.raises(RuntimeError, match="broker gone"):
            await writing.settle()

    asyncio.run(scenario())
