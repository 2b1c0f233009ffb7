"""The join stage's input disorder counts (``Disorder`` per input topic): what a config reload
does to them (no broker: the stage is built and reconfigured in memory)."""

from __future__ import annotations

import asyncio
import math

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.joinstage import JoinStage
from driftswitch.streams.service.worker import WorkerSettings


def _config(lateness: str) -> Config:
    flags = "{ranker: {default: a, variants: {a: {weight: 100, value: 1}}}}"
    return parse_config(f"join: {{allowed_lateness: {lateness}}}\nflags: {flags}\n")


def _counted(stage: JoinStage) -> dict[str, int]:
    return {topic: d["records"] for topic, d in stage.status()["disorder"].items()}


def test_a_reload_that_changes_the_allowed_lateness_starts_the_counts_again() -> None:
    """The allowed lateness is a bucket bound of the counts: a reload keeping it keeps them, a
    reload changing it starts them again with the new bound."""
    topics = Topics.with_prefix("t")
    stage = JoinStage(_config("500ms"), WorkerSettings(bootstrap="127.0.0.1:1", topics=topics))
    predictions = topics.predictions.name
    for d in stage.disorder.values():
        assert d.lateness == 0.5
    first = next(iter(stage.disorder))
    stage.disorder[first].observe(-math.inf, [2.0, 1.0])  # 1.0 s behind: beyond 0.5 s
    counted = _counted(stage)
    assert sum(counted.values()) == 2

    asyncio.run(stage.reconfigure(_config("0.5")))
    assert _counted(stage) == counted

    asyncio.run(stage.reconfigure(_config("250ms")))
    status = stage.status()["disorder"]
    assert sorted(status) == sorted([predictions, topics.outcomes.name])
    for d in status.values():
        assert d["records"] == 0
        assert d["lateness_seconds"] == 0.25
        assert 0.25 in [bound for bound, _ in d["buckets"]]
