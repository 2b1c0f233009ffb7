"""The decide stage (`driftswitch run --stage decide`) on the embedded broker.

The join stage is played here by :class:`~driftswitch.streams.pipeline.observations.Joiner` on
two join partitions that read their predictions and outcomes with skew, one of which restarts
from a checkpoint and sends observations again under a new run id. Its observation batches go,
as the join stage sends them, to every partition of the observations topic, each with the
observations of the flags routed there; one undecodable record is mixed in. A decide worker
reads them, is stopped mid-stream (cleanly, or by SIGKILL right after the deciding input was
sent) and a second one resumes from its snapshot. What it
publishes must be exactly what the engine decides on the same events in event-time order
(``driftswitch backtest``'s order), nothing decided twice, duplicates dropped and counted, the bad
record dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import signal
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from driftswitch.streams.config.model import Config, load_config
from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.pipeline.engine import Engine, Event
from driftswitch.streams.pipeline.ingest import HEADER_REASON
from driftswitch.streams.pipeline.merge import Batch, Clock, Merge, encode_batch
from driftswitch.streams.pipeline.observations import Decider, Joiner, build_flags
from driftswitch.streams.service.worker import HEADER_SOURCE, state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import (
    ACCURACY_GUARDRAILS,
    KILL_ON_ACCURACY,
    WorkerProcess,
    event_records,
    flag_changes,
    read_topic,
)

SCENARIO = Scenario(
    requests=12_000,
    change_at=6_000,
    rate=100.0,
    seed=11,
    label_delay=3.0,
    variants=(
        VariantSpec("control", weight=70, accuracy=0.90),
        VariantSpec("candidate", weight=30, accuracy=0.90, accuracy_after=0.75),
    ),
)
#: A kill and a warning, for the test of a snapshot of another stage.
GUARDRAILS = ACCURACY_GUARDRAILS
STAGED = Scenario(
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
#: Join partitions (the input topics' partition count).
PARTS = 2
GARBAGE = b'{"v": 1, "source": 0, "observations": "not a batch"'


def _key(ev: Event) -> tuple[float, str, int]:
    return (ev.ts, ev.request_id, 0 if isinstance(ev, PredictionEvent) else 1)


@dataclass
class _Partition:
    """One join partition: its predictions (0) and outcomes (1), read positions, join, clock."""

    topics: list[list[Event]]
    joiner: Joiner
    clock: Clock = field(default_factory=Clock)
    pos: list[int] = field(default_factory=lambda: [0, 0])
    run: str = "first"
    checkpoint: tuple[dict[str, Any], list[int], dict[int, float]] | None = None


def join_stage(
    config: Config, events: list[Event], rng: random.Random
) -> tuple[list[Batch], list[list[list[Event]]]]:
    """The batches two join partitions send, in send order, and each partition's topics.

    Partition 0 checkpoints after its 10th batch and restarts from that checkpoint after its
    40th: it reads and sends again what it had read since, under another run id.
    """
    topics: list[list[list[Event]]] = [[[], []] for _ in range(PARTS)]
    for ev in events:
        p = zlib.crc32(ev.request_id.encode()) % PARTS
        topics[p][0 if isinstance(ev, PredictionEvent) else 1].append(ev)
    parts = [_Partition(t, Joiner(config, track=True)) for t in topics]
    sent: list[Batch] = []
    batches_of_0 = 0
    while live := [
        i for i, p in enumerate(parts) if any(p.pos[t] < len(p.topics[t]) for t in (0, 1))
    ]:
        i = rng.choice(live)
        part = parts[i]
        if i == 0 and batches_of_0 == 40:
            assert part.checkpoint is not None
            state, pos, seen = part.checkpoint
            part.joiner = Joiner(config, track=True)
            part.joiner.restore(json.loads(json.dumps(state)))
            part.pos = list(pos)
            part.clock = Clock()
            part.clock.seen = dict(seen)
            part.run = "restarted"
        t = rng.choice([t for t in (0, 1) if part.pos[t] < len(part.topics[t])])
        start = part.pos[t]
        end = min(len(part.topics[t]), start + rng.randint(1, 300))
        read = part.topics[t][start:end]
        part.pos[t] = end
        observations, rejections = part.joiner.process(read, [(t, o) for o in range(start, end)])
        assert not rejections
        for ev in read:
            part.clock.observe(t, ev.ts)
        busy = [u for u in (0, 1) if part.pos[u] < len(part.topics[u])]
        wm, idle = part.clock.watermark(busy)
        plain = json.loads(json.dumps(observations))
        sent.append(Batch(i, dict(enumerate(part.pos)), wm, idle, plain, part.run))
        if i == 0:
            batches_of_0 += 1
            if batches_of_0 == 10:
                # Serialised at once, as the join stage's checkpoint is: the state holds the
                # join's own maps (JoinBuffer.to_state).
                saved = json.loads(json.dumps(part.joiner.to_state()))
                part.checkpoint = (saved, list(part.pos), dict(part.clock.seen))
    assert batches_of_0 > 40  # the restart happened
    return sent, topics


def routed(batches: list[Batch], partitions: int) -> list[tuple[int, Batch]]:
    """Each batch to every observations partition, with the observations of its flags."""
    return [
        (
            q,
            Batch(
                b.source,
                b.read,
                b.watermark,
                b.idle,
                [o for o in b.observations if zlib.crc32(o[2].encode()) % partitions == q],
                b.run,
            ),
        )
        for b in batches
        for q in range(partitions)
    ]


def reference(config: Config, events: list[Event]) -> tuple[list[Any], Engine, list[str]]:
    """The engine's flag changes on the events in event-time order, the engine after them,
    and the request id of each change's deciding event."""
    engine = Engine(config)
    ordered = sorted(events, key=_key)
    changes: list[Any] = []
    deciders: list[str] = []
    for start in range(0, len(ordered), 700):
        for e in engine.process(ordered[start : start + 700]).outputs:
            if isinstance(e.event, FlagChangeEvent):
                changes.append(e.event.model_dump(mode="json"))
                deciders.append(ordered[start + e.index].request_id)
    return changes, engine, deciders


def produce(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    """``(partition, value)`` records with confluent-kafka, in order per partition."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "max.in.flight.requests.per.connection": 1,
        }
    )
    for partition, value in records:
        while True:
            try:
                producer.produce(topic, value, str(partition).encode(), partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(30) == 0


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_decide_stage_decides_like_event_order_across_a_restart(
    broker: EmbeddedBroker, tmp_path: Path, stop: str
) -> None:
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, KILL_ON_ACCURACY))
    config = load_config(config_path)
    events: list[Event] = list(simulate(SCENARIO))
    batches, inputs = join_stage(config, events, random.Random(3))

    prefix = f"decide-{secrets.token_hex(3)}"
    topics = Topics.with_prefix(prefix, partitions=PARTS)
    obs_topic = topics.observations
    asyncio.run(ensure_topics(broker.bootstrap, [*topics.specs(), state_topic(topics)]))
    records = [(q, encode_batch(b)) for q, b in routed(batches, obs_topic.partitions)]

    # What the decide stage must do: per observations partition, a merge in send order.
    expected, engine, deciders = reference(config, events)
    assert [c["cause"]["action"] for c in expected] == ["kill"]
    merges = {q: Merge(PARTS, config.join.allowed_lateness) for q in range(obs_topic.partitions)}
    decider = Decider(build_flags(config))
    merged: list[Any] = []
    decided = 0
    for q, b in routed(batches, obs_topic.partitions):
        late = merges[q].add(b)
        released = merges[q].release()
        decided += len(late) + len(released)
        merged += [e.event.model_dump(mode="json") for e in decider.process(late + released)]
    assert merged == expected  # the model the worker is held to
    duplicates = sum(m.duplicates for m in merges.values())
    assert duplicates > 0
    assert all(m.late == 0 for m in merges.values())

    # The bad record goes to the flag's partition, mid-stream, before the cut.
    flag_partition = zlib.crc32(b"ranker") % obs_topic.partitions
    cut = (len(records) * 2 // 5) // obs_topic.partitions * obs_topic.partitions
    first_part = [*records[: cut // 2], (flag_partition, GARBAGE), *records[cut // 2 : cut]]
    args = ["--stage", "decide", "--snapshot-interval", "0.5"]
    log = tmp_path / "decide.log"
    produce(broker.bootstrap, obs_topic.name, first_part)
    # SIGKILL just after the kill's input (record 651 of 800 here) is sent, wherever the
    # worker is then: decisions published since its last snapshot are decided again on resume.
    more = (len(records) * 83 // 100) // obs_topic.partitions * obs_topic.partitions
    with WorkerProcess(broker.bootstrap, topics, config_path, log, args=args) as first:
        first.wait_for(
            "the first part read and a snapshot",
            lambda s: s["records"] == len(first_part) and s["snapshots_written"] >= 1,
            60,
        )
        status = first.health() or {}
        assert status["stage"] == "decide"
        assert status["merge"]["late"] == 0
        assert status["rejected"] == {"bad_observation_batch": 1}
        if stop == "sigterm":
            first.stop()  # a clean stop writes a final snapshot
            assert first.proc.returncode == 0
        else:
            produce(broker.bootstrap, obs_topic.name, records[cut:more])
            first.wait_for("more read", lambda s: s["records"] > len(first_part), 30)
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
            cut = more

    produce(broker.bootstrap, obs_topic.name, records[cut:])
    with WorkerProcess(broker.bootstrap, topics, config_path, log, args=args) as second:
        second.wait_for("everything read", lambda s: s["records"] == len(records) + 1, 60)
        status = second.health() or {}
        assert status["resumed_from_snapshot"] is not None
        # The snapshot named the buffered observations by tag; the restart read them again.
        text = log.read_text()
        rebuilt = re.search(r"merge buffers rebuilt from \S+: (\d+) observations", text)
        assert rebuilt is not None
        assert int(rebuilt.group(1)) > 0
        assert "gone from the broker" not in text
        merge = status["merge"]
        assert merge["duplicates"] == duplicates
        assert merge["late"] == 0
        assert merge["buffered"] == 0  # both join partitions said they are idle
        assert status["observations"] == decided  # each observation decided once
        with urllib.request.urlopen(f"{second.url}/metrics", timeout=5) as r:
            exposed = {
                s.name: s.value
                for family in text_string_to_metric_families(r.read().decode())
                for s in family.samples
            }
        assert exposed["driftswitch_duplicate_observations_total"] == duplicates
        assert exposed["driftswitch_late_observations_total"] == 0
        assert exposed["driftswitch_merge_buffered_observations"] == 0
        assert exposed["driftswitch_lost_observations_total"] == 0
        assert merge["lost"] == 0
        # No statistic counted twice: the decide stage's equal the engine's in event order.
        live = second.get("/api/v1/flags/ranker")["evaluation"]["variants"]
        offline: Any = engine.snapshot()
        for variant in ("control", "candidate"):
            want = offline["flags"]["ranker"]["variants"][variant]
            for key in ("predictions", "joined", "labelled", "accuracy", "errors"):
                assert live[variant][key] == want[key], (variant, key)

    flags = read_topic(broker.bootstrap, topics.flags.name)
    changes = [FlagChangeEvent.model_validate_json(r.value) for r in flags]
    assert [c.version for c in changes] == [1, 2]  # nothing decided or published twice
    assert [c.model_dump(mode="json") for c in changes[1:]] == expected
    # The kill names the input that decided it: the same request as in event order.
    source = dict(flags[1].headers)[HEADER_SOURCE].decode()
    topic, partition, offset = source.rsplit("/", 2)
    t = [topics.predictions.name, topics.outcomes.name].index(topic)
    assert inputs[int(partition)][t][int(offset)].request_id == deciders[0]

    dead = read_topic(broker.bootstrap, topics.deadletter.name)
    reasons = [(dict(r.headers)[HEADER_REASON].decode(), r.value) for r in dead]
    if stop == "sigterm":
        assert reasons == [("bad_observation_batch", GARBAGE)]
    else:  # dead-lettering is at least once: a replay after SIGKILL may send it again
        assert reasons
        assert set(reasons) == {("bad_observation_batch", GARBAGE)}


def test_a_decide_worker_does_not_resume_a_single_workers_snapshot(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, produce: Any
) -> None:
    """A deployment moving from one worker to the two stages under the same group: the decide
    worker starts from the published flag states, not from the single worker's state (whose
    offsets are of other topics), and says so."""
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(STAGED, GUARDRAILS))
    events: list[Event] = list(simulate(STAGED))[:500]
    produce(event_records(topics, events))
    log = tmp_path / "worker.log"
    args = ["--snapshot-interval", "0.5"]
    single_args = ["--stage", "single", *args]  # a single worker on purpose
    with WorkerProcess(broker.bootstrap, topics, config_path, log, args=single_args) as single:
        single.wait_for(
            "all read and a snapshot",
            lambda s: s["records"] == len(events) and s["snapshots_written"] >= 1,
            60,
        )
        single.stop()
    decide_args = ["--stage", "decide", *args]
    with WorkerProcess(broker.bootstrap, topics, config_path, log, args=decide_args) as decide:
        decide.wait_active()
        status = decide.health() or {}
        assert status["stage"] == "decide"
        assert status["resumed_from_snapshot"] is None
        assert status["observations"] == 0
    assert "was written by a single worker, and this one runs the decide stage" in log.read_text()
    # The published version 1 was adopted, not published again.
    assert [c.version for c in flag_changes(broker.bootstrap, topics)] == [1]


def test_a_restart_after_the_observations_topic_was_recreated_takes_no_new_record_for_an_old(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The snapshot names the buffered observations by the offsets of their records; once the
    topic is recreated, other records sit at those offsets. The restart's data-loss check finds
    the topic recreated before the buffer is read again: those observations are counted lost,
    and nothing from the new records is taken for them."""
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, KILL_ON_ACCURACY))
    config = load_config(config_path)
    batches, _ = join_stage(config, list(simulate(SCENARIO)), random.Random(3))
    topics = Topics.with_prefix(f"recreated-{secrets.token_hex(3)}", partitions=PARTS)
    obs_topic = topics.observations
    asyncio.run(ensure_topics(broker.bootstrap, [*topics.specs(), state_topic(topics)]))
    # Join partition 1 is never heard from at first, so partition 0's observations stay buffered.
    only = [b for b in batches if b.source == 0][:30]
    old = [(q, encode_batch(b)) for q, b in routed(only, obs_topic.partitions)]
    produce(broker.bootstrap, obs_topic.name, old)
    args = ["--stage", "decide", "--snapshot-interval", "0.2"]
    log = tmp_path / "decide.log"
    with WorkerProcess(broker.bootstrap, topics, config_path, log, args=args) as first:
        first.wait_for("the old records read", lambda s: s["records"] == len(old), 60)
        buffered = (first.health() or {})["merge"]["buffered"]
        first.stop()  # a final snapshot naming them
    assert buffered > 0

    async def recreate() -> None:
        from driftswitch.streams.kafka import connect as kafka
        from driftswitch.streams.kafka.settings import as_settings

        admin = await kafka.open_admin(as_settings(broker.bootstrap))
        try:
            await admin.delete_topics([obs_topic.name])
        finally:
            await admin.close()
        for _ in range(50):
            try:
                await ensure_topics(broker.bootstrap, [obs_topic])
                return
            except Exception:
                await asyncio.sleep(0.2)

    asyncio.run(recreate())
    # Other batches at the same offsets: join partition 1's.
    other = [b for b in batches if b.source == 1][:30]
    new = [(q, encode_batch(b)) for q, b in routed(other, obs_topic.partitions)]
    produce(broker.bootstrap, obs_topic.name, new)
    with WorkerProcess(broker.bootstrap, topics, config_path, log, args=args) as second:
        second.wait_for("the new records read", lambda s: s["records"] == len(old) + len(new), 60)
        status = second.health() or {}
    text = log.read_text()
    assert f"{buffered} buffered observations of {obs_topic.name}" in text
    assert "gone with its old data" in text
    assert status["merge"]["lost"] == buffered
    assert "observations read again" not in text  # nothing rebuilt from the new records
    # What is buffered now came from the new records only.
    expected_new = sum(len(b.observations) for _, b in routed(other, obs_topic.partitions))
    assert status["merge"]["buffered"] + status["observations"] <= expected_new
