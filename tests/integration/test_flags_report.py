"""``driftswitch flags report`` on the embedded broker: a config and a flags topic built to hold
each stale case (expired, fully rolled out, no traffic, killed and never restored), and a worker
snapshot on the state topic for traffic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from driftswitch.streams.contract.events import (
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
    encode,
)
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.service.snapshot import Snapshot, encode_chunks
from driftswitch.streams.service.worker import state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.cli import main

DAY = 86400.0
CONFIG = """\
flags:
  old-promo:
    owner: growth
    expires: 2020-01-01
    default: a
    variants:
      a: {weight: 100, value: a}
  new-checkout:
    owner: web
    temporary: true
    default: old
    variants:
      old: {weight: 90, value: old}
      new: {weight: 10, value: new}
  forgotten:
    default: a
    variants:
      a: {weight: 100, value: a}
  ranker:
    owner: ml
    default: control
    variants:
      control: {weight: 90, value: control}
      candidate: {weight: 10, value: candidate}
  healthy:
    owner: ml
    temporary: true
    default: a
    variants:
      a: {weight: 50, value: a}
      b: {weight: 50, value: b}
"""


def change(
    flag: str,
    version: int,
    ts: float,
    weights: dict[str, int],
    killed: frozenset[str] = frozenset(),
) -> FlagChangeEvent:
    return FlagChangeEvent(
        flag=flag,
        version=version,
        variants={
            v: VariantState(weight=w, killed=v in killed, value=v) for v, w in weights.items()
        },
        default_variant=next(iter(weights)),
        cause=Cause(kind=CauseKind.MANUAL, action=Action.SET_WEIGHTS),
        ts=ts,
        actor="test",
    )


@pytest.fixture
def published(broker: EmbeddedBroker, topics: Topics, tmp_path: Path) -> tuple[Path, float]:
    """The config file, and the flags and state topics holding every stale case."""
    now = time.time()
    changes = [
        change("old-promo", 1, now - 400 * DAY, {"a": 100}),
        change("new-checkout", 1, now - 60 * DAY, {"old": 90, "new": 10}),
        change("new-checkout", 2, now - 30 * DAY, {"old": 0, "new": 100}),
        change("forgotten", 1, now - 90 * DAY, {"a": 100}),
        change("ranker", 1, now - 50 * DAY, {"control": 90, "candidate": 10}),
        change(
            "ranker", 2, now - 20 * DAY, {"control": 100, "candidate": 0}, frozenset({"candidate"})
        ),
        change("healthy", 1, now - 50 * DAY, {"a": 50, "b": 50}),
        change("healthy", 1, now - 50 * DAY, {"a": 50, "b": 50}),  # a duplicate: read once
    ]
    state = state_topic(topics)
    asyncio.run(ensure_topics(broker.bootstrap, [state]))
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for c in changes:
        producer.produce(topics.flags.name, encode(c), c.flag.encode())
    engine = {
        "flags": {
            "old-promo": {"variants": {"a": {"last_ts": now - 60}}},
            "new-checkout": {"variants": {"old": {"last_ts": None}, "new": {"last_ts": now - 5}}},
            "forgotten": {"variants": {"a": {"last_ts": now - 30 * DAY}}},
            "ranker": {"variants": {"control": {"last_ts": now - 1}}},
            "healthy": {"variants": {"a": {"last_ts": now - 2 * DAY}}},
        }
    }
    for value, headers in encode_chunks(Snapshot(1, engine, {})):
        producer.produce(state.name, value, b"reporters", headers=headers)
    assert producer.flush(30) == 0
    path = tmp_path / "driftswitch.yaml"
    path.write_text(CONFIG)
    return path, now


def env(topics: Topics) -> dict[str, str]:
    return {"DRIFTSWITCH_TOPIC_PREFIX": topics.flags.name.removesuffix(".flags.v1")}


def test_flags_report_lists_each_stale_case(
    broker: EmbeddedBroker, topics: Topics, published: tuple[Path, float]
) -> None:
    config, now = published
    args = ["flags", "report", "--config", str(config), "--broker", broker.bootstrap]
    result = CliRunner(env=env(topics)).invoke(main, [*args, "--group", "reporters", "--json"])
    assert result.exit_code == 1, result.output
    doc = orjson.loads(result.stdout)
    assert doc["notes"] == []
    assert [(f["flag"], f["kind"]) for f in doc["findings"]] == [
        ("old-promo", "expired"),
        ("new-checkout", "fully_rolled_out"),
        ("forgotten", "no_traffic"),
        ("ranker", "killed"),
    ]
    by = {f["flag"]: f for f in doc["findings"]}
    assert by["new-checkout"]["detail"].startswith("temporary flag serving new to everyone for 30.")
    assert by["new-checkout"]["owner"] == "web"
    assert by["forgotten"]["owner"] is None
    assert by["forgotten"]["since"] == pytest.approx(now - 30 * DAY)
    assert by["ranker"]["detail"].startswith("variant candidate killed 20.")

    # The table, and a shorter horizon that catches more.
    result = CliRunner(env=env(topics)).invoke(main, [*args, "--group", "reporters", "--days", "1"])
    assert result.exit_code == 1
    assert "flag debt (N = 1 days)" in result.stdout
    assert "healthy" in result.stdout  # two days without traffic
    for flag in ("old-promo", "new-checkout", "forgotten", "ranker"):
        assert flag in result.stdout


def test_flags_report_without_a_snapshot_or_a_broker(
    broker: EmbeddedBroker, topics: Topics, published: tuple[Path, float]
) -> None:
    config, _ = published
    args = ["flags", "report", "--config", str(config)]
    result = CliRunner(env=env(topics)).invoke(
        main, [*args, "--broker", broker.bootstrap, "--group", "nobody", "--json"]
    )
    assert result.exit_code == 1
    doc = orjson.loads(result.stdout)
    assert doc["notes"] == ["no worker snapshot for group 'nobody': traffic not checked"]
    assert [f["kind"] for f in doc["findings"]] == ["expired", "fully_rolled_out", "killed"]

    result = CliRunner(env={**env(topics), "DRIFTSWITCH_BROKER": None}).invoke(
        main, [*args, "--json"]
    )
    doc = orjson.loads(result.stdout)
    assert [f["kind"] for f in doc["findings"]] == ["expired"]
    assert doc["notes"] == ["no broker given: only expiry checked (--broker or DRIFTSWITCH_BROKER)"]


def test_flags_report_with_nothing_to_report(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "flags:\n  fine:\n    owner: ml\n    default: a\n"
        "    variants:\n      a: {weight: 100, value: a}\n"
    )
    result = CliRunner(env={"DRIFTSWITCH_BROKER": None}).invoke(
        main, ["flags", "report", "--config", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "no expired or stale flags among 1" in result.stdout
