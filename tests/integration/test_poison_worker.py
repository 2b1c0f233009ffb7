"""Poison records through a live worker on the embedded broker: the exact inputs that stopped or
blinded it are dead-lettered with their reason, the worker survives restarts, and the candidate
is killed exactly as backtest of the good records decides.

- an integer above 2^64 (``schema``; it used to fail every snapshot, and every restart);
- a record over 1 MiB (``oversize``, dead-lettered truncated to fit, headers say so);
- two scores of 1e308 (``schema``; the infinite sum used to make restarts impossible);
- a prediction from the year 3000 (``future_timestamp``; it used to expire every join);
- ``ts`` as a string of digits (``schema``) and as RFC 3339 (accepted, and counted);
- events that break the engine (injected: containment dead-letters them as ``internal_error``).
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.backtest import run as run_backtest
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.ingest import (
    HEADER_DETAIL,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
)
from driftswitch.streams.service.deadletter import HEADER_TRUNCATED_VALUE, MAX_VALUE_BYTES
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

pytestmark = pytest.mark.broker
#: Runs ``--stage single`` on purpose: the single worker's containment and snapshots
#: (the join stage's: test_join_hardening.py).
SINGLE = ["--stage", "single"]

GUARDRAIL = KILL_ON_ACCURACY
SCENARIO = Scenario(
    requests=8_000,
    change_at=3_000,
    rate=100.0,
    seed=11,
    variants=(
        VariantSpec("control", weight=70, accuracy=0.90),
        VariantSpec("candidate", weight=30, accuracy=0.90, accuracy_after=0.70),
    ),
)
Event = PredictionEvent | OutcomeEvent


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()  # the standard library writes integers of any size


def _prediction(rid: str, **fields: object) -> bytes:
    base: dict[str, object] = {
        "request_id": rid,
        "flag": "ranker",
        "variant": "candidate",
        "ts": 1767225600.5,
        "prediction": 1,
    }
    return _json({**base, **fields})


def poison(topics: Topics) -> list[tuple[str, bytes, bytes, str]]:
    """``(topic, key, value, expected reason)``: the exact inputs of each defect."""
    pred = topics.predictions.name
    return [
        (pred, b"big", _prediction("big", prediction=1180591620717411303424), "schema"),
        (
            pred,
            b"huge",
            b'{"request_id": "huge", "pad": "' + b"x" * (1100 * 1024) + b'"}',
            "oversize",
        ),
        (pred, b"inf1", _prediction("inf1", score=1e308), "schema"),
        (pred, b"inf2", _prediction("inf2", score=1e308), "schema"),
        (
            pred,
            b"y3000",
            _prediction("y3000", variant="control", ts=32503680000),
            "future_timestamp",
        ),
        (pred, b"digits", _prediction("digits", ts="1795952194"), "schema"),
    ]


def backtest(config_path: Path, events: list[Event]) -> list[FlagChangeEvent]:
    return replay(config_path, events)[0]


def replay(config_path: Path, events: list[Event]) -> tuple[list[FlagChangeEvent], Engine]:
    """``driftswitch backtest`` of the good events: its flag changes and final engine."""
    path = config_path.with_name("events.jsonl")
    write_jsonl(events, path)
    result = run_backtest(load_config(config_path), path)
    assert result.bad_lines == []
    changes = [out for _, out in result.outputs if isinstance(out, FlagChangeEvent)]
    return changes, result.engine


def produce_large(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> None:
    """Produce with librdkafka, allowing records up to 4 MiB (the default limit is 1 MB)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 4 * 1024 * 1024}
    )
    for topic, key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def mix(
    good: list[tuple[str, bytes, bytes]], bad: list[tuple[str, bytes, bytes]]
) -> list[tuple[str, bytes, bytes]]:
    out: list[tuple[str, bytes, bytes]] = []
    step = len(good) // (len(bad) + 1)
    for i, record in enumerate(good):
        if i and i % step == 0 and i // step <= len(bad):
            out.append(bad[i // step - 1])
        out.append(record)
    return out


def same_kill(live: list[FlagChangeEvent], offline: list[FlagChangeEvent]) -> None:
    assert [(c.version, c.cause.action.value) for c in live] == [(1, "init"), (2, "kill")]
    assert len(offline) == 1
    kill, expected = live[1], offline[0]
    assert (kill.version, kill.variants, kill.cause.guardrail, kill.cause.variant) == (
        expected.version,
        expected.variants,
        expected.cause.guardrail,
        expected.cause.variant,
    )
    # The statistic and sample counts at the kill depend on how the four partitions interleave
    # (the live read order is not the file's): the decision itself is the same.
    assert kill.cause.statistic is not None
    assert kill.cause.threshold is not None
    assert kill.cause.statistic >= kill.cause.threshold


def test_poison_records_are_dead_lettered_and_the_worker_survives_restarts(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, GUARDRAIL))
    events = list(simulate(SCENARIO))
    # One good event with an RFC 3339 ts: accepted and counted, as backtest counts it.
    first = events[0]
    assert isinstance(first, PredictionEvent)
    good = event_records(topics, events)
    good[0] = (
        good[0][0],
        good[0][1],
        good[0][2].replace(orjson.dumps(first.ts), b'"2026-01-01T00:00:00Z"'),
    )
    assert first.ts == 1767225600.0
    bad = poison(topics)
    records = mix(good, [(t, k, v) for t, k, v, _ in bad])
    half = len(records) // 2

    log = tmp_path / "worker.log"
    args = [*SINGLE, "--snapshot-interval", "0.2"]
    worker = start_worker(config_path, log, args=args)
    worker.wait_active()
    produce_large(broker.bootstrap, records[:half])
    # Read, and snapshotted at least once while running (how many snapshots depends on how
    # the input came in batches: one, after the last batch, is enough). The clean stop below
    # writes a snapshot of everything read in any case.
    worker.wait_for(
        "first half read and snapshotted",
        lambda s: s["records"] == half and s["snapshots_written"] >= 1,
        90,
    )
    # A clean stop, then a restart: it used to fail (null score sum; 64-bit overflow).
    worker.stop()
    assert worker.proc.returncode == 0, log.read_text()[-3000:]
    worker = start_worker(config_path, log, args=args)
    worker.wait_active()
    produce_large(broker.bootstrap, records[half:])
    worker.wait_for("all read", lambda s: s["records"] == len(records), 90)
    # And a SIGKILL with everything read: the replay is clean too.
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()
    worker = start_worker(config_path, log, args=args)
    worker.wait_for(
        "all read again", lambda s: s["role"] == "active" and s["records"] == len(records), 90
    )

    same_kill(flag_changes(broker.bootstrap, topics), backtest(config_path, events))

    dead = read_topic(broker.bootstrap, topics.deadletter.name)
    by_key: dict[bytes, list[dict[str, bytes]]] = {}
    for r in dead:
        by_key.setdefault(r.key, []).append(dict(r.headers))
    assert set(by_key) == {k for _, k, _, _ in bad}
    for _, key, _, reason in bad:
        headers = by_key[key][0]
        assert headers[HEADER_REASON].decode() == reason, (key, headers[HEADER_DETAIL])
    huge = next(r for r in dead if r.key == b"huge")
    assert len(huge.value) == MAX_VALUE_BYTES
    assert int(dict(huge.headers)[HEADER_TRUNCATED_VALUE]) == len(bad[1][2])
    assert huge.value == bad[1][2][:MAX_VALUE_BYTES]
    # The headers name where the whole record was read: the record there is the original.
    where = dict(huge.headers)
    assert where[HEADER_TOPIC].decode() == topics.predictions.name
    source = [
        m
        for m in read_topic(broker.bootstrap, topics.predictions.name, int(where[HEADER_PARTITION]))
        if m.offset == int(where[HEADER_OFFSET])
    ]
    assert [(m.key, m.value) for m in source] == [(b"huge", bad[1][2])]
    detail = dict(next(r for r in dead if r.key == b"digits").headers)[HEADER_DETAIL].decode()
    assert "RFC 3339" in detail


SITECUSTOMIZE = '''
"""Fault injection for a test: events the engine fails on, as no validated input should."""
from driftswitch.streams.pipeline import engine as _engine

_process = _engine.Engine.process


def process(self, events, positions=None):
    if any(getattr(e, "request_id", "") == "explode" for e in events):
        raise RuntimeError("injected failure")
    result = _process(self, events, positions)
    if any(getattr(e, "request_id", "") == "corrupt" for e in events):
        self.counters["corrupt"] = 2**70  # the state can no longer be snapshotted
    return result


_engine.Engine.process = process
'''


def test_an_event_that_breaks_the_engine_is_contained_and_dead_lettered(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, GUARDRAIL))
    events = list(simulate(SCENARIO))
    pred = topics.predictions.name
    bad = [
        (pred, b"explode", _prediction("explode", variant="control")),
        (pred, b"corrupt", _prediction("corrupt", variant="control")),
    ]
    records = mix(event_records(topics, events), bad)
    log = tmp_path / "worker.log"
    worker = start_worker(
        config_path,
        log,
        args=[*SINGLE, "--snapshot-interval", "0.2"],
        env={"PYTHONPATH": str(inject)},
    )
    worker.wait_active()
    produce(records)
    worker.wait_for("all read", lambda s: s["records"] == len(records), 120)

    # Both were found, left out and dead-lettered; everything else counted exactly once.
    dead = read_topic(broker.bootstrap, topics.deadletter.name)
    reasons = {r.key: dict(r.headers)[HEADER_REASON].decode() for r in dead}
    assert reasons == {b"explode": "internal_error", b"corrupt": "internal_error"}
    details = [dict(r.headers)[HEADER_DETAIL].decode() for r in dead]
    assert all(d.startswith(("RuntimeError at", "TypeError at")) for d in details), details
    assert all("injected" not in d for d in details)  # the message is not repeated
    changes, engine = replay(config_path, events)
    same_kill(flag_changes(broker.bootstrap, topics), changes)
    live = worker.get("/api/v1/flags/ranker")["evaluation"]["variants"]
    expected: Any = engine.snapshot()
    for variant in ("control", "candidate"):
        for key in ("predictions", "joined", "labelled", "accuracy"):
            assert live[variant][key] == expected["flags"]["ranker"]["variants"][variant][key]
    metrics = worker_metrics(worker)
    assert 'driftswitch_deadletter_records_total{reason="internal_error"} 2.0' in metrics
    # One recovery per failure seen; both records may fall in the same replayed range.
    recoveries = re.search(r"^driftswitch_engine_recoveries_total (\S+)$", metrics, re.M)
    assert recoveries is not None
    assert float(recoveries[1]) in (1.0, 2.0)
    assert "restoring the last snapshot and replaying with containment" in log.read_text()


def worker_metrics(worker: WorkerProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=5) as r:
        return str(r.read().decode())
