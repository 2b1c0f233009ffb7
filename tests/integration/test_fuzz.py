"""Fuzz: over 10,000 bad records of 28 kinds, every poison kind among them, into a live worker
that is killed and restarted twice; a degrading candidate is still killed exactly as backtest of
the good records decides, and every bad record is dead-lettered with its kind's reason."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.backtest import run as run_backtest
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

pytestmark = [pytest.mark.broker, pytest.mark.slow]
#: Runs ``--stage single`` on purpose: the single worker's decoder and snapshots under every
#: input (it waits for the single worker's record counts).
SINGLE = ["--stage", "single"]

GUARDRAIL = KILL_ON_ACCURACY
SCENARIO = Scenario(
    requests=9_000,
    change_at=4_000,
    rate=100.0,
    seed=23,
    variants=(
        VariantSpec("control", weight=70, accuracy=0.90),
        VariantSpec("candidate", weight=30, accuracy=0.90, accuracy_after=0.72),
    ),
)
T0 = 1767225600.0


def _j(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _p(i: int, **fields: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "request_id": f"bad-{i}",
        "flag": "ranker",
        "variant": "candidate",
        "ts": T0 + i * 0.001,
        "prediction": 1,
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


#: kind → (topic: "p" or "o", value for the i-th record, expected reason).
KINDS: dict[str, tuple[str, Callable[[int], bytes | None], str]] = {
    "truncated-json": ("p", lambda i: _j(_p(i))[:-5], "malformed_json"),
    "array": ("p", lambda i: b"[1, 2, 3]", "schema"),
    "binary": ("o", lambda i: bytes(range(256))[i % 200 :], "malformed_json"),
    "empty": ("p", lambda i: b"", "malformed_json"),
    "tombstone": ("o", lambda i: None, "null_value"),
    "missing-variant": ("p", lambda i: _j(_p(i, variant=None)), "schema"),
    "unknown-field": ("p", lambda i: _j(_p(i, colour="red")), "schema"),
    "bad-flag-name": ("p", lambda i: _j(_p(i, flag="bad flag")), "schema"),
    "milliseconds": ("p", lambda i: _j(_p(i, ts=T0 * 1000)), "schema"),
    "negative-ts": ("o", lambda i: _j({"request_id": f"b{i}", "ts": -1, "label": 1}), "schema"),
    "digits-ts": ("p", lambda i: _j(_p(i, ts="1795952194")), "schema"),
    "date-only-ts": (
        "o",
        lambda i: _j({"request_id": f"b{i}", "ts": "2026-01-01", "label": 1}),
        "schema",
    ),
    "bool-ts": ("p", lambda i: _j(_p(i, ts=True)), "schema"),
    "int-above-2^64": ("p", lambda i: _j(_p(i, prediction=1180591620717411303424 + i)), "schema"),
    "score-1e308": ("p", lambda i: _j(_p(i, score=1e308)), "schema"),
    "nan-literal": ("p", lambda i: _j(_p(i, score=0.5)).replace(b"0.5", b"NaN"), "schema"),
    "negative-latency": ("p", lambda i: _j(_p(i, latency_ms=-1)), "schema"),
    "label-object": (
        "o",
        lambda i: _j({"request_id": f"b{i}", "ts": T0, "label": {"a": 1}}),
        "schema",
    ),
    "features-string": ("p", lambda i: _j(_p(i, features={"x": "y"})), "schema"),
    "oversize": ("p", lambda i: b'{"pad": "' + b"x" * 70_000 + b'"}', "oversize"),
    "oversize-1MiB": ("p", lambda i: b'{"pad": "' + b"x" * (1100 * 1024) + b'"}', "oversize"),
    "year-3000": ("p", lambda i: _j(_p(i, ts=32503680000 + i)), "future_timestamp"),
    "unknown-flag": ("p", lambda i: _j(_p(i, flag="nosuch")), "unknown_flag"),
    "unknown-variant": ("p", lambda i: _j(_p(i, variant="nosuch")), "unknown_variant"),
    "outcome-unknown-flag": (
        "o",
        lambda i: _j({"request_id": f"b{i}", "ts": T0, "label": 1, "flag": "nosuch"}),
        "unknown_flag",
    ),
    "outcome-on-predictions": (
        "p",
        lambda i: _j({"request_id": f"b{i}", "ts": T0, "label": 1}),
        "wrong_topic",
    ),
    "prediction-on-outcomes": ("o", lambda i: _j(_p(i)), "wrong_topic"),
    "string-score": ("p", lambda i: _j(_p(i, score="high")), "schema"),
}
#: Records per kind (the 1 MiB ones are few: they are big).
COUNTS = {kind: 3 if kind == "oversize-1MiB" else 400 for kind in KINDS}


def produce(bootstrap: str, records: list[tuple[str, bytes, bytes | None]]) -> None:
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


@pytest.mark.timeout(900)
def test_fuzzed_input_with_restarts_kills_like_backtest(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, GUARDRAIL))
    events: list[PredictionEvent | OutcomeEvent] = list(simulate(SCENARIO))
    good = event_records(topics, events)
    topic_of = {"p": topics.predictions.name, "o": topics.outcomes.name}
    bad: list[tuple[str, bytes, bytes | None, str]] = []
    n = 0
    for kind, (where, make, _) in KINDS.items():
        for _ in range(COUNTS[kind]):
            n += 1
            bad.append((topic_of[where], f"{kind}:{n}".encode(), make(n), kind))
    assert len(bad) >= 10_000
    assert len(KINDS) >= 20
    # Interleave deterministically: bad records spread evenly through the good ones.
    order = sorted(
        [(i / len(good), 0, r) for i, r in enumerate(good)]
        + [((j * 7919 % len(bad)) / len(bad), 1, (t, k, v)) for j, (t, k, v, _) in enumerate(bad)],
        key=lambda x: (x[0], x[1]),
    )
    records = [r for _, _, r in order]
    thirds = [records[: len(records) // 3], records[len(records) // 3 : 2 * len(records) // 3]]
    thirds.append(records[2 * len(records) // 3 :])

    log = tmp_path / "worker.log"
    args = [*SINGLE, "--snapshot-interval", "0.3"]
    done = 0
    worker = start_worker(config_path, log, args=args)
    worker.wait_active()
    for k, part in enumerate(thirds):
        produce(broker.bootstrap, part)
        done += len(part)
        worker.wait_for(f"part {k} read", lambda s, d=done: s["records"] == d, 120)
        if k == 0:  # SIGKILL: replays from the last snapshot
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            worker = start_worker(config_path, log, args=args)
            worker.wait_active()
        elif k == 1:  # a clean stop
            worker.stop()
            assert worker.proc.returncode == 0, log.read_text()[-3000:]
            worker = start_worker(config_path, log, args=args)
            worker.wait_active()
    worker.wait_for("all read", lambda s: s["records"] == len(records), 120)
    # No restart took its input for lost data (a slow broker once looked like one that lost it).
    assert "lost its data" not in log.read_text()

    path = tmp_path / "good.jsonl"
    write_jsonl(events, path)
    result = run_backtest(load_config(config_path), path)
    offline = [o for _, o in result.outputs if isinstance(o, FlagChangeEvent)]
    live = flag_changes(broker.bootstrap, topics)
    assert [(c.version, c.cause.action.value) for c in live] == [(1, "init"), (2, "kill")]
    assert len(offline) == 1
    assert (live[1].variants, live[1].cause.guardrail, live[1].cause.variant) == (
        offline[0].variants,
        offline[0].cause.guardrail,
        offline[0].cause.variant,
    )
    # Every bad record dead-lettered (at least once: replays after the SIGKILL may repeat some)
    # with its kind's reason; no good record was.
    dead = read_topic(broker.bootstrap, topics.deadletter.name)
    seen: dict[tuple[str, str, str], str] = {}
    for r in dead:
        h = {k: v.decode() for k, v in r.headers}
        seen[(h[HEADER_TOPIC], h[HEADER_PARTITION], h[HEADER_OFFSET])] = r.key.decode()
        kind = r.key.decode().split(":")[0]
        assert h[HEADER_REASON] == KINDS[kind][2], (kind, h)
    assert Counter(key.split(":")[0] for key in seen.values()) == Counter(COUNTS)
    live_stats = worker.get("/api/v1/flags/ranker")["evaluation"]["variants"]
    expected = result.engine.snapshot()["flags"]["ranker"]["variants"]  # type: ignore[index]
    for variant in ("control", "candidate"):
        for key in ("predictions", "joined", "labelled", "accuracy"):
            assert live_stats[variant][key] == expected[variant][key], (variant, key)  # type: ignore[index]
