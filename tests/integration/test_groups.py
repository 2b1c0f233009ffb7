"""Stage groups on the embedded broker: partition indexes assigned across three co-partitioned
topics, moved on join, leave, SIGKILL and freeze; and where producers place keys.

The assignment logic itself is unit-tested in tests/unit/test_groups.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import Producer

from driftswitch.streams.contract.topics import TopicSpec
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.connect import Membership, read_partitions
from driftswitch.streams.kafka.groups import GroupError, StageMember, partition_for
from driftswitch.streams.kafka.settings import as_settings
from driftswitch.streams.tools.broker import EmbeddedBroker

CHILD = Path(__file__).with_name("stage_member_child.py")
#: Short sessions: Tansu completes a join only after about half the session timeout.
SESSION_MS = 6000
OPTIONS: dict[str, Any] = {
    "session_timeout_ms": SESSION_MS,
    "heartbeat_interval_ms": 500,
    "fetch_max_wait_ms": 100,
}
_names = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}-{secrets.token_hex(3)}"


async def make_topics(bootstrap: str, n: int = 3, partitions: int = 4) -> list[str]:
    names = [fresh(f"grp.t{i}-") for i in range(n)]
    await ensure_topics(bootstrap, [TopicSpec(name=t, partitions=partitions) for t in names])
    return names


async def until(what: str, check: Callable[[], bool], limit_s: float = 90.0) -> None:
    """Poll ``check`` until true; ``TimeoutError`` naming ``what`` after ``limit_s`` (a hang,
    not a speed figure)."""
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {limit_s:g} s")
        await asyncio.sleep(0.05)


class Member:
    """A :class:`StageMember` in this process with a task reading everything it owns."""

    def __init__(
        self, name: str, bootstrap: str, group: str, topics: list[str], log: list[Any]
    ) -> None:
        self.name = name
        self.read: set[tuple[str, int, bytes]] = set()
        self.log = log
        self.member = StageMember(
            as_settings(bootstrap),
            group,
            topics,
            on_assigned=self._assigned,
            on_revoked=self._revoked,
            **OPTIONS,
        )
        self.task: asyncio.Task[None] | None = None
        self.revoke_delay_s = 0.0

    async def _assigned(self, indexes: set[int]) -> None:
        self.log.append((self.name, "assigned", frozenset(indexes)))

    async def _revoked(self, indexes: set[int]) -> None:
        self.log.append((self.name, "revoking", frozenset(indexes)))
        # A runner flushing and checkpointing: nobody may get these indexes meanwhile. Its
        # final offsets commit, fenced, while the indexes are still its own.
        await asyncio.sleep(self.revoke_delay_s)
        topic = self.member.topics[0]
        positions = {
            (topic, i): await self.member.consumer.position(self.member.tp(topic, i))
            for i in indexes
        }
        verdict = await self.member.commit(positions)
        self.log.append((self.name, "revoked", frozenset(indexes), verdict))

    async def start(self) -> Member:
        await self.member.start()

        async def pump() -> None:
            while True:
                batch = await self.member.getmany(timeout_ms=100)
                for tp, records in batch.items():
                    self.read.update((tp.topic, tp.partition, r.value) for r in records)

        self.task = asyncio.create_task(pump())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.member.stop()

    def assigned_tps(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.member.consumer.assignment()}


def events(log: list[Any], name: str, kind: str) -> list[int]:
    return [i for i, (who, what, *_) in enumerate(log) if who == name and what == kind]


def test_indexes_move_with_members_and_stay_where_they_can(broker: EmbeddedBroker) -> None:
    """One member owns all 4 indexes of 3 topics; a second takes 2 once the first has finished
    its revocation, the first keeping 2 of its own; a third makes it 2/1/1; a leaver's index goes
    to the others."""

    async def run() -> None:
        topics = await make_topics(broker.bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for t in topics:
                for p in range(4):
                    await producer.send_and_wait(t, f"{t}:{p}".encode(), partition=p)
        finally:
            await producer.stop()
        every = {(t, p, f"{t}:{p}".encode()) for t in topics for p in range(4)}
        group = fresh("grp.g-")
        log: list[Any] = []
        a = await Member("a", broker.bootstrap, group, topics, log).start()
        members = [a]
        try:
            assert await a.member.wait_assigned(90) == {0, 1, 2, 3}
            assert a.assigned_tps() == {(t, p) for t in topics for p in range(4)}
            await until("a reads partition p of every topic", lambda: a.read == every)
            first_generation = a.member.generation

            # A second member: the first revokes everything (eager), slowly, and only then is
            # anything assigned to anyone.
            a.revoke_delay_s = 1.5
            b = await Member("b", broker.bootstrap, group, topics, log).start()
            members.append(b)
            await until("a 2+2 split", lambda: len(a.member.owned) == len(b.member.owned) == 2)
            assert a.member.owned | b.member.owned == {0, 1, 2, 3}
            assert a.member.kept == a.member.owned  # kept its two, no one had them in between
            assert b.member.kept == set()
            assert a.member.generation == b.member.generation == first_generation + 1
            (revoked_done,) = events(log, "a", "revoked")
            (b_assigned,) = events(log, "b", "assigned")
            assert revoked_done < b_assigned
            # Its final commit, made in on_revoked during the rebalance, was accepted.
            assert log[revoked_done][3] is Membership.CURRENT
            for index in b.member.owned:  # a had read the one record there
                assert await b.member.consumer.committed(b.member.tp(topics[0], index)) == 1
            # The fence check re-commits what is committed: nothing moves.
            assert await a.member.check() is Membership.CURRENT
            assert await b.member.check() is Membership.CURRENT
            for index in b.member.owned:
                assert await b.member.consumer.committed(b.member.tp(topics[0], index)) == 1
            assert log[b_assigned][2] == b.member.owned
            assert b.assigned_tps() == {(t, p) for t in topics for p in b.member.owned}
            # b starts where a's final commit left the first topic, at the beginning elsewhere.
            b_every = {r for r in every if r[1] in b.member.owned and r[0] != topics[0]}
            await until("b reads its partitions", lambda: b.read == b_every)

            a.revoke_delay_s = 0.0
            before = {m.name: m.member.owned for m in members}
            c = await Member("c", broker.bootstrap, group, topics, log).start()
            members.append(c)
            await until("a 2/1/1 split", lambda: len(c.member.owned) == 1)
            await until("the split settles", lambda: sum(len(m.member.owned) for m in members) == 4)
            assert sorted(len(m.member.owned) for m in members) == [1, 1, 2]
            for m in (a, b):
                assert m.member.owned <= before[m.name]
                assert m.member.kept == m.member.owned
            assert {i for m in members for i in m.member.owned} == {0, 1, 2, 3}

            # A member that closes: its index goes to the one with a single index.
            leaving = next(m for m in (a, b) if len(m.member.owned) == 1)
            staying = next(m for m in (a, b) if m is not leaving)
            gone = leaving.member.owned
            log_mark = len(log)
            await leaving.stop()
            members.remove(leaving)
            assert (leaving.name, "revoked", gone, Membership.CURRENT) in log[log_mark:]
            await until(
                "the leaver's index to move",
                lambda: sum(len(m.member.owned) for m in members) == 4,
            )
            assert staying.member.owned <= before[staying.name]
            assert len(staying.member.owned) == len(c.member.owned) == 2
            assert gone <= c.member.owned
        finally:
            # One at a time: a Tansu group whose member leaves during a rebalance gets stuck.
            for m in members:
                await m.stop()

    asyncio.run(run())


def test_two_members_leaving_one_after_the_other_leave_the_third_everything(
    broker: EmbeddedBroker,
) -> None:
    """The second leaves while the group rebalances after the first's leave; the survivor is
    assigned every index (the Tansu group does not get stuck, as it did for plain aiokafka
    consumers, see streams/tools/broker.py)."""

    async def run() -> None:
        topics = await make_topics(broker.bootstrap, n=2)
        group = fresh("grp.leave2-")
        log: list[Any] = []
        members = [Member(n, broker.bootstrap, group, topics, log) for n in "abc"]
        started: list[Member] = []
        try:
            for m in members:
                started.append(await m.start())
                await m.member.wait_assigned(90)
            await until(
                "a 2/1/1 split",
                lambda: sorted(len(m.member.owned) for m in members) == [1, 1, 2],
            )
            a, b, c = members
            await b.stop()
            started.remove(b)
            await c.stop()
            started.remove(c)
            await until("a to own every index", lambda: a.member.owned == {0, 1, 2, 3})
            assert a.assigned_tps() == {(t, p) for t in topics for p in range(4)}
        finally:
            for m in started:
                await m.stop()

    asyncio.run(run())


class Child:
    """tests/integration/stage_member_child.py in a subprocess, its JSON lines collected."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: list[str],
        *extra: str,
        session_ms: int = SESSION_MS,
    ) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                bootstrap,
                group,
                ",".join(topics),
                str(session_ms),
                *extra,
            ],
            stdout=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(orjson.loads(line))

    def owned(self) -> set[int]:
        for line in reversed(self.lines):
            if "assigned" in line:
                return set(line["assigned"])
            if "revoked" in line:
                return set()
        return set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(*args: Any, **kwargs: Any) -> Child:
        child = Child(*args, **kwargs)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


def test_a_killed_members_indexes_move_after_its_session_timeout(
    broker: EmbeddedBroker, children: Callable[..., Child]
) -> None:
    async def run() -> None:
        topics = await make_topics(broker.bootstrap)
        group = fresh("grp.kill-")
        log: list[Any] = []
        child = children(broker.bootstrap, group, topics)
        await until("the child's assignment", lambda: child.owned() == {0, 1, 2, 3})
        a = await Member("a", broker.bootstrap, group, topics, log).start()
        try:
            await until("a 2+2 split", lambda: len(child.owned()) == 2 and len(a.member.owned) == 2)
            theirs = child.owned()
            assert a.member.owned == {0, 1, 2, 3} - theirs
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait(30)
            # No revocation ran in the dead child; the coordinator expels it once its session
            # times out, and the survivor gets everything.
            await until("a to own every index", lambda: a.member.owned == {0, 1, 2, 3})
            assert child.owned() == theirs
            assert a.assigned_tps() == {(t, p) for t in topics for p in range(4)}
        finally:
            await a.stop()

    asyncio.run(run())


def test_a_replacement_removes_the_killed_member_it_replaces_instead_of_waiting_for_its_session(
    broker: EmbeddedBroker, children: Callable[..., Child]
) -> None:
    """A process restarted in place of a SIGKILLed one names the dead member (``replaces``): it
    is removed from the group before the new member joins, so the new member gets every index
    before the dead one's session could have timed out. Without the removal the group keeps the
    dead member (and its claim on the indexes) until its session times out: the embedded broker
    evicts it only then, and a join completes only after half the session timeout, so the first
    assignment could not come before the whole session had passed."""
    session_ms = 20_000

    async def run() -> None:
        topics = await make_topics(broker.bootstrap)
        group = fresh("grp.replace-")
        child = children(broker.bootstrap, group, topics, session_ms=session_ms)
        await until("the child's assignment", lambda: child.owned() == {0, 1, 2, 3})
        dead = next(line["member"] for line in child.lines if "assigned" in line)
        assert dead
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(30)
        killed = time.monotonic()
        log: list[Any] = []
        b = Member("b", broker.bootstrap, group, topics, log)
        b.member = StageMember(
            as_settings(broker.bootstrap),
            group,
            topics,
            on_assigned=b._assigned,
            on_revoked=b._revoked,
            replaces=[dead],
            **{**OPTIONS, "session_timeout_ms": session_ms},
        )
        await b.start()
        try:
            assert b.member.replaced == {dead: True}
            # The dead member's session (20 s, from its last heartbeat at most 0.5 s before the
            # kill) has not run out yet when the new member owns everything.
            await until(
                "b to own every index",
                lambda: b.member.owned == {0, 1, 2, 3},
                limit_s=session_ms / 1000 - 0.5 - (time.monotonic() - killed),
            )
            assert log[0] == ("b", "assigned", frozenset({0, 1, 2, 3}))
            assert b.member.member_id
            assert b.member.member_id != dead
            assert set(b.member.timeline) == {"join_sent", "joined", "synced"}
            assert b.assigned_tps() == {(t, p) for t in topics for p in range(4)}
        finally:
            await b.stop()

    asyncio.run(run())


def test_replacing_a_member_the_group_does_not_know_changes_nothing(
    broker: EmbeddedBroker,
) -> None:
    """A recorded member id the coordinator no longer knows (it left cleanly, or timed out) is
    removed to no effect: the replacement joins and is assigned as any new member."""

    async def run() -> None:
        topics = await make_topics(broker.bootstrap)
        group = fresh("grp.replace-unknown-")
        log: list[Any] = []
        a = await Member("a", broker.bootstrap, group, topics, log).start()
        try:
            await until("a to own every index", lambda: a.member.owned == {0, 1, 2, 3})
            b = Member("b", broker.bootstrap, group, topics, log)
            b.member = StageMember(
                as_settings(broker.bootstrap),
                group,
                topics,
                on_assigned=b._assigned,
                on_revoked=b._revoked,
                replaces=["gone-" + secrets.token_hex(4)],
                **OPTIONS,
            )
            await b.start()
            try:
                await until(
                    "a 2+2 split",
                    lambda: len(a.member.owned) == 2 and len(b.member.owned) == 2,
                )
                assert a.member.owned | b.member.owned == {0, 1, 2, 3}
            finally:
                await b.stop()
        finally:
            await a.stop()

    asyncio.run(run())


def test_a_member_killed_during_a_rebalance_holds_nothing_up_for_long(
    broker: EmbeddedBroker, children: Callable[..., Child]
) -> None:
    """SIGKILL strikes a member while the group rebalances (a third member is joining): once its
    session times out, the two others share every index."""

    async def run() -> None:
        topics = await make_topics(broker.bootstrap)
        group = fresh("grp.killmid-")
        log: list[Any] = []
        child = children(broker.bootstrap, group, topics)
        await until("the child's assignment", lambda: child.owned() == {0, 1, 2, 3})
        b = await Member("b", broker.bootstrap, group, topics, log).start()
        c = Member("c", broker.bootstrap, group, topics, log)
        started = [b]
        try:
            await until("a 2+2 split", lambda: len(b.member.owned) == 2)
            mark = len(log)
            await c.start()
            started.append(c)
            await until("the rebalance", lambda: ("b", "revoked") in [x[:2] for x in log[mark:]])
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait(30)
            await until(
                "b and c to share every index",
                lambda: b.member.owned | c.member.owned == {0, 1, 2, 3},
            )
            assert len(b.member.owned) == len(c.member.owned) == 2
        finally:
            for m in started:
                await m.stop()

    asyncio.run(run())


def test_a_frozen_member_is_fenced_when_it_wakes(
    broker: EmbeddedBroker, children: Callable[..., Child]
) -> None:
    """A member paused past its session timeout (SIGSTOP) loses its indexes; the commit it sends
    the instant it wakes, still believing it owns them, is refused, and the new owner's offset
    stands."""

    async def run() -> None:
        topics = await make_topics(broker.bootstrap)
        group = fresh("grp.freeze-")
        log: list[Any] = []
        a = await Member("a", broker.bootstrap, group, topics, log).start()
        try:
            await a.member.wait_assigned(90)
            child = children(broker.bootstrap, group, topics, "--commit", "--freeze-after", "3")
            await until("the child to freeze", lambda: any("freezing" in x for x in child.lines))
            frozen_generation = next(x["freezing"] for x in child.lines if "freezing" in x)
            theirs = child.owned()
            assert len(theirs) == 2
            assert frozen_generation == a.member.generation
            await until("a to own every index", lambda: a.member.owned == {0, 1, 2, 3})
            # The new owner commits its own offset for the zombie's lowest index.
            index = min(theirs)
            assert await a.member.commit({(topics[0], index): 7}) is Membership.CURRENT
            mark = len(child.lines)
            child.proc.send_signal(signal.SIGCONT)
            await until(
                "the zombie's commit", lambda: any("commit" in x for x in child.lines[mark:])
            )
            stale = next(x for x in child.lines[mark:] if "commit" in x)
            assert stale["generation"] == frozen_generation
            assert stale["index"] == index
            assert stale["verdict"] == Membership.EXPELLED.value
            # Then aiokafka notices the expulsion and revokes; the final commit of the
            # revocation is refused too.
            await until(
                "the zombie's revocation", lambda: any("revoked" in x for x in child.lines[mark:])
            )
            final = next(x for x in child.lines[mark:] if "revoked" in x)
            assert set(final["revoked"]) == theirs
            assert final["verdict"] == Membership.EXPELLED.value
            # Whatever the zombie committed after rejoining was accepted in a newer generation.
            committed = await a.member.consumer.committed(a.member.tp(topics[0], index))
            later = {
                x["commit"]
                for x in child.lines[mark:]
                if "commit" in x
                and x["verdict"] == "current"
                and x["generation"] > frozen_generation
            }
            assert committed == 7 or committed in later
        finally:
            await a.stop()

    asyncio.run(run())


def test_a_member_stopping_in_generation_zero_leaves_at_once(broker: EmbeddedBroker) -> None:
    """Tansu's first generation is 0, where aiokafka's close sends no LeaveGroup
    (tests/integration/test_tansu_quirks.py); ``StageMember.stop`` sends it."""

    async def members(group: str) -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        (entry,) = described.groups
        return len(entry[-1])

    async def run() -> None:
        topics = await make_topics(broker.bootstrap, n=2)
        group = fresh("grp.gen0-")
        log: list[Any] = []
        a, b = (Member(n, broker.bootstrap, group, topics, log) for n in "ab")
        await asyncio.gather(a.start(), b.start())
        try:
            await until("a 2+2 split", lambda: len(a.member.owned) == len(b.member.owned) == 2)
            assert a.member.generation == b.member.generation == 0
            assert await members(group) == 2
            await b.stop()
            assert await members(group) == 1  # well within b's 6 s session
            await until("a to own every index", lambda: a.member.owned == {0, 1, 2, 3})
        finally:
            await a.stop()

    asyncio.run(run())


def test_a_member_stopping_while_its_group_rebalances_out_of_generation_zero(
    broker: EmbeddedBroker,
) -> None:
    """A member stopped while the group rebalances (a third joined) from generation 0: the
    others are assigned every index. Its LeaveGroup waits until its JoinGroup is answered; sent
    before (as ``StageMember.stop`` once did in generation 0), it left the Tansu group stuck in
    that rebalance, nobody assigned anything for minutes."""

    async def run() -> None:
        topics = await make_topics(broker.bootstrap, n=2)
        group = fresh("grp.gen0-rebalance-")
        log: list[Any] = []
        a, b, c = (Member(n, broker.bootstrap, group, topics, log) for n in "abc")
        await asyncio.gather(a.start(), b.start())
        started = [a, b]
        try:
            await until("a 2+2 split", lambda: len(a.member.owned) == len(b.member.owned) == 2)
            assert a.member.generation == b.member.generation == 0
            mark = len(log)
            started.append(await c.start())
            await until("a to revoke for c", lambda: bool(events(log[mark:], "a", "revoked")))
            started.remove(a)
            await a.stop()
            await until(
                "b and c to own every index",
                lambda: (
                    b.member.owned | c.member.owned == {0, 1, 2, 3}
                    and len(b.member.owned) == len(c.member.owned) == 2
                ),
                limit_s=60,
            )
        finally:
            for m in started:
                await m.stop()

    asyncio.run(run())


def test_processing_holds_rebalances_off_and_drops_an_overtaken_batch(
    broker: EmbeddedBroker,
) -> None:
    """A batch processed inside ``processing`` finishes before the revocation starts; a batch
    fetched before a rebalance and processed after it comes back empty."""

    async def run() -> None:
        topics = await make_topics(broker.bootstrap, n=2)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()

        async def produce(round_: int) -> None:
            for t in topics:
                for p in range(4):
                    await producer.send_and_wait(t, f"{round_}".encode(), partition=p)

        group = fresh("grp.proc-")
        log: list[Any] = []

        def member(name: str) -> StageMember:
            async def revoked(indexes: set[int]) -> None:
                log.append((name, "revoked"))

            async def assigned(indexes: set[int]) -> None:
                log.append((name, "assigned"))

            kafka = as_settings(broker.bootstrap)
            return StageMember(
                kafka, group, topics, on_revoked=revoked, on_assigned=assigned, **OPTIONS
            )

        async def fetch(m: StageMember) -> Any:
            while not (batch := await m.getmany(timeout_ms=200)):
                pass
            return batch

        class Rebalancing(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                # Until a rejoins, a is the group's only member (b is waiting to join).
                if "because it is rebalancing" in record.getMessage():
                    log.append(("a", "rebalancing"))

        a, b, c = member("a"), member("b"), member("c")
        started = [a]
        handler = Rebalancing()
        logging.getLogger("aiokafka").addHandler(handler)
        try:
            await produce(0)
            await a.start()
            await a.wait_assigned(90)
            batch = await fetch(a)
            async with a.processing(batch) as records:
                assert records == batch  # nothing happened since it was fetched

            # A second member joins while a is inside the block: a's revocation waits for it.
            await produce(1)
            batch = await fetch(a)
            async with a.processing(batch) as records:
                assert records == batch
                await b.start()
                started.append(b)
                # a's heartbeat learns of the rebalance; aiokafka then revokes, which waits.
                await until("a rebalance", lambda: ("a", "rebalancing") in log)
                await asyncio.sleep(1.0)
                assert ("a", "revoked") not in log
                assert not b.owned
                log.append(("a", "block done"))
            await until("the 2+2 split", lambda: len(a.owned) == len(b.owned) == 2)
            assert log.index(("a", "block done")) < log.index(("a", "revoked"))

            # A batch fetched, then overtaken by a rebalance before it is processed: dropped.
            await produce(2)
            batch = await fetch(a)
            before = a.generation
            await c.start()
            started.append(c)
            await until("c's assignment", lambda: bool(c.owned) and a.generation > before)
            async with a.processing(batch) as records:
                assert batch
                assert records == {}
        finally:
            logging.getLogger("aiokafka").removeHandler(handler)
            await producer.stop()
            for m in started:
                await m.stop()

    asyncio.run(run())


def test_lag_counts_the_records_not_yet_read(broker: EmbeddedBroker) -> None:
    async def run() -> None:
        topics = await make_topics(broker.bootstrap, n=2)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for i in range(5):  # one batch each: Tansu's high watermark is exact then
                await producer.send_and_wait(topics[0], str(i).encode(), partition=0)
        finally:
            await producer.stop()
        member = StageMember(as_settings(broker.bootstrap), fresh("grp.lag-"), topics, **OPTIONS)
        async with member:
            await member.wait_assigned(90)
            tp = member.tp(topics[0], 0)
            read: list[Any] = []
            while len(read) < 2:
                read += (await member.getmany(tp, timeout_ms=200, max_records=2 - len(read))).get(
                    tp, []
                )
            lag = await member.lag()
            assert lag[(topics[0], 0)] == 3
            while len(read) < 5:
                read += (await member.getmany(tp, timeout_ms=200)).get(tp, [])
            assert (await member.lag())[(topics[0], 0)] == 0

    asyncio.run(run())


def test_start_refuses_topics_with_different_partition_counts(broker: EmbeddedBroker) -> None:
    async def run() -> None:
        four = await make_topics(broker.bootstrap, n=2)
        (three,) = await make_topics(broker.bootstrap, n=1, partitions=3)
        member = StageMember(as_settings(broker.bootstrap), fresh("grp.bad-"), [*four, three])
        with pytest.raises(GroupError, match=rf"same number of partitions.*{three}: 3"):
            await member.start()
        missing = StageMember(as_settings(broker.bootstrap), fresh("grp.bad-"), ["grp.nothing"])
        with pytest.raises(GroupError, match=r"topics not found: grp\.nothing"):
            await missing.start()

    asyncio.run(run())


def test_producers_place_keys_by_murmur2_or_crc32(broker: EmbeddedBroker) -> None:
    """aiokafka (as the Java client) puts a key where ``partition_for`` says; confluent-kafka's
    default (librdkafka's consistent_random: CRC32 for a key) mostly does not."""
    keys = [f"req-{i:04d}".encode() for i in range(50)]

    async def aiokafka_produce(topic: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for key in keys:
                await producer.send_and_wait(topic, b"v", key=key)
        finally:
            await producer.stop()

    def confluent_produce(topic: str) -> None:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for key in keys:
            producer.produce(topic, b"v", key)
        assert producer.flush(30) == 0

    def placement(topic: str) -> dict[bytes, int]:
        read = asyncio.run(read_partitions(as_settings(broker.bootstrap), topic))
        found = {r.key: tp.partition for tp, recs in read.records.items() for r in recs}
        assert sorted(found) == keys
        return found

    java, librd = fresh("grp.murmur-"), fresh("grp.crc-")
    asyncio.run(
        ensure_topics(broker.bootstrap, [TopicSpec(name=t, partitions=4) for t in (java, librd)])
    )
    asyncio.run(aiokafka_produce(java))
    confluent_produce(librd)
    by_aiokafka, by_confluent = placement(java), placement(librd)
    assert by_aiokafka == {k: partition_for(k, 4) for k in keys}
    same = sum(by_aiokafka[k] == by_confluent[k] for k in keys)
    print(f"request ids co-located by a confluent-kafka and an aiokafka producer: {same} of 50")
    assert same < len(keys)
    # librdkafka's consistent_random hashes a key with CRC32.
    assert by_confluent == {k: zlib.crc32(k) % 4 for k in keys}
