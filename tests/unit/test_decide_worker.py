"""The decide stage's pure parts, without a broker: which observation batches a decide worker
accepts, how decisions map back to observations and their inputs, containment of an observation
that breaks the engine, the merge in the snapshot and the status. The stage itself, through
Kafka, is tests/integration/test_decide_stage.py."""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.events import (
    AlertEvent,
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
)
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.merge import TAG_SPAN, Batch, BatchError, encode_batch
from driftswitch.streams.pipeline.observations import SCORED, Joiner
from driftswitch.streams.service.dataloss import Mark
from driftswitch.streams.service.joinstage import JoinStage, LocalBatches
from driftswitch.streams.service.recovery import EngineFailedError
from driftswitch.streams.service.snapshot import Snapshot, decode_chunks, encode_chunks
from driftswitch.streams.service.worker import (
    Worker,
    WorkerSettings,
    _decide_contained,
    _observation_problem,
)

CONFIG = parse_config(
    """
flags:
  ranker:
    default: control
    variants:
      control: {weight: 50, value: v1}
      candidate: {weight: 50, value: v2}
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.9, target: 0.5, arl0: 1000}
        min_samples: 20
        action: kill
join:
  allowed_lateness: 2s
"""
)


def _observations(n: int = 60) -> list[list[Any]]:
    """Tracked observations (as decoded from the observations topic): the candidate is always
    wrong, so the accuracy guardrail kills it."""
    events: list[Any] = []
    for i in range(n):
        variant = "candidate" if i % 2 else "control"
        events.append(
            PredictionEvent(
                request_id=f"r{i}", flag="ranker", variant=variant, ts=float(i), prediction=1
            )
        )
        label = 0 if variant == "candidate" else 1
        events.append(OutcomeEvent(request_id=f"r{i}", ts=i + 0.5, label=label))
    topics = [0 if isinstance(ev, PredictionEvent) else 1 for ev in events]
    positions = [(t, sum(1 for u in topics[:k] if u == t)) for k, t in enumerate(topics)]
    observations, rejections = Joiner(CONFIG, track=True).process(events, positions)
    assert not rejections
    plain: list[list[Any]] = json.loads(json.dumps(observations))
    return plain


def _worker(stage: str = "decide") -> Worker:
    return Worker(
        CONFIG,
        WorkerSettings(
            bootstrap="127.0.0.1:1", topics=Topics.with_prefix("t", partitions=2), stage=stage
        ),
    )


def _record(value: bytes, partition: int = 0, offset: int = 0) -> Any:
    return SimpleNamespace(
        topic="t.observations.v1", partition=partition, offset=offset, key=None, value=value
    )


def test_the_default_stage_is_single_and_others_are_refused() -> None:
    assert WorkerSettings(bootstrap="x:1", topics=Topics()).stage == "single"
    with pytest.raises(ValueError, match="stage must be one of single, decide"):
        WorkerSettings(bootstrap="x:1", topics=Topics(), stage="join")


def test_tracked_observations_pass_the_check() -> None:
    observations = _observations()
    assert observations
    assert all(_observation_problem(o, 3) is None for o in observations)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda o: o.__setitem__(0, 7), "unknown kind 7"),
        (lambda o: o.__setitem__(0, True), "unknown kind True"),
        (lambda o: o.__setitem__(0, [1]), "unknown kind [1]"),
        (lambda o: o.__setitem__(2, 5), "flag, variant and request id must be strings"),
        (lambda o: o.__setitem__(5, None), "flag, variant and request id must be strings"),
        (lambda o: o.__setitem__(4, "late"), "event time 'late' is not a finite number"),
        (lambda o: o.__setitem__(4, math.nan), "event time nan is not a finite number"),
        (lambda o: o.__setitem__(6, 0.5), "side 0.5 is not an integer"),
        (lambda o: o.__setitem__(-1, []), "the last element must be the input positions"),
        (lambda o: o.__setitem__(-1, [[3, 1]]), "input position [3, 1] is not"),
        (lambda o: o.__setitem__(-1, [[0, -1]]), "input position [0, -1] is not"),
        (lambda o: o.__setitem__(-1, [[0, 1, 2]]), "input position [0, 1, 2] is not"),
    ],
)
def test_a_broken_observation_is_named(change: Any, problem: str) -> None:
    obs = _observations()[0]
    change(obs)
    got = _observation_problem(obs, 3)
    assert got is not None
    assert got.startswith(problem)


def test_a_batch_gets_its_tag_and_join_partition_before_the_positions() -> None:
    worker = _worker()
    observations = _observations(4)
    value = encode_batch(Batch(1, {0: 4, 1: 4}, 3.5, False, observations, "run"))
    got = worker._read_batch(_record(value, offset=7))
    for i, (sent, read) in enumerate(zip(observations, got.observations, strict=True)):
        # The tag: where the observation can be read again (record offset 7, index i).
        assert list(read) == [*sent[:-1], 7 * TAG_SPAN + i, 1, sent[-1]]
    # The decision names the last input: join partition 1, the outcome's offset.
    scored = got.observations[1]
    assert scored[0] == 1  # SCORED: prediction, then outcome position
    assert worker._where(scored) == "t.outcomes.v1/1/0"


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"garbage", "undecodable observation batch"),
        (b'{"v": 2}', "not an observation batch of format 1"),
        (
            encode_batch(Batch(4, {0: 1}, 1.0, False, [], "r")),
            "join partition 4 outside 0..1",
        ),
        (
            encode_batch(Batch(0, {0: 1}, 1.0, False, [[0, 0, "f", "v", 1.0, "r", 0, 1]], "r")),
            r"observations\[0\]: the last element must be the input positions",
        ),
    ],
)
def test_what_is_not_a_batch_is_refused_with_a_reason(value: bytes, detail: str) -> None:
    with pytest.raises(BatchError, match=detail):
        _worker()._read_batch(_record(value))


def test_a_decision_names_the_position_of_the_observation_that_decided() -> None:
    """Each observation's own ``index`` is its input's (the merge numbers late and released
    observations apart): ``Engine.decide`` reports positions in what it was given instead."""
    # Their own indexes all say 0, as the first of each of many merged batches would.
    observations = [(o[0], 0, *o[2:]) for o in _observations()]
    (kill,) = Engine(CONFIG).decide(observations)
    assert kill.event.cause.action.value == "kill"
    assert observations[kill.index][0] == SCORED
    assert not Engine(CONFIG).decide(observations[: kill.index])
    assert Engine(CONFIG).decide(observations[: kill.index + 1])[0].index == kill.index


def test_a_failing_observation_is_left_out_and_the_rest_decided() -> None:
    observations = _observations()
    clean_engine = Engine(CONFIG)
    clean = clean_engine.decide(observations)
    assert [e.event.cause.action.value for e in clean] == ["kill"]
    # A prediction whose latency is not a number breaks the statistics.
    poison = list(observations[10])
    assert poison[0] == 0
    poison[9] = "slow"
    broken = [*observations[:10], tuple(poison), *observations[10:]]
    with pytest.raises(ValueError, match="could not convert string to float"):
        Engine(CONFIG).decide(broken)
    engine, emitted, poisoned = _decide_contained(Engine(CONFIG), broken)
    assert [index for index, _ in poisoned] == [10]
    assert poisoned[0][1].startswith("ValueError at ")  # type and place, never the message
    assert [e.event for e in emitted] == [e.event for e in clean]
    # Indexes point into the batch with the poison in it (after it: shifted by one).
    assert [e.index for e in emitted] == [e.index + 1 for e in clean]
    assert engine.snapshot() == clean_engine.snapshot()


def test_the_merges_ride_the_snapshot() -> None:
    worker = _worker()
    value = encode_batch(Batch(0, {0: 4, 1: 4}, 3.5, False, _observations(4), "run"))
    worker.merges[2].add(worker._read_batch(_record(value, partition=2, offset=5)))
    state = worker._merges_state()
    snap = Snapshot(3, {}, {"t.observations.v1": {2: 1}}, stage="decide", merge=state)
    back = decode_chunks([value for value, _ in encode_chunks(snap)])
    assert (back.stage, back.merge) == ("decide", json.loads(json.dumps(state)))
    # The snapshot names the buffered observations by tag (record offset 5, indexes 0..7)...
    assert state["2"]["buffered"] == []
    assert state["2"]["replay"] == [5 * TAG_SPAN + i for i in range(8)]
    restored = worker._new_merges(back.merge)
    assert len(restored[2]) == 0
    assert restored[2].missing == state["2"]["replay"]
    # ... and a restart reads that record again and gets them back, in the same order.
    restored[2].replay(worker._read_batch(_record(value, partition=2, offset=5)).observations)
    assert restored[2].missing == []
    assert len(restored[2]) == len(worker.merges[2]) == 8
    assert restored[2].to_state() == worker.merges[2].to_state()
    assert restored[2].allowed_lateness == 2.0
    assert [len(m) for p, m in restored.items() if p != 2] == [0, 0, 0]
    # A snapshot of an older worker has neither: it was a single worker's.
    old = decode_chunks([value for value, _ in encode_chunks(Snapshot(1, {}, {}))])
    assert (old.stage, old.merge) == ("single", None)


def test_status_shows_each_partitions_merge() -> None:
    worker = _worker()
    value = encode_batch(Batch(1, {0: 4, 1: 4}, 3.5, False, _observations(4), "run"))
    worker.merges[0].add(worker._read_batch(_record(value)))
    status = worker.status()
    assert status["stage"] == "decide"
    merge = status["merge"]
    assert (merge["buffered"], merge["late"], merge["duplicates"]) == (8, 0, 0)
    assert merge["allowed_lateness"] == 2.0
    first = merge["partitions"]["0"]
    assert first["bound"] is None  # join partition 0 never heard from
    assert first["all_idle"] is False
    assert first["sources"] == [
        {"source": 0, "watermark": None, "idle": False},
        {"source": 1, "watermark": 3.5, "idle": False},
    ]
    assert sorted(merge["partitions"]) == ["0", "1", "2", "3"]
    assert "merge" not in _worker("single").status()


def test_a_restart_counts_the_buffered_observations_it_cannot_read_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = _worker()
    values = [
        encode_batch(Batch(0, {0: 4, 1: 4}, 3.5, False, _observations(4), "run")),
        encode_batch(Batch(1, {0: 8, 1: 8}, 3.5, False, _observations(4), "run")),
    ]
    for offset, value in ((5, values[0]), (9, values[1])):
        worker.merges[2].add(worker._read_batch(_record(value, partition=2, offset=offset)))
    restored = _worker()
    restored.merges = restored._new_merges(json.loads(json.dumps(worker._merges_state())))
    assert len(restored.merges[2].missing) == 16
    # The broker has only the first record left (the second gone: retention, a new topic).
    with caplog.at_level("ERROR"):
        got = restored._replayed({2: [_record(values[0], partition=2, offset=5)]})
    assert got == (8, 8)
    assert restored.counters["observations_lost"] == 8
    assert restored.merges[2].missing == []
    assert len(restored.merges[2]) == 8
    assert "8 buffered observations of t.observations.v1[2] are gone" in caplog.text
    assert restored.status()["merge"]["lost"] == 8
    # Both there: nothing lost.
    again = _worker()
    again.merges = again._new_merges(json.loads(json.dumps(worker._merges_state())))
    records = [_record(v, partition=2, offset=o) for o, v in ((5, values[0]), (9, values[1]))]
    assert again._replayed({2: records}) == (16, 0)
    assert again.merges[2].to_state() == worker.merges[2].to_state()


def _with_local_join_stage() -> tuple[Worker, LocalBatches]:
    """A decide worker with a join stage in its process (``--stage all``), reading partition 0
    of the observations topic from offset 5."""
    worker = _worker()
    local = LocalBatches()
    worker.join_stage = JoinStage(CONFIG, worker.settings)
    worker.join_stage.local = local
    worker.offsets[worker.observations.name] = {0: 5, 1: 0}
    return worker, local


def _sent(local: LocalBatches, batch: Batch, offset: int) -> bytes:
    """``batch`` sent by the local join stage to partition 0 and acknowledged at ``offset``."""
    value = encode_batch(batch)
    local.add(0, value, batch)
    delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    delivery.set_result(RecordMetadata("t.observations.v1", 0, None, offset, -1, 0, 0))
    local.delivered(0, b"0", value, delivery)
    return value


def _fetched(value: bytes, offset: int) -> Any:
    return SimpleNamespace(
        topic="t.observations.v1", partition=0, offset=offset, key=b"0", value=value, timestamp=0
    )


def test_the_join_stages_records_are_taken_on_acknowledgement_in_their_turn() -> None:
    """Records this process's join stage sent are merged as soon as the broker acknowledges
    them, if every record before them was read; the fetch that brings them later skips them."""

    async def scenario() -> None:
        worker, local = _with_local_join_stage()
        topic = worker.observations.name
        tp = kafka.topic_partition(topic, 0)
        observations = _observations(3)
        ours = [
            Batch(0, {0: k + 1, 1: k + 1}, float(k), False, observations[2 * k : 2 * k + 2], "a")
            for k in range(3)
        ]
        # Acknowledged at 5, 6 and 8: the record at 7 is another writer's.
        values = [_sent(local, b, offset) for b, offset in zip(ours, (5, 6, 8), strict=True)]
        batch: dict[Any, list[Any]] = {}
        worker._take_acknowledged(batch, local)
        assert [(m.offset, m.value) for m in batch[tp]] == [(5, values[0]), (6, values[1])]
        assert not local.arrived.is_set()
        await worker._process_observations(batch)
        assert worker.offsets[topic][0] == 7
        assert local.taken == 2  # from memory, not decoded
        assert 0 not in worker.marks.get(topic, {})  # marks come from fetched records only
        # Merged (held back: join partition 1 was never heard from).
        assert len(worker.merges[0]) == len(ours[0].observations) + len(ours[1].observations) > 0
        # The fetch brings 5 and 6 again, then 7: 5 and 6 are skipped, 7 read, then 8 taken.
        theirs = encode_batch(Batch(1, {0: 1, 1: 1}, 0.5, False, observations[:1], "b"))
        fetched = {tp: [_fetched(values[0], 5), _fetched(values[1], 6), _fetched(theirs, 7)]}
        worker._take_acknowledged(fetched, local)
        assert [m.offset for m in fetched[tp]] == [7, 8]
        await worker._process_observations(fetched)
        assert worker.offsets[topic][0] == 9
        assert worker.marks[topic][0].offset == 7
        assert local.taken_acked == 3
        assert worker._taken_acked == {(0, 8): values[2]}

    asyncio.run(scenario())


def test_a_fetched_record_unlike_the_acknowledged_one_stops_taking_on_acknowledgement() -> None:
    async def scenario() -> None:
        worker, local = _with_local_join_stage()
        topic = worker.observations.name
        tp = kafka.topic_partition(topic, 0)
        observations = _observations(2)
        first = _sent(local, Batch(0, {0: 1, 1: 1}, 0.0, False, observations[:2], "a"), 5)
        batch: dict[Any, list[Any]] = {}
        worker._take_acknowledged(batch, local)
        await worker._process_observations(batch)
        other = encode_batch(Batch(1, {0: 1, 1: 1}, 0.5, False, observations[:1], "b"))
        assert other != first
        with pytest.raises(EngineFailedError, match=f"{topic}/0/5 is not the one the broker"):
            worker._take_acknowledged({tp: [_fetched(other, 5)]}, local)
        _sent(local, Batch(0, {0: 2, 1: 2}, 1.0, False, observations[2:], "a"), 6)
        later: dict[Any, list[Any]] = {}
        worker._take_acknowledged(later, local)
        assert later == {}  # read from the broker from now on

    asyncio.run(scenario())


def test_a_batchs_decisions_share_one_fence_and_are_acknowledged_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decisions of one batch are sent after one fence and before any acknowledgement, then
    recorded and announced in order; a version already on the flags topic is not sent again."""

    async def scenario() -> None:
        worker = _worker()
        (kill,) = Engine(CONFIG).decide(_observations())
        event = kill.event
        assert isinstance(event, FlagChangeEvent)
        later = event.model_copy(update={"version": event.version + 1})
        alert = AlertEvent(
            flag=event.flag,
            guardrail="candidate-accuracy",
            variant="candidate",
            cause=event.cause,
            ts=event.ts,
            flag_version=later.version,
        )
        loop = asyncio.get_running_loop()
        sent: list[tuple[str, bytes | None, asyncio.Future[Any]]] = []
        fences: list[int] = []

        class Producer:
            async def send(self, topic: str, value: bytes, **kw: Any) -> asyncio.Future[Any]:
                sent.append((topic, kw.get("key"), loop.create_future()))
                return sent[-1][2]

        async def fence(patience: float | None = None) -> None:
            fences.append(len(sent))

        worker._producer = Producer()
        monkeypatch.setattr(worker, "_fence", fence)
        outputs: list[tuple[FlagChangeEvent | AlertEvent, str | None, float | None]] = [
            (event, "t.outcomes.v1/0/7", 1.0),
            (alert, "t.outcomes.v1/0/8", 2.0),
            (later, "t.outcomes.v1/1/9", 3.0),
        ]
        publishing = asyncio.ensure_future(worker._publish_outputs(outputs))
        await asyncio.sleep(0.01)
        assert fences == [0]  # one fence, before anything was sent
        assert [(t, k) for t, k, _ in sent] == [("t.flags.v1", b"ranker")] * 2
        assert not publishing.done()
        assert not worker.flags
        assert not worker.alerts  # announced in order, after the acknowledgements
        sent[1][2].set_result(None)
        sent[0][2].set_result(None)
        await asyncio.wait_for(publishing, 1.0)
        assert worker.flags == {"ranker": later}
        assert worker.counters["published"] == 2
        assert worker.alerts == [alert]
        # Versions the flags topic has are not sent again; nothing to publish, no fence.
        await worker._publish_outputs([(event, "t.outcomes.v1/0/7", 1.0)])
        await worker._publish_outputs([])
        assert len(sent) == 2
        assert fences == [0, 2]

    asyncio.run(scenario())


def test_records_below_the_read_position_resume_from_the_new_data_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The consumer found its position out of range (on Kafka: the broker lost the data) and
    started again at the new data's first offset (``auto_offset_reset="earliest"``): the
    data-loss policy applies, as when the idle check finds it."""
    single = _worker("single")
    predictions = single.topics.predictions.name
    tp = kafka.topic_partition(predictions, 1)
    other = kafka.topic_partition(predictions, 0)
    single.offsets[predictions] = {0: 40, 1: 100}
    single.marks[predictions] = {1: Mark(99, 1, 2)}
    single._fetch_at.update({tp: 100, other: 40})  # where the consumer was sought to
    with caplog.at_level("ERROR"):
        single._check_rewound({tp: [_fetched(b"{}", 3), _fetched(b"{}", 4)]})
    assert single.offsets[predictions] == {0: 40, 1: 3}
    assert single.marks[predictions] == {}
    assert single.counters["input_resets"] == 1
    assert (
        f"input {predictions}[1]: read to offset 100, but the next records start at offset 3"
    ) in caplog.text
    # Where the last fetch ended, past it (a gap: retention), and a partition never sought:
    # nothing.
    single._check_rewound(
        {
            tp: [_fetched(b"{}", 5)],
            other: [_fetched(b"{}", 90)],
            kafka.topic_partition(single.topics.outcomes.name, 0): [_fetched(b"{}", 0)],
        }
    )
    assert single.counters["input_resets"] == 1
    assert single._fetch_at[tp] == 6
    single._check_rewound({tp: [_fetched(b"{}", 5)]})  # the same record again: a rewind
    assert single.counters["input_resets"] == 2

    # The decide stage: the buffered observations' records are gone with the old data.
    decide = _worker()
    topic = decide.observations.name
    obs_tp = kafka.topic_partition(topic, 0)
    value = encode_batch(Batch(0, {0: 4, 1: 4}, 3.5, False, _observations(4), "run"))
    decide.merges[0].add(decide._read_batch(_record(value, partition=0, offset=5)))
    decide.offsets[topic] = {0: 6, 1: 0}
    decide._fetch_at[obs_tp] = 6
    decide._check_rewound({obs_tp: [_fetched(value, 0)]})
    assert decide.offsets[topic][0] == 0
    assert decide.counters["input_resets"] == 1
    state = decide.merges[0].to_state()
    assert state["replay"] == []  # no tag names a record of the old data any more:
    assert len(state["buffered"]) == 8  # the observations are kept in the snapshots instead


def test_records_taken_on_acknowledgement_are_not_taken_for_a_rewind() -> None:
    """The decide stage reads its own join stage's records ahead of the fetch: the fetch that
    brings them later is no rewind, even once the check of what was taken forgot them."""

    async def scenario() -> None:
        worker, local = _with_local_join_stage()
        topic = worker.observations.name
        tp = kafka.topic_partition(topic, 0)
        worker._fetch_at[tp] = 5  # sought to its position at the start
        observations = _observations(2)
        values = [
            _sent(local, Batch(0, {0: k + 1, 1: k + 1}, float(k), False, [obs], "a"), 5 + k)
            for k, obs in enumerate(observations[:2])
        ]
        batch: dict[Any, list[Any]] = {}
        worker._take_acknowledged(batch, local)
        await worker._process_observations(batch)
        assert worker.offsets[topic][0] == 7
        worker._check_rewound({tp: [_fetched(values[0], 5)]})
        assert worker.counters["input_resets"] == 0
        worker._taken_acked.clear()  # forgotten (_TAKEN_ACKED_MAX): still no rewind
        worker._check_rewound({tp: [_fetched(values[1], 6)]})
        assert worker.counters["input_resets"] == 0
        assert worker.offsets[topic][0] == 7
        # A fetch that starts below where the last one ended is a rewind.
        worker._check_rewound({tp: [_fetched(values[0], 2)]})
        assert worker.counters["input_resets"] == 1
        assert worker.offsets[topic][0] == 2

    asyncio.run(scenario())
