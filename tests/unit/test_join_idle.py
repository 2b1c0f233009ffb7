"""An idle join stage (streams/service/joinstage.py, module doc: Idle; no broker: the stage
and its partitions are built in memory).

Its partitions repeat that they are idle every ``IDLE_REPEAT`` seconds, and only while the group
coordinator has just confirmed that the process still owns them; a busy partition turns idle
only on such a confirmation too. Input makes a partition due
for a checkpoint on the work it saved; markers alone (the other partitions' repeats) only after
``MARKERS_CHECKPOINT_INTERVAL``, so that an idle process neither serialises its pending entries
every few seconds nor leaves its long idle waits."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace
from typing import cast

import orjson
import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka.connect import Membership
from driftswitch.streams.kafka.groups import StageMember
from driftswitch.streams.pipeline.merge import decode_batch
from driftswitch.streams.service.joinstage import (
    CONFIRMED_WITHIN,
    IDLE_REPEAT,
    MARKERS_CHECKPOINT_INTERVAL,
    JoinStage,
)
from driftswitch.streams.service.pacing import MAX_SNAPSHOT_INTERVAL
from driftswitch.streams.service.worker import WorkerSettings

FLAGS = "flags: {ranker: {default: a, variants: {a: {weight: 100, value: 1}}}}\n"


def _stage() -> JoinStage:
    settings = WorkerSettings(bootstrap="127.0.0.1:1", topics=Topics.with_prefix("t"))
    return JoinStage(parse_config(FLAGS), settings)


def test_input_makes_a_partition_due_and_markers_alone_only_after_their_interval() -> None:
    stage = _stage()
    part = stage._open(0, None)
    saved = part.saved_at
    assert not stage._due(part, saved + 10 * MARKERS_CHECKPOINT_INTERVAL)  # nothing read
    part.markers_unsaved = True
    assert not stage._due(part, saved + MAX_SNAPSHOT_INTERVAL)
    assert not stage._due(part, saved + MARKERS_CHECKPOINT_INTERVAL - 1)
    assert stage._due(part, saved + MARKERS_CHECKPOINT_INTERVAL + 0.001)
    part.dirty = True  # input: due on the input's clock again
    assert stage._due(part, saved + MAX_SNAPSHOT_INTERVAL + 0.001)


def test_a_partition_that_read_only_markers_stays_quiet() -> None:
    # The idle loop's long waits (JoinStage._quiet) are for partitions with no input to save.
    stage = _stage()
    part = stage.parts[0] = stage._open(0, None)
    part.sent = part.announced = (0.0, True)
    part.markers_unsaved = True
    assert stage._quiet()
    part.dirty = True
    assert not stage._quiet()


def test_idle_repeats_wait_for_a_fresh_confirmation_that_this_member_is_current() -> None:
    async def scenario() -> None:
        stage = _stage()
        answer = [Membership.EXPELLED]
        checks: list[float] = []

        async def check() -> Membership:
            checks.append(time.monotonic())
            return answer[0]

        stage._member = cast(StageMember, SimpleNamespace(check=check))  # only check() is used

        async def settled() -> None:
            assert stage._confirming is not None
            await stage._confirming

        assert not stage._repeat_due(time.monotonic())  # asks the coordinator, waits for nothing
        await settled()
        assert not stage._repeat_due(time.monotonic())  # expelled: no repeat; asks again
        await settled()
        assert len(checks) == 2
        answer[0] = Membership.CURRENT
        assert not stage._repeat_due(time.monotonic())
        await settled()
        confirmed = time.monotonic()
        assert stage._repeat_due(confirmed)  # confirmed just now
        assert not stage._repeat_due(confirmed + IDLE_REPEAT / 2)  # once per IDLE_REPEAT
        # Woken from a pause longer than the confirmation is fresh (a zombie's): no repeat
        # until the coordinator answers again, and it says the member is gone.
        answer[0] = Membership.EXPELLED
        woken = confirmed + IDLE_REPEAT + CONFIRMED_WITHIN
        assert not stage._repeat_due(woken)
        await settled()
        assert not stage._repeat_due(woken)  # and asks again
        await settled()
        assert len(checks) == 5

    asyncio.run(scenario())


class _Producer:
    """Takes what the stage sends: ``(topic, value, partition)``, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int]] = []

    async def send(self, topic: str, value: bytes, **kw: object) -> asyncio.Future[object]:
        self.sent.append((topic, value, cast(int, kw["partition"])))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(offset=len(self.sent) - 1))
        return done


def test_a_busy_partition_turns_idle_only_on_a_fresh_confirmation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process woken from a pause that cost it its partitions (a zombie) may find them caught
    # up at once (its last fetch answers are older than the pause). Its "idle", landing after
    # the new owner's "busy", would let the decide stage and the other partitions pass records
    # the new owner has yet to read: the turn waits for the coordinator, who expels the zombie.
    async def scenario() -> None:
        stage = _stage()
        answer = [Membership.EXPELLED]

        async def check() -> Membership:
            return answer[0]

        stage._member = cast(StageMember, SimpleNamespace(check=check))
        producer = stage._producer = _Producer()
        part = stage.parts[0] = stage._open(0, None)
        part.clock.observe(0, 100.0)
        part.sent = part.announced = (100.0, False)  # busy so far
        for other in range(1, stage._partitions):
            part.horizons[other] = (-math.inf, True)  # the other partitions are idle
        monkeypatch.setattr(stage, "_busy", lambda part, t: False)  # all caught up

        def said() -> tuple[set[bool], set[bool]]:
            observations = stage.topics.observations.name
            batches = {decode_batch(v).idle for t, v, _ in producer.sent if t == observations}
            markers = {orjson.loads(v)["idle"] for t, v, _ in producer.sent if t != observations}
            producer.sent.clear()
            return batches, markers

        async def settled() -> None:
            assert stage._confirming is not None
            await stage._confirming

        await stage._emit(part, [], changed=False)
        assert said() == (set(), set())  # unconfirmed: still busy, nothing new to say
        assert part.sent == (100.0, False)
        assert part.announced == (100.0, False)
        await settled()  # the coordinator: expelled
        await stage._emit(part, [], changed=False)
        assert said() == (set(), set())
        await settled()
        answer[0] = Membership.CURRENT
        await stage._emit(part, [], changed=False)
        await settled()  # confirmed now
        await stage._emit(part, [], changed=False)
        assert said() == ({True}, {True})  # to every observations and join partition
        assert part.sent == (100.0, True)
        assert part.announced == (100.0, True)
        # Once idle, a partition stays so without asking again (repeats ask on their own).
        stage._confirmed_at = -math.inf
        await stage._emit(part, [], changed=False)
        assert said() == (set(), set())
        assert part.sent == (100.0, True)

    asyncio.run(scenario())
