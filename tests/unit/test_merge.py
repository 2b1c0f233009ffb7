"""The two halves and the event-time merge, without a broker: join partitions that read their
topics with any skew, in any batch sizes, restarting from checkpoints and sending observations
again, decide exactly what the engine decides on the same events in event-time order."""

from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.events import PredictionEvent
from driftswitch.streams.pipeline.engine import Engine, Event
from driftswitch.streams.pipeline.merge import (
    EPOCH_SPAN,
    TAG_SPAN,
    Batch,
    BatchError,
    Clock,
    Merge,
    decode_batch,
    encode_batch,
    offset_of,
)
from driftswitch.streams.pipeline.observations import (
    INTERLEAVED,
    PREDICTED,
    SCORED,
    Decider,
    Joiner,
    build_flags,
    event_order,
)
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import ENGINE_GUARDRAILS

GUARDRAILS = ENGINE_GUARDRAILS

SCENARIO = Scenario(
    variants=(
        VariantSpec("control", weight=50, accuracy=0.9),
        VariantSpec("candidate", weight=50, accuracy=0.9, accuracy_after=0.7),
        VariantSpec("shadow", accuracy=0.85, error_rate=0.02, shadow=True),
    ),
    requests=2500,
    change_at=700,
    rate=50.0,
    label_delay=3.0,
    label_fraction=0.95,
    seed=5,
)


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(config_yaml(SCENARIO, GUARDRAILS))


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(simulate(SCENARIO))


def _key(ev: Event) -> tuple[float, str, int]:
    return (ev.ts, ev.request_id, 0 if isinstance(ev, PredictionEvent) else 1)


def _reference(config: Config, events: list[Event]) -> list[dict[str, Any]]:
    """The engine's outputs on the events in event-time order (what the backtest decides)."""
    engine = Engine(config)
    ordered = sorted(events, key=_key)
    out = []
    for start in range(0, len(ordered), 700):
        out += [
            e.event.model_dump(mode="json")
            for e in engine.process(ordered[start : start + 700]).outputs
        ]
    return out


@dataclass
class _Partition:
    """One join partition: its two topics (predictions 0, outcomes 1), read positions, join."""

    topics: list[list[Event]]
    joiner: Joiner
    clock: Clock = field(default_factory=Clock)
    pos: list[int] = field(default_factory=lambda: [0, 0])
    checkpoint: tuple[dict[str, Any], list[int], dict[int, float]] | None = None
    run: str = "0"


def _staged(
    config: Config,
    events: list[Event],
    parts: int,
    rng: random.Random,
    *,
    lateness: float = 0.0,
    crashes: int = 0,
) -> tuple[list[dict[str, Any]], Merge]:
    topics: list[list[list[Event]]] = [[[], []] for _ in range(parts)]
    for ev in events:  # the simulation's arrival order; each topic partition keeps it
        p = zlib.crc32(ev.request_id.encode()) % parts
        topics[p][0 if isinstance(ev, PredictionEvent) else 1].append(ev)
    partitions = [_Partition(t, Joiner(config, track=True)) for t in topics]
    merge = Merge(parts, lateness)
    decider = Decider(build_flags(config))
    outputs: list[dict[str, Any]] = []
    sent_batches: list[Batch] = []
    crash_at = sorted(rng.sample(range(10, 120), crashes)) if crashes else []
    step = 0
    while True:
        live = [
            i for i, p in enumerate(partitions) if any(p.pos[t] < len(p.topics[t]) for t in (0, 1))
        ]
        if not live and not merge:
            break
        step += 1
        if crash_at and step == crash_at[0]:
            crash_at.pop(0)
            # A join partition dies and restarts from its last checkpoint: it reads (and
            # sends) again what it had read since, with a fresh join from the checkpoint.
            victim = partitions[rng.randrange(parts)]
            victim.run = str(step)
            if victim.checkpoint is not None:
                state, pos, seen = victim.checkpoint
                victim.joiner = Joiner(config, track=True)
                victim.joiner.restore(json.loads(json.dumps(state)))
                victim.pos = list(pos)
                victim.clock = Clock()
                victim.clock.seen = dict(seen)
            else:
                victim.joiner = Joiner(config, track=True)
                victim.pos = [0, 0]
                victim.clock = Clock()
            continue
        if not live:
            late = merge.add(Batch(0, {}, -math.inf, idle=True))
            assert not late
        else:
            i = rng.choice(live)
            part = partitions[i]
            # A skewed read: one topic at a time, a random amount.
            t = rng.choice([t for t in (0, 1) if part.pos[t] < len(part.topics[t])])
            start = part.pos[t]
            end = min(len(part.topics[t]), start + rng.randint(1, 300))
            batch = part.topics[t][start:end]
            part.pos[t] = end
            observations, rejections = part.joiner.process(
                batch, [(t, o) for o in range(start, end)]
            )
            assert not rejections
            for ev in batch:
                part.clock.observe(t, ev.ts)
            busy = [u for u in (0, 1) if part.pos[u] < len(part.topics[u])]
            wm, idle = part.clock.watermark(busy)
            sent = Batch(
                i,
                dict(enumerate(part.pos)),
                wm,
                idle,
                json.loads(json.dumps(observations)),
                part.run,
            )
            sent_batches.append(sent)
            late = merge.add(sent)
            if rng.random() < 0.2:
                # Serialised at once, as the join stage's checkpoint is: the state holds the
                # join's own maps (JoinBuffer.to_state).
                saved = json.loads(json.dumps(part.joiner.to_state()))
                part.checkpoint = (saved, list(part.pos), dict(part.clock.seen))
        if late:
            outputs += [e.event.model_dump(mode="json") for e in decider.process(late)]
        released = merge.release()
        outputs += [e.event.model_dump(mode="json") for e in decider.process(released)]
    return outputs, merge


def test_the_reference_kills_holds_and_warns(config: Config, events: list[Event]) -> None:
    """The scenario exercises several guardrails (a test that compares nothing proves nothing)."""
    kinds = {(o.get("cause", {}) or {}).get("guardrail") for o in _reference(config, events)}
    assert {"candidate-accuracy", "candidate-vs-control"} <= kinds


@pytest.mark.parametrize("parts", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [1, 2])
def test_any_partitioning_and_skew_decides_like_event_order(
    config: Config, events: list[Event], parts: int, seed: int
) -> None:
    got, merge = _staged(config, events, parts, random.Random(seed))
    assert merge.late == 0
    assert merge.duplicates == 0
    assert got == _reference(config, events)


@pytest.mark.parametrize("seed", [3, 4, 5, 6, 7, 8])
def test_restarted_join_partitions_send_again_and_nothing_counts_twice(
    config: Config, events: list[Event], seed: int
) -> None:
    got, merge = _staged(config, events, 3, random.Random(seed), crashes=6)
    assert merge.duplicates > 0  # the restarts did send observations again
    assert merge.late == 0
    assert got == _reference(config, events)


def test_arrival_order_is_not_event_order(config: Config, events: list[Event]) -> None:
    """Without the merge (observations applied as they arrive) skew changes the decisions:
    the merge is what makes them match."""
    engine = Engine(config)
    rng = random.Random(9)
    shuffled = list(events)
    # Outcomes read far ahead of predictions, as a skewed consumer would.
    shuffled.sort(key=lambda ev: (isinstance(ev, PredictionEvent), rng.random() < 0.5))
    arrival = [e.event.model_dump(mode="json") for e in engine.process(shuffled).outputs]
    assert arrival != _reference(config, events)


def test_observations_sort_in_event_time_with_ties_broken_by_request_and_side() -> None:
    a = (PREDICTED, 0, "f", "v", 5.0, "r2", 0, True, False, None, None, None, None, None)
    b = (SCORED, 1, "f", "v", 5.0, "r1", 1, 1, False, 1, None, None)
    c = (SCORED, 2, "f", "v", 5.0, "r2", 0, 1, False, 1, None, None)
    d = (PREDICTED, 3, "f", "v", 4.0, "r9", 0, True, False, None, None, None, None, None)
    assert sorted([a, b, c, d], key=event_order) == [d, b, a, c]


@pytest.mark.parametrize("seed", range(20))
def test_event_order_sorts_as_time_request_side_then_prediction_first(seed: int) -> None:
    """``event_order`` (a C key: time, request, side, kind) sorts exactly as the documented
    order (time, request, side, the prediction before the pair) on what the join sends: per
    request one prediction and at most one pair, scored or interleaved; shared event times,
    equal keys (a request sent again) and both sides included."""
    rng = random.Random(seed)
    observations: list[tuple[Any, ...]] = []

    def when() -> float:
        return float(rng.randrange(10)) if seed % 2 else rng.uniform(0.0, 10.0)

    for r in range(rng.randrange(0, 60)):
        predicted, outcome = when(), when()
        # The pair at the later time; its side 1 (the outcome) on a tie.
        side = 1 if outcome >= predicted else 0
        pair = rng.choice((SCORED, INTERLEAVED))
        joined = rng.random() < 0.8
        for _ in range(rng.choice((1, 1, 2))):  # a restarted join partition sends some again
            n = len(observations)
            observations.append((PREDICTED, n, "f", "v", predicted, f"r{r}", 0))
            if joined:
                ts = max(predicted, outcome)
                observations.append((pair, n + 1, "f", "v", ts, f"r{r}", side))
    rng.shuffle(observations)
    documented = sorted(observations, key=lambda o: (o[4], o[5], o[6], o[0] != PREDICTED))
    assert sorted(observations, key=event_order) == documented


def test_a_late_observation_is_applied_and_counted() -> None:
    merge = Merge(2)
    obs = (PREDICTED, 0, "f", "v", 10.0, "r1", 0, True, False, None, None, None, None, None)
    merge.add(Batch(0, {0: 1}, 10.0, False, [(*obs, ((0, 0),))]))
    merge.add(Batch(1, {0: 1}, 20.0, False, []))
    assert merge.release() == []  # partition 0 is at 10: nothing before 10 yet
    merge.add(Batch(0, {0: 2}, 30.0, False, []))
    assert [o[4] for o in merge.release()] == [10.0]
    old = (PREDICTED, 0, "f", "v", 5.0, "r0", 0, True, False, None, None, None, None, None)
    late = merge.add(Batch(1, {0: 2}, 20.0, False, [(*old, ((0, 1),))]))
    assert [o[4] for o in late] == [5.0]
    assert merge.late == 1


def test_a_new_epoch_is_not_taken_for_what_earlier_runs_sent() -> None:
    """After the broker lost a join partition's input, offsets start again at 0: in a new epoch
    its positions stay above every earlier run's prefix, and within the epoch a restarted run's
    repeats are still dropped."""

    def obs(rid: str, ts: float, position: int) -> tuple[Any, ...]:
        fact = (PREDICTED, 0, "f", "v", ts, rid, 0, True, False, None, None, None, None, None)
        return (*fact, ((0, position),))

    merge = Merge(1)
    merge.add(Batch(0, {0: 100}, 10.0, False, [obs("old", 10.0, 99)], run="a"))
    # Without an epoch, the new data's offset 5 is inside run "a"'s prefix: dropped.
    merge.add(Batch(0, {0: 6}, 11.0, False, [obs("lost", 11.0, 5)], run="b"))
    assert merge.duplicates == 1
    new = EPOCH_SPAN + 5
    merge.add(Batch(0, {0: new + 1}, 12.0, False, [obs("new", 12.0, new)], run="c"))
    # A restart within the epoch sends it again: a duplicate of run "c"'s.
    merge.add(Batch(0, {0: new + 1}, 12.0, False, [obs("new", 12.0, new)], run="d"))
    merge.add(Batch(0, {0: new + 1}, 12.0, True, [], run="d"))
    assert [o[5] for o in merge.release()] == ["old", "new"]
    assert merge.duplicates == 2
    assert offset_of(new) == 5


def test_a_silent_partition_holds_the_release_back_until_it_is_idle() -> None:
    merge = Merge(2)
    obs = (PREDICTED, 0, "f", "v", 1.0, "r1", 0, True, False, None, None, None, None, None)
    merge.add(Batch(0, {0: 1}, 100.0, False, [(*obs, ((0, 0),))]))
    assert merge.release() == []
    merge.add(Batch(1, {}, -math.inf, True, []))
    assert len(merge.release()) == 1


def test_the_allowed_lateness_holds_the_release_back_behind_the_slowest_partition() -> None:
    def obs(ts: float, rid: str) -> tuple[Any, ...]:
        fact = (PREDICTED, 0, "f", "v", ts, rid, 0, True, False, None, None, None, None, None)
        return (*fact, ((0, 0),))

    merge = Merge(2, 2.0)
    merge.add(Batch(0, {0: 3}, 10.0, False, [obs(7.0, "a"), obs(8.5, "b"), obs(9.5, "c")]))
    merge.add(Batch(1, {}, 12.0, False, []))
    assert merge.bound == 8.0  # the slowest busy partition's 10, less 2 seconds
    assert [o[5] for o in merge.release()] == ["a"]
    merge.add(Batch(0, {0: 3}, 11.0, False, []))
    assert [o[5] for o in merge.release()] == ["b"]
    merge.add(Batch(0, {0: 3}, 11.0, True, []))
    assert merge.bound == 10.0  # partition 0 idle: partition 1's 12, less 2 seconds
    assert [o[5] for o in merge.release()] == ["c"]


def test_the_merge_state_round_trips(config: Config, events: list[Event]) -> None:
    joiner = Joiner(config, track=True)
    batch = events[:400]
    observations, _ = joiner.process(batch, [(0, o) for o in range(len(batch))])
    merge = Merge(2, 1.5)
    merge.add(Batch(0, {0: 400}, 1e9, False, observations))
    copy = Merge.from_state(json.loads(json.dumps(merge.to_state())), 1.5)
    assert copy.to_state() == json.loads(json.dumps(merge.to_state()))
    merge.add(Batch(1, {}, 0.0, True, []))
    copy.add(Batch(1, {}, 0.0, True, []))
    assert json.loads(json.dumps(merge.release())) == json.loads(json.dumps(copy.release()))


def test_batches_round_trip_and_anything_else_is_refused(
    config: Config, events: list[Event]
) -> None:
    joiner = Joiner(config, track=True)
    batch = events[:300]
    observations, _ = joiner.process(batch, [(1, o) for o in range(len(batch))])
    sent = Batch(2, {0: 10, 1: 300}, 123.5, False, observations, "run-a")
    got = decode_batch(encode_batch(sent))
    assert (got.source, got.read, got.watermark, got.idle, got.run) == (
        2,
        {0: 10, 1: 300},
        123.5,
        False,
        "run-a",
    )
    assert got.observations == json.loads(json.dumps(observations))
    assert decode_batch(encode_batch(Batch(0, {}, -math.inf, True))).watermark == -math.inf
    for bad in [
        b"",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "source": 0}',
        b"\xff",
        b'{"v":1,"source":0,"run":"","read":{},"watermark":1,"idle":false,"observations":[1]}',
    ]:
        with pytest.raises(BatchError):
            decode_batch(bad)


@pytest.mark.parametrize("digits", [1, None], ids=["ties", "no-ties"])
@pytest.mark.parametrize("seed", range(5))
def test_releases_follow_event_order_then_arrival_whatever_the_overlap(
    seed: int, digits: int | None
) -> None:
    """Batches overlapping each other and a partition's earlier ones, requests repeated within a
    partition (equal keys), releases at random bounds and a state round trip in the middle: what
    comes out is what a reference sort by (event order, arrival) gives, and nothing else. Event
    times rounded to ``digits`` decimals share values (the merge then sorts by the whole key);
    unrounded, none do (it sorts by event time alone)."""
    rng = random.Random(seed)
    parts = 3
    merge = Merge(parts, 0.25)
    buffered: list[tuple[tuple[Any, ...], int, tuple[Any, ...]]] = []
    released: list[tuple[Any, ...]] = []
    expected: list[tuple[Any, ...]] = []
    clock = [0.0] * parts
    arrival = 0
    for step in range(300):
        p = rng.randrange(parts)
        batch = []
        for _ in range(rng.randrange(0, 40)):
            ts = round(clock[p] + rng.uniform(-2.0, 1.0), digits)
            rid = f"p{p}-r{rng.randrange(5)}"  # few ids per partition: equal keys happen
            kind = rng.choice((PREDICTED, SCORED))
            obs = (kind, 0, "f", "v", ts, rid, rng.randrange(2), arrival, None, None, ((0, 0),))
            arrival += 1
            batch.append(obs)
        clock[p] += rng.uniform(0.0, 1.0)
        # Whatever falls before what was released is late and applied at once, so that the
        # reference only holds what the merge buffers.
        late = merge.add(Batch(p, {0: step + 1}, clock[p] - 2.0, False, batch))
        late_ids = {o[7] for o in late}
        for obs in batch:
            if obs[7] not in late_ids:
                buffered.append((event_order(obs), obs[7], obs))
        if rng.random() < 0.3:
            got = merge.release()
            bound = merge.bound
            buffered.sort(key=lambda t: (t[0], t[1]))
            ready = [t for t in buffered if t[0][0] < bound]
            buffered = [t for t in buffered if t[0][0] >= bound]
            expected += [t[2] for t in ready]
            released += [(o[0], 0, *o[2:]) for o in got]
        if step == 150:
            merge = Merge.from_state(json.loads(json.dumps(merge.to_state())), 0.25)
            buffered = [
                (k, a, tuple((tuple(map(tuple, x)) if isinstance(x, list) else x) for x in o))
                for k, a, o in buffered
            ]
    for p in range(parts):
        merge.add(Batch(p, {0: 999}, math.inf, True, []))
    released += [(o[0], 0, *o[2:]) for o in merge.release()]
    buffered.sort(key=lambda t: (t[0], t[1]))
    expected += [t[2] for t in buffered]
    assert len(merge) == 0
    assert [(o[4], o[5], o[7]) for o in released] == [(o[4], o[5], o[7]) for o in expected]


@pytest.mark.parametrize("seed", range(5))
def test_a_tagged_merge_restored_from_its_tags_continues_exactly(seed: int) -> None:
    """A tagged merge's state names its buffered observations by tag only; restored from it and
    given every record sent so far again (duplicates, late ones and released ones included), it
    releases exactly what a merge that never restarted releases, late and duplicate counts too."""
    rng = random.Random(seed)
    parts = 3
    twin = Merge(parts, 0.25, tagged=True)  # never restarts
    merge = Merge(parts, 0.25, tagged=True)
    sent: list[list[tuple[Any, ...]]] = []  # per record offset: its observations, tagged
    out_twin: list[Any] = []
    out_merge: list[Any] = []
    clock = [0.0] * parts
    restarts = 0
    for step in range(400):
        p = rng.randrange(parts)
        offset = len(sent)
        observations = []
        for i in range(rng.randrange(0, 30)):
            ts = round(clock[p] + rng.uniform(-3.5, 1.0), 1)  # some behind the bound: late
            rid = f"p{p}-r{rng.randrange(5)}"  # equal keys happen within a partition
            position = ((0, rng.randrange(step + 1)),)
            kind = rng.choice((PREDICTED, SCORED))
            tag = offset * TAG_SPAN + i
            observations.append((kind, 0, "f", "v", ts, rid, rng.randrange(2), tag, p, position))
        clock[p] += rng.uniform(0.0, 1.0)
        sent.append(observations)
        # Two runs of each join partition, each claiming what it read: duplicates happen.
        batch = Batch(p, {0: step + 1}, clock[p] - 2.0, False, observations, rng.choice("ab"))
        out_twin += twin.add(batch)
        out_merge += merge.add(batch)
        if rng.random() < 0.3:
            out_twin += twin.take()
            out_merge += merge.take()
        if rng.random() < 0.05 and len(merge):
            state = json.loads(json.dumps(merge.to_state()))
            assert state["buffered"] == []
            assert len(state["replay"]) == len(merge)
            merge = Merge.from_state(state, 0.25)
            assert merge.tagged
            assert len(merge) == 0
            merge.replay(json.loads(json.dumps([o for record in sent for o in record])))
            assert merge.missing == []
            restarts += 1
    for p in range(parts):
        idle = Batch(p, {0: 999}, math.inf, True, [])
        out_twin += twin.add(idle)
        out_merge += merge.add(idle)
    out_twin += twin.take()
    out_merge += merge.take()
    assert restarts >= 3
    assert (merge.late, merge.duplicates) == (twin.late, twin.duplicates)
    assert twin.duplicates > 0
    assert twin.late > 0
    assert json.loads(json.dumps(out_merge)) == json.loads(json.dumps(out_twin))


def test_observations_a_tagged_state_names_but_nobody_gives_back_stay_missing() -> None:
    merge = Merge(2, tagged=True)
    obs = (PREDICTED, 0, "f", "v", 1.0, "r1", 0, 3 * TAG_SPAN + 1, 0, ((0, 0),))
    merge.add(Batch(0, {0: 1}, 100.0, False, [obs]))
    restored = Merge.from_state(json.loads(json.dumps(merge.to_state())))
    restored.replay([(*obs[:7], 3 * TAG_SPAN + 2, *obs[8:])])  # another observation
    assert restored.missing == [3 * TAG_SPAN + 1]
    assert restored.to_state()["replay"] == [3 * TAG_SPAN + 1]  # not forgotten by a snapshot


def test_a_tagged_merge_keeps_its_observations_inline_once_their_records_are_gone() -> None:
    merge = Merge(2, 0.0, tagged=True)
    obs = [
        (PREDICTED, 0, "f", "v", float(t), f"r{t}", 0, 7 * TAG_SPAN + t, t % 2, ((0, t),))
        for t in range(6)
    ]
    merge.add(Batch(0, {0: 6}, 10.0, False, obs[0::2]))
    merge.add(Batch(1, {0: 6}, 10.0, False, obs[1::2]))
    assert merge.to_state()["replay"] == [7 * TAG_SPAN + t for t in range(6)]
    merge.inline()  # the observations topic was recreated: offset 7 names another record now
    state = json.loads(json.dumps(merge.to_state()))
    assert state["replay"] == []
    assert [o[5] for o in state["buffered"]] == [f"r{t}" for t in range(6)]
    restored = Merge.from_state(state)
    assert restored.missing == []
    assert len(restored) == 6
    for p in range(2):
        restored.add(Batch(p, {0: 9}, math.inf, True, []))
    assert [o[5] for o in restored.release()] == [f"r{t}" for t in range(6)]
