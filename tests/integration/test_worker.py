"""End to end: `driftswitch run` on the embedded broker, fed by confluent-kafka (librdkafka).

Each test runs the real worker command as a subprocess on its own topics (the ``topics`` fixture
gives every test a unique prefix) and checks what a user would see on the topics and the HTTP API:
the kill on the flags topic with its cause, the same decision as an offline replay of the same
events through the engine, dead-lettered garbage with reasons, and a SIGKILLed worker that
resumes without losing, repeating or double-counting anything.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import (
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
    encode,
)
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.backtest import run as run_backtest
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.ingest import (
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
)
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import (
    Scenario,
    VariantSpec,
    config_yaml,
    simulate,
    write_jsonl,
)
from driftswitch.streams.tools.testing import (
    KILL_ON_ACCURACY,
    WorkerProcess,
    event_records,
    flag_changes,
    read_topic,
)

GUARDRAIL = KILL_ON_ACCURACY
#: Runs ``--stage single`` on purpose: the single worker, its snapshots, restarts and status
#: counts.
SINGLE = ["--stage", "single"]

SCENARIO = Scenario(
    requests=12_000,
    change_at=6_000,
    rate=100.0,
    seed=7,
    variants=(
        VariantSpec("control", weight=70, accuracy=0.90),
        VariantSpec("candidate", weight=30, accuracy=0.90, accuracy_after=0.75),
    ),
)
Event = PredictionEvent | OutcomeEvent


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(simulate(SCENARIO))


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "ranker.yaml"
    path.write_text(config_yaml(SCENARIO, GUARDRAIL))
    return path


def backtest(config_path: Path, events: list[Event]) -> tuple[list[FlagChangeEvent], Engine]:
    """``driftswitch backtest``'s replay of the same events from a JSON Lines file."""
    path = config_path.with_name("events.jsonl")
    write_jsonl(events, path)
    result = run_backtest(load_config(config_path), path)
    assert result.bad_lines == []
    changes = [out for _, out in result.outputs if isinstance(out, FlagChangeEvent)]
    return changes, result.engine


def same_decision(live: FlagChangeEvent, offline: FlagChangeEvent) -> None:
    """The decision a user acts on: flag, version, new state, and what fired."""
    assert (live.flag, live.version, live.variants, live.default_variant) == (
        offline.flag,
        offline.version,
        offline.variants,
        offline.default_variant,
    )
    assert (live.cause.kind, live.cause.action, live.cause.guardrail, live.cause.variant) == (
        offline.cause.kind,
        offline.cause.action,
        offline.cause.guardrail,
        offline.cause.variant,
    )
    assert live.cause.detector == offline.cause.detector == "cusum"
    assert live.cause.statistic is not None
    assert live.cause.threshold is not None
    assert live.cause.statistic >= live.cause.threshold


def test_confluent_events_kill_the_candidate_like_backtest(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    events: list[Event],
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    flagd_path = tmp_path / "flags.flagd.json"
    started = time.time()
    worker = start_worker(
        config_path, tmp_path / "worker.log", args=[*SINGLE, "--flagd-file", str(flagd_path)]
    )
    worker.wait_active()
    active = time.time()
    initial = orjson.loads(flagd_path.read_bytes())["flags"]["ranker"]
    assert initial["metadata"]["driftswitchVersion"] == 1
    assert "candidate" in dict(initial["targeting"]["fractional"])
    produce(event_records(topics, events))
    worker.wait_for("all records read", lambda s: s["records"] == len(events), 60)

    changes = flag_changes(broker.bootstrap, topics)
    assert [(c.version, c.cause.action.value) for c in changes] == [(1, "init"), (2, "kill")]
    # The initial state carries the time it was published, not 1970.
    assert started <= changes[0].ts <= active
    kill = changes[1]
    assert kill.variants["candidate"].killed
    assert kill.variants["candidate"].weight == 0
    assert kill.variants["control"].weight == 100
    assert kill.cause.guardrail == "candidate-accuracy"
    assert kill.cause.samples["candidate"] >= 200

    offline, _ = backtest(config_path, events)
    assert len(offline) == 1
    same_decision(kill, offline[0])
    api = worker.get("/api/v1/flags/ranker")
    assert api["state"]["version"] == 2
    assert api["state"]["variants"]["candidate"]["killed"] is True
    # The guardrail's budget in time, at the rate its samples arrived (event time): the
    # candidate gets 30 % of 100 requests/s, so about 30 labelled events/s.
    guard = api["evaluation"]["guardrails"]["candidate-accuracy"]
    spent = api["evaluation"]["variants"]["candidate"]
    rate = (guard["samples"]["candidate"] - 1) / (spent["last_ts"] - spent["first_ts"])
    assert guard["budget"]["budget"] == "arl0"
    assert guard["budget"]["rate_source"] == "observed"
    assert guard["budget"]["rate"] == pytest.approx(rate)
    assert 20 < rate < 35
    assert guard["budget"]["mean_seconds_between"] == pytest.approx(100_000 / rate)
    assert guard["budget"]["chance_within"]["1d"] == pytest.approx(
        -math.expm1(-86_400 * rate / 100_000)
    )
    # flagd consumers: the file (file sync, provider file mode) and the HTTP document agree,
    # and the killed candidate is no longer in the fractional split.
    served = worker.get("/flagd/flags.json")
    assert served == orjson.loads(flagd_path.read_bytes())
    ranker = served["flags"]["ranker"]
    assert ranker["metadata"]["driftswitchVersion"] == 2
    assert ranker["defaultVariant"] == "control"
    assert "candidate" not in dict(ranker.get("targeting", {}).get("fractional", []))


def test_garbage_changes_no_decision_and_is_dead_lettered(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    events: list[Event],
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    pred = topics.predictions.name
    good = event_records(topics, events)
    garbage = [
        (pred, b"g1", b'{"request_id": "x", "flag":'),
        (pred, b"g2", orjson.dumps({"request_id": "x", "flag": "ranker"})),
        (pred, b"g3", b"x" * (70 * 1024)),
        (
            pred,
            b"g4",
            encode(
                PredictionEvent(request_id="g4", flag="nosuch", variant="a", ts=1.0e9, prediction=1)
            ),
        ),
        (
            pred,
            b"g5",
            encode(
                PredictionEvent(
                    request_id="g5", flag="ranker", variant="nosuch", ts=1.0e9, prediction=1
                )
            ),
        ),
        (topics.outcomes.name, b"g6", b"\x00\x01binary"),
    ]
    mixed: list[tuple[str, bytes, bytes]] = []
    step = len(good) // len(garbage)
    for i, record in enumerate(good):
        if i % step == 0 and i // step < len(garbage):
            mixed.append(garbage[i // step])
        mixed.append(record)

    worker = start_worker(config_path, tmp_path / "worker.log", args=SINGLE)
    worker.wait_active()
    produce(mixed)
    worker.wait_for("all records read", lambda s: s["records"] == len(mixed), 60)

    offline, _ = backtest(config_path, events)
    changes = flag_changes(broker.bootstrap, topics)
    assert [c.version for c in changes] == [1, 2]
    same_decision(changes[1], offline[0])

    dead = read_topic(broker.bootstrap, topics.deadletter.name)
    reasons = sorted(dict(r.headers)[HEADER_REASON].decode() for r in dead)
    assert reasons == sorted(
        [
            "malformed_json",
            "schema",
            "oversize",
            "unknown_flag",
            "unknown_variant",
            "malformed_json",
        ]
    )
    assert sorted(r.value for r in dead) == sorted(value for _, _, value in garbage)
    # Each dead letter names where its record was read: the record at that topic, partition
    # and offset is the one dead-lettered (same key, same bytes).
    inputs: dict[tuple[str, int], dict[int, Any]] = {}
    for r in dead:
        headers = dict(r.headers)
        topic = headers[HEADER_TOPIC].decode()
        assert topic in {pred, topics.outcomes.name}
        partition = int(headers[HEADER_PARTITION])
        if (topic, partition) not in inputs:
            read = read_topic(broker.bootstrap, topic, partition)
            inputs[(topic, partition)] = {m.offset: m for m in read}
        source = inputs[(topic, partition)].get(int(headers[HEADER_OFFSET]))
        assert source is not None, headers
        assert (source.key, source.value) == (r.key, r.value), headers
    assert worker.health() is not None
    status = worker.health() or {}
    assert status["rejected"] == {
        "malformed_json": 2,
        "schema": 1,
        "oversize": 1,
        "unknown_flag": 1,
        "unknown_variant": 1,
    }


def test_sigkill_and_restart_loses_and_repeats_nothing(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    events: list[Event],
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    records = event_records(topics, events)
    # The candidate degrades from request 6,000 on; the kill comes after ~13,000 events.
    cut = 10_000
    log = tmp_path / "worker.log"
    first = start_worker(config_path, log, args=[*SINGLE, "--snapshot-interval", "0.5"])
    first.wait_active()
    produce(records[:cut])
    first.wait_for(
        "a snapshot and all records read",
        lambda s: s["records"] == cut and s["snapshots_written"] >= 1,
        60,
    )
    # Mid-stream, with input read since the last snapshot: SIGKILL, no goodbye.
    produce(records[cut : cut + 500])
    first.wait_for("more records read", lambda s: s["records"] > cut, 30)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    produce(records[cut + 500 :])

    second = start_worker(config_path, log, args=[*SINGLE, "--snapshot-interval", "0.5"])
    second.wait_for("resumed", lambda s: s["role"] == "active", 60)
    status = second.health() or {}
    assert status["resumed_from_snapshot"] is not None
    second.wait_for("all records read", lambda s: s["records"] == len(records), 60)

    # No decision lost or duplicated: every version once, in order, the kill exactly once.
    changes = flag_changes(broker.bootstrap, topics)
    assert [c.version for c in changes] == [1, 2]
    offline, engine = backtest(config_path, events)
    same_decision(changes[1], offline[0])

    # No outcome double-counted: the resumed worker's statistics equal the offline replay's.
    live = second.get("/api/v1/flags/ranker")["evaluation"]["variants"]
    offline_status: Any = engine.snapshot()
    expected = offline_status["flags"]["ranker"]["variants"]
    for variant in ("control", "candidate"):
        for key in ("predictions", "joined", "labelled", "accuracy", "errors", "latency_ms"):
            assert live[variant][key] == expected[variant][key], (variant, key)


def test_a_second_worker_stands_by_and_writes_nothing(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    events: list[Event],
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    first = start_worker(config_path, tmp_path / "first.log", args=SINGLE)
    first.wait_active()
    second = start_worker(config_path, tmp_path / "second.log", args=SINGLE)
    second.wait_for("standby", lambda s: s["role"] == "standby", 60)
    produce(event_records(topics, events))
    # The lease group rebalanced when the second joined; the sticky assignor kept the lease
    # with the first, so the second never read or wrote anything.
    first.wait_for("all records read", lambda s: s["records"] == len(events), 60)
    status = second.health() or {}
    assert (status["role"], status["records"]) == ("standby", 0)
    assert [c.version for c in flag_changes(broker.bootstrap, topics)] == [1, 2]
