"""The join stage on the embedded broker: one to three processes in a consumer group join
predictions produced by confluent-kafka (librdkafka's default partitioner) with outcomes placed
by murmur2 (as a Java producer places them), re-route what is misplaced, and send observations
whose event-time merge decides exactly what the engine decides on the same events in event-time
order."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.events import OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.placement import join_partition
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.pipeline.engine import Engine, Event
from driftswitch.streams.pipeline.merge import Batch, Merge, decode_batch, encode_batch
from driftswitch.streams.pipeline.observations import Decider, build_flags
from driftswitch.streams.service import joinstage
from driftswitch.streams.service.joinstage import JoinStage
from driftswitch.streams.service.startup import member_record
from driftswitch.streams.service.worker import WorkerSettings, state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import (
    ACCURACY_GUARDRAILS,
    STAGE_TEST_JOIN,
    produce_in_event_order,
    read_topic,
    until,
)

pytestmark = pytest.mark.xdist_group("broker")

GUARDRAILS = ACCURACY_GUARDRAILS

SCENARIO = Scenario(
    variants=(
        VariantSpec("control", weight=50, accuracy=0.9),
        VariantSpec("candidate", weight=50, accuracy=0.9, accuracy_after=0.7),
    ),
    requests=2000,
    change_at=600,
    rate=50.0,
    label_delay=3.0,
    label_fraction=0.95,
    seed=7,
)


def _key(ev: Event) -> tuple[float, str, int]:
    return (ev.ts, ev.request_id, 0 if isinstance(ev, PredictionEvent) else 1)


def _reference(config: Config, events: list[Event]) -> tuple[list[dict[str, Any]], int]:
    engine = Engine(config)
    outputs = engine.process(sorted(events, key=_key)).outputs
    join = engine.snapshot()["join"]
    assert isinstance(join, dict)
    joined = join["joined"]
    assert isinstance(joined, int)
    return [e.event.model_dump(mode="json") for e in outputs], joined


class _Merges:
    """One merge per observations partition, as the decide stage keeps them (a join
    partition's batch reaches every observations partition, each read at its own pace), with
    their counters summed."""

    def __init__(self, sources: int, partitions: int) -> None:
        self.merges = [Merge(sources) for _ in range(partitions)]

    @property
    def late(self) -> int:
        return sum(m.late for m in self.merges)

    @property
    def duplicates(self) -> int:
        return sum(m.duplicates for m in self.merges)

    def done(self) -> bool:
        return all(m.bound == math.inf and not len(m) for m in self.merges)


async def _decide(
    bootstrap: str, topics: Topics, config: Config, expected: int, limit_s: float
) -> tuple[list[dict[str, Any]], _Merges]:
    """Read the observations topic into the merges and a decider until ``expected``
    observations were applied and every join partition is idle; AssertionError if that is not
    reached in ``limit_s`` seconds (a wait that runs out must not pass for one that ended)."""
    merges = _Merges(topics.predictions.partitions, topics.observations.partitions)
    decider = Decider(build_flags(config))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    # From offset 0, as the decide stage reads: several join processes write this topic at once,
    # and the embedded broker once named a wrong start for such a partition (seek_to_start).
    tps = [
        kafka.topic_partition(topics.observations.name, p)
        for p in range(topics.observations.partitions)
    ]
    consumer.assign(tps)
    kafka.seek_to_start(consumer, *tps)
    outputs: list[dict[str, Any]] = []
    applied = 0
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while loop.time() < deadline:
            got = await consumer.getmany(timeout_ms=200)
            for tp, records in got.items():
                merge = merges.merges[tp.partition]
                for rec in records:
                    late = merge.add(decode_batch(rec.value))
                    applied += len(late)
                    outputs += [e.event.model_dump(mode="json") for e in decider.process(late)]
            for merge in merges.merges:
                released = merge.release()
                applied += len(released)
                outputs += [e.event.model_dump(mode="json") for e in decider.process(released)]
            if applied >= expected and merges.done():
                break
        else:
            raise AssertionError(
                f"in {limit_s} s: {applied} of {expected} observations applied, every join "
                f"partition idle and released: {merges.done()}"
            )
    finally:
        await consumer.stop()
    return outputs, merges


@contextlib.asynccontextmanager
async def _running(
    broker: EmbeddedBroker, topics: Topics, config: Config, name: str, **options: Any
) -> AsyncIterator[JoinStage]:
    """A join stage running in this event loop, in group ``<flags topic>-<name>`` (``options``:
    more :class:`WorkerSettings`), stopped (and waited for) on leaving the block."""
    settings = WorkerSettings(
        bootstrap=broker.bootstrap, topics=topics, group=f"{topics.flags.name}-{name}", **options
    )
    stage = JoinStage(config, settings)
    task = asyncio.ensure_future(stage.run())
    try:
        yield stage
    finally:
        stage.stop.set()
        await task


@pytest.mark.parametrize(
    ("processes", "on_disk", "outcomes_by"),
    [(1, False, "murmur2"), (2, False, "murmur2"), (3, False, "murmur2"), (2, True, "murmur2"),
     (2, False, "crc32")],
)  # fmt: skip
def test_join_stage_processes_decide_like_the_event_ordered_engine(
    broker: EmbeddedBroker,
    topics: Topics,
    processes: int,
    on_disk: bool,
    outcomes_by: str,
    tmp_path: Path,
) -> None:
    """With ``outcomes_by="crc32"`` nothing is re-routed: the partitions' idle horizons must
    still reach each other (markers on the repartition topic), or the release never ends."""
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + STAGE_TEST_JOIN)
    events = list(simulate(SCENARIO))
    reference, joined = _reference(config, events)
    assert reference, "the scenario must decide something"
    predictions = sum(isinstance(ev, PredictionEvent) for ev in events)
    misplaced = sum(
        not isinstance(ev, PredictionEvent) for ev in events
    )  # an upper bound; the exact count is measured below

    async def scenario() -> tuple[list[dict[str, Any]], _Merges, list[JoinStage], list[set[int]]]:
        settings = WorkerSettings(
            bootstrap=broker.bootstrap,
            topics=topics,
            group=f"{topics.flags.name}-g",
            snapshot_interval=0.5,
            session_timeout_ms=6000,
            state_dir=tmp_path if on_disk else None,
        )
        stages = [JoinStage(config, settings) for _ in range(processes)]
        tasks = [asyncio.ensure_future(s.run()) for s in stages]
        try:
            send = partial(produce_in_event_order, outcomes_by=outcomes_by)
            await asyncio.get_running_loop().run_in_executor(
                None, send, broker.bootstrap, topics, events
            )
            outputs, merge = await _decide(
                broker.bootstrap, topics, config, predictions + joined, limit_s=180
            )
            owned = [set(s.status()["partitions"]) for s in stages]
        finally:
            for s in stages:
                s.stop.set()
            await asyncio.gather(*tasks)
        return outputs, merge, stages, owned

    outputs, merge, stages, owned = asyncio.run(scenario())
    assert merge.late == 0
    assert outputs == reference
    rerouted = sum(s.counters["rerouted"] for s in stages)
    # confluent-kafka placed every prediction where the join expects it (CRC-32); murmur2
    # misplaced some outcomes, which were re-routed.
    if outcomes_by == "crc32":
        assert rerouted == 0
    else:
        assert 0 < rerouted <= misplaced
    if on_disk:
        assert any((tmp_path / f"{topics.flags.name}-g.join" / "0").iterdir())
    # The partitions were shared: each process owned some, together all, none twice.
    assert all(owned)
    assert sorted(i for o in owned for i in o) == list(range(topics.predictions.partitions))


def test_confluent_kafka_places_keys_where_the_join_expects_them(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    """The join partition is librdkafka's default placement of a record keyed by request id."""
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    placed: dict[str, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None
        placed[msg.key().decode()] = msg.partition()

    ids = [f"req-{i}" for i in range(200)]
    for rid in ids:
        producer.produce(topics.predictions.name, b"{}", rid.encode(), on_delivery=delivered)
    assert producer.flush(30) == 0
    n = topics.predictions.partitions
    assert {rid: join_partition(rid, n) for rid in ids} == placed
    assert len(set(placed.values())) == n


LATE = Scenario(
    variants=(
        VariantSpec("control", weight=50, accuracy=0.9),
        VariantSpec("candidate", weight=50, accuracy=0.9, accuracy_after=0.8),
    ),
    requests=20_000,
    change_at=5_000,
    rate=40.0,
    label_delay=1800.0,
    label_fraction=0.95,
    seed=3,
)


@pytest.mark.slow
def test_labels_thirty_minutes_late_join_exactly_on_disk_across_a_restart(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    """Outcomes 30 minutes of event time (on average) after their predictions, so tens of
    thousands of entries wait at once, far beyond ``join.max_pending`` (which bounds only the
    in-memory join): on disk nothing is evicted, the join stage stops and a second one continues
    from the stores, and every label joins, exactly as the event-ordered engine joins them."""
    guardrails = GUARDRAILS
    yaml = (
        config_yaml(LATE, guardrails)
        + "join:\n  ttl: 86400\n  max_pending: 1000\n  idle_after: 5\n"
    )
    config = parse_config(yaml)
    events = list(simulate(LATE))
    reference_config = parse_config(config_yaml(LATE, guardrails) + "join:\n  ttl: 86400\n")
    reference, joined = _reference(reference_config, events)
    assert [r["cause"]["action"] for r in reference][:1] == ["kill"]
    predictions = sum(isinstance(ev, PredictionEvent) for ev in events)
    half = len(events) // 2

    async def scenario() -> tuple[list[dict[str, Any]], _Merges, int, int]:
        settings = WorkerSettings(
            bootstrap=broker.bootstrap,
            topics=topics,
            group=f"{topics.flags.name}-late",
            snapshot_interval=0.5,
            state_dir=tmp_path,
        )
        loop = asyncio.get_running_loop()
        first = JoinStage(config, settings)
        task = asyncio.ensure_future(first.run())
        await loop.run_in_executor(
            None, produce_in_event_order, broker.bootstrap, topics, events[:half]
        )
        peak = 0
        while first.counters["records"] < half:  # read the first half (plus re-routes)
            peak = max(peak, sum(first.status()["pending"].values()))
            await asyncio.sleep(0.2)
        peak = max(peak, sum(first.status()["pending"].values()))
        first.stop.set()
        await task
        # A clean stop leaves the group and removes the process's member record; the next
        # stage on the directory records its own once assigned.
        members = tmp_path / f"{settings.group}.join"
        assert not list(members.glob("member-*.json"))
        second = JoinStage(config, settings)
        task = asyncio.ensure_future(second.run())
        try:
            await until("the second stage's assignment", lambda: bool(second.parts))
            record = orjson.loads(member_record(members).read_bytes())
            assert second._member is not None
            assert record["member_id"] == second._member.member_id
            assert {"assigned", "restored"} <= set(second.status()["startup_seconds"])
            await loop.run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, events[half:]
            )
            outputs, merge = await _decide(
                broker.bootstrap, topics, config, predictions + joined, limit_s=600
            )
        finally:
            second.stop.set()
            await task
        return outputs, merge, peak, second.counters["join_entries_lost"]

    outputs, merge, peak, lost = asyncio.run(scenario())
    assert peak > 10 * config.join.max_pending  # far more waited than the in-memory bound
    assert lost == 0
    assert merge.late == 0
    assert outputs == reference


def test_a_reloaded_config_changes_what_the_join_accepts(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    """A flag the config lacks is dead-lettered as unknown; after ``reconfigure`` (SIGHUP in a
    join process) with a config that has it, its events are joined, the pending entries kept."""
    before = parse_config(config_yaml(SCENARIO, GUARDRAILS))
    search = "  search:\n    default: a\n    variants:\n      a: {weight: 100, value: a}\n"
    after = parse_config(config_yaml(SCENARIO, GUARDRAILS) + search)

    def prediction(rid: str, flag: str) -> PredictionEvent:
        variant = "a" if flag == "search" else "control"
        return PredictionEvent(request_id=rid, flag=flag, variant=variant, ts=1.0, prediction=1)

    async def scenario() -> tuple[dict[str, int], dict[str, int], int]:
        async with _running(broker, topics, before, "reload") as stage:
            loop = asyncio.get_running_loop()

            async def send(events: list[Event]) -> None:
                await loop.run_in_executor(
                    None, produce_in_event_order, broker.bootstrap, topics, events
                )

            await send([prediction("r1", "search"), prediction("r2", "ranker")])
            await until(
                "r1 rejected, r2 accepted",
                lambda: stage.ingest.rejected["unknown_flag"] == 1 and stage.ingest.accepted == 1,
            )
            rejected_before = dict(stage.ingest.rejected)
            await stage.reconfigure(after)
            await send([prediction("r3", "search")])
            await until("r3 read", lambda: stage.ingest.accepted >= 2)
            pending = sum(stage.status()["pending"].values())
            return rejected_before, dict(stage.ingest.rejected), pending

    rejected_before, rejected_after, pending = asyncio.run(scenario())
    assert rejected_before == {"unknown_flag": 1}
    assert rejected_after == {"unknown_flag": 1}  # r3 was accepted
    assert pending == 2  # r2 (kept across the reload) and r3


def test_partitions_that_fall_idle_release_everything_even_when_their_watermark_stays(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    """Every event at one event time and nothing re-routed: when the partitions' topics fall
    idle, their watermarks do not move, so no batch of observations needs to go out; each must
    still tell the others it is idle (its re-route horizon), or every partition waits for the
    others and the last observations are never released."""
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + STAGE_TEST_JOIN)
    events: list[Event] = []
    for i in range(200):
        rid = f"same-time-{i}"
        variant = "candidate" if i % 2 else "control"
        events.append(
            PredictionEvent(request_id=rid, flag="ranker", variant=variant, ts=5.0, prediction=1)
        )
        events.append(OutcomeEvent(request_id=rid, ts=5.0, label=1))

    async def scenario() -> _Merges:
        async with _running(broker, topics, config, "still"):
            send = partial(produce_in_event_order, outcomes_by="crc32")
            await asyncio.get_running_loop().run_in_executor(
                None, send, broker.bootstrap, topics, events
            )
            _, merges = await _decide(broker.bootstrap, topics, config, 400, limit_s=60)
        return merges

    merges = asyncio.run(scenario())
    assert merges.done(), [(m.bound, len(m), m.idle) for m in merges.merges]


def test_an_idle_partition_repeats_that_it_is_idle_over_a_zombies_late_word(
    broker: EmbeddedBroker, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that lost join partition 0 while paused (a zombie, woken later) lands one
    last batch and one last round of re-route markers after the owner said the partition is
    idle. They say "busy": the merge, and the other partitions (which then say "busy" too),
    believe the last word they read, so nothing more would be released until input arrived.
    The owner repeats its idle batch and markers every ``IDLE_REPEAT`` seconds, which undoes
    both."""
    monkeypatch.setattr(joinstage, "IDLE_REPEAT", 1.0)
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + STAGE_TEST_JOIN)
    events = [ev for ev in sorted(simulate(SCENARIO), key=_key) if isinstance(ev, PredictionEvent)]
    name, outputs = topics.observations.name, topics.observations.partitions

    async def feed(
        merges: _Merges, consumer: AIOKafkaConsumer, ends: dict[int, int] | None = None
    ) -> None:
        """Read into ``merges`` every record below ``ends`` (per observations partition), or,
        without ``ends``, until every merge has released everything."""
        read = dict.fromkeys(ends or {}, 0)

        def more() -> bool:
            if ends is None:
                return not merges.done()
            return any(read[q] < ends[q] for q in ends)

        while more():
            got = await consumer.getmany(timeout_ms=200)
            for tp, records in got.items():
                for rec in records:
                    if ends is not None and rec.offset >= ends[tp.partition]:
                        consumer.seek(tp, ends[tp.partition])  # read again by the next feed
                        break
                    merges.merges[tp.partition].add(decode_batch(rec.value))
                    read[tp.partition] = rec.offset + 1
            for merge in merges.merges:
                merge.release()

    async def scenario() -> tuple[bool, bool, bool]:
        async with _running(broker, topics, config, "zombie"):
            await asyncio.get_running_loop().run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, events
            )
            _, merges = await _decide(broker.bootstrap, topics, config, len(events), limit_s=60)
            idle_before = merges.done()
            zombie = Producer({"bootstrap.servers": broker.bootstrap})
            late = Batch(0, {}, -math.inf, idle=False, observations=[], run="zombie")
            ends: dict[int, int] = {}

            def landed(err: Any, msg: Any) -> None:
                assert err is None, err
                ends[msg.partition()] = msg.offset() + 1

            marker = orjson.dumps({"source": 0, "horizon": None, "idle": False, "run": "zombie"})
            for p in range(1, topics.repartition.partitions):
                zombie.produce(
                    topics.repartition.name,
                    marker,
                    partition=p,
                    headers=[(joinstage.HEADER_MARKER, b"1")],
                )
            for q in range(outputs):
                zombie.produce(name, encode_batch(late), key=b"0", partition=q, on_delivery=landed)
            assert zombie.flush(10) == 0
            assert sorted(ends) == list(range(outputs))
            merges = _Merges(topics.predictions.partitions, outputs)
            consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
            await consumer.start()
            try:
                tps = [kafka.topic_partition(name, q) for q in range(outputs)]
                consumer.assign(tps)
                kafka.seek_to_start(consumer, *tps)
                await feed(merges, consumer, ends)  # up to the zombie's batch, included
                held = not merges.done()
                with contextlib.suppress(TimeoutError):  # never released: checked below
                    await asyncio.wait_for(feed(merges, consumer), timeout=30)
            finally:
                await consumer.stop()
            return idle_before, held, merges.done()

    idle_before, held, released = asyncio.run(scenario())
    assert idle_before  # every partition had said it was idle
    assert held  # the zombie's late "busy" held the merge back
    assert released  # the owner's repeat released everything again, with no new input


def test_an_idle_join_stage_repeating_itself_stays_quiet_and_takes_no_checkpoints(
    broker: EmbeddedBroker, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle repeats are markers to the other join partitions, read like input: they must
    not make a partition due for a checkpoint (each serialises its pending entries) nor keep
    the loop from its long idle waits."""
    monkeypatch.setattr(joinstage, "IDLE_REPEAT", 0.5)
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + STAGE_TEST_JOIN)
    events = [ev for ev in sorted(simulate(SCENARIO), key=_key) if isinstance(ev, PredictionEvent)]

    async def scenario() -> tuple[int, int, int, int]:
        async with _running(broker, topics, config, "repeats") as stage:
            await asyncio.get_running_loop().run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, events
            )
            await until("all read", lambda: stage.counters["observations"] == len(events), 120)
            await until("idle and checkpointed", stage._quiet, 60)
            checkpoints, markers = stage.counters["checkpoints"], stage.counters["markers"]
            quiet = 0
            for _ in range(40):  # 4 s: about 8 rounds of repeats
                await asyncio.sleep(0.1)
                quiet += stage._quiet()
            unsaved = sum(p.markers_unsaved for p in stage.parts.values())
            return (
                stage.counters["checkpoints"] - checkpoints,
                stage.counters["markers"] - markers,
                quiet,
                unsaved,
            )

    checkpoints, markers, quiet, unsaved = asyncio.run(scenario())
    assert markers > 0  # the partitions repeated their idle horizons to each other
    assert unsaved > 0  # and read each other's
    assert checkpoints == 0
    assert quiet >= 20, quiet  # mostly quiet (an idle data-loss check is not)


def test_a_batch_that_read_new_input_does_not_say_its_partition_is_idle(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    """Every join partition falls idle, then a burst arrives (outcomes placed by murmur2, so
    some are re-routed). A batch that read new predictions or outcomes must not be idle: its
    topics were not at their end. Counting a topic read to its end since the first fetch that
    found it there, however many records came after, sent the first batch of a burst that one
    fetch read whole as idle, and the merge released it at once, ahead of the other partitions'
    older events (which then came late)."""
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + "join:\n  idle_after: 1\n")
    events = sorted(simulate(SCENARIO), key=_key)[:600]
    predictions = sum(isinstance(ev, PredictionEvent) for ev in events)
    joined = _reference(config, events)[1]

    async def scenario() -> int:
        async with _running(broker, topics, config, "burst") as stage:
            await _decide(broker.bootstrap, topics, config, 0, limit_s=60)  # all idle
            await asyncio.get_running_loop().run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, events
            )
            await _decide(broker.bootstrap, topics, config, predictions + joined, limit_s=120)
        return int(stage.counters["rerouted"])

    rerouted = asyncio.run(scenario())
    assert rerouted > 0
    inputs = {0, 1}  # the predictions and outcomes topics' indexes in a batch's read positions
    checked = 0
    for q in range(topics.observations.partitions):
        before: dict[tuple[int, str], dict[int, int]] = {}
        for rec in read_topic(broker.bootstrap, topics.observations.name, q):
            batch = decode_batch(rec.value)
            read = {t: o for t, o in batch.read.items() if t in inputs}
            previous = before.get((batch.source, batch.run), {})
            if any(o > previous.get(t, 0) for t, o in read.items()):
                assert not batch.idle, (q, batch.source, read, previous)
                checked += 1
            before[(batch.source, batch.run)] = read
    assert checked > 0


def test_the_status_counts_the_observations_of_every_record_it_shows_read(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    """Whenever the join stage's loop waits (on a send), ``status()`` counts the observations of
    every input record its read positions cover: what a wait for the decide stage (``done`` in
    ``benchmarks/pipeline.py``, ``caught_up`` in ``streams/tools/testing.py``) compares with.
    Predictions only, placed in their join partitions: each is one observation. Every send
    yields to the event loop here, as a full producer batch makes aiokafka wait."""
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + STAGE_TEST_JOIN)
    events = [ev for ev in sorted(simulate(SCENARIO), key=_key) if isinstance(ev, PredictionEvent)]
    seen: list[tuple[int, int]] = []

    async def scenario() -> None:
        async with _running(broker, topics, config, "consistent") as stage:
            await until("the producer open", lambda: stage._producer is not None)
            producer = stage._producer
            send = producer.send

            async def yielding_send(*args: Any, **kwargs: Any) -> Any:
                status = stage.status()
                read = sum(r.get(topics.predictions.name, 0) for r in status["read"].values())
                seen.append((read, status["observations"]))
                await asyncio.sleep(0)
                return await send(*args, **kwargs)

            producer.send = yielding_send
            await asyncio.get_running_loop().run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, events
            )
            await until("all read", lambda: stage.counters["observations"] == len(events), 120)

    asyncio.run(scenario())
    assert any(read > 0 for read, _ in seen)
    assert [(read, observations) for read, observations in seen if read != observations] == []


def test_an_idle_join_stage_reads_records_that_arrive_during_its_long_idle_wait(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    """Once every partition is idle and sent, the loop's ``getmany`` waits ``idle_poll_ms``
    (here an hour) instead of ``poll_ms``: records that a fetch brings must end that wait, or an
    idle join stage would answer new input only when its idle poll runs out."""
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + STAGE_TEST_JOIN)
    events = [ev for ev in sorted(simulate(SCENARIO), key=_key) if isinstance(ev, PredictionEvent)]
    hour_ms = 3_600_000
    timeouts: list[int] = []

    async def scenario() -> tuple[int, bool]:
        async with _running(broker, topics, config, "wake", idle_poll_ms=hour_ms) as stage:
            await until("assigned", lambda: stage._member is not None and bool(stage.parts))
            member = stage._member
            assert member is not None
            getmany = member.getmany

            async def recording(*partitions: Any, **kwargs: Any) -> Any:
                timeouts.append(kwargs["timeout_ms"])
                return await getmany(*partitions, **kwargs)

            member.getmany = recording
            await until("an idle wait begun", lambda: hour_ms in timeouts)
            await asyncio.get_running_loop().run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, events
            )
            await until("all read", lambda: stage.counters["observations"] == len(events))
            quiet_while_reading = stage._quiet()
            await until("idle again", stage._quiet)
            return len(stage.parts), quiet_while_reading

    owned, quiet_while_reading = asyncio.run(scenario())
    assert owned == topics.predictions.partitions
    assert not quiet_while_reading  # the partitions read to their end are busy for idle_after
    assert WorkerSettings(bootstrap="", topics=topics).poll_ms in timeouts


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_checkpoint_holds_the_state_when_taken_and_is_written_behind_the_loop(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, on_disk: bool
) -> None:
    """The loop's checkpoints (``behind``) take the state at once; with the entries in memory a
    task of its own writes it, and what reaches the state topic is the state when taken, not
    what the loop read meanwhile. With a disk store the checkpoint is written before the call
    returns (its commit cannot wait)."""
    config = parse_config(config_yaml(SCENARIO, GUARDRAILS) + STAGE_TEST_JOIN)
    predictions = [
        ev for ev in sorted(simulate(SCENARIO), key=_key) if isinstance(ev, PredictionEvent)
    ]
    first, later = predictions[:50], predictions[50:80]
    options: dict[str, Any] = {"snapshot_interval": 3600.0}  # only the checkpoints taken here
    if on_disk:
        options["state_dir"] = tmp_path

    async def scenario() -> tuple[bool, dict[int, dict[str, int]], dict[int, Any], int]:
        await ensure_topics(broker.bootstrap, [state_topic(topics)])  # as `driftswitch run` does
        async with _running(broker, topics, config, f"behind-{on_disk}", **options) as stage:
            loop = asyncio.get_running_loop()

            async def send(events: list[Event]) -> None:
                await loop.run_in_executor(
                    None, produce_in_event_order, broker.bootstrap, topics, events
                )

            await send(first)
            await until("first read", lambda: stage.ingest.accepted == len(first))
            async with stage._lock:
                parts = list(stage.parts.values())
                taken = {p.index: {stage._names[t]: o for t, o in p.read.items()} for p in parts}
                await stage._checkpoint(parts, behind=True)
                writing = stage._writing.pending
            await send(later)
            await until("later read", lambda: stage.ingest.accepted == len(first) + len(later))
            await stage._writing.settle()
            saved = await stage._load(sorted(taken))
            return writing, taken, saved, stage.counters["checkpoints"]

    writing, taken, saved, checkpoints = asyncio.run(scenario())
    assert writing is not on_disk
    assert checkpoints == len(taken) == topics.predictions.partitions
    for index, positions in taken.items():
        snap = saved[index]
        assert {t: o[index] for t, o in snap.offsets.items()} == positions
    joins = [saved[i].engine["joiner"]["join"] for i in taken]
    if on_disk:
        assert all(join["stored"] for join in joins)  # the entries are in the stores
    else:
        assert sum(len(join["predictions"]) for join in joins) == len(first)
