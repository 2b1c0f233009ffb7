"""The join stage's answer to records that come back below the position it read to (no broker:
the stage and its partition are built in memory).

Its consumer resets to ``earliest``: a position that falls beyond what a Kafka broker holds (the
broker lost the data, or the topic was recreated) restarts at the new data's first offset. The
join stage must then number that data in a new epoch, so that the decide stage does not take it
for observations it already has, and say so loudly. The embedded broker never answers "out of
range", so this path is only reached on Kafka; here it is driven directly.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.merge import EPOCH_SPAN
from driftswitch.streams.service.dataloss import Mark
from driftswitch.streams.service.joinstage import JoinStage
from driftswitch.streams.service.worker import WorkerSettings

FLAGS = "flags: {ranker: {default: a, variants: {a: {weight: 100, value: 1}}}}\n"
PREDICTIONS, OUTCOMES = 0, 1


def _stage() -> tuple[JoinStage, Topics]:
    topics = Topics.with_prefix("t")
    settings = WorkerSettings(bootstrap="127.0.0.1:1", topics=topics)
    return JoinStage(parse_config(FLAGS), settings), topics


def _records(*offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=o) for o in offsets]


def test_records_below_the_read_position_start_a_new_epoch_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage, topics = _stage()
    part = stage._open(2, None)
    part.read = {PREDICTIONS: 500, OUTCOMES: 300}
    part.marks = {
        PREDICTIONS: Mark(499, 1, 2),
        OUTCOMES: Mark(299, 1, 3),
    }
    with caplog.at_level(logging.ERROR):
        # Predictions came back from offset 0; outcomes go on where they were.
        stage._check_rewound(part, {PREDICTIONS: _records(0, 1, 2), OUTCOMES: _records(300, 301)})
    assert part.epoch == 1
    assert part.logical({PREDICTIONS: 3}) == {PREDICTIONS: EPOCH_SPAN + 3}
    assert part.marks == {OUTCOMES: Mark(299, 1, 3)}  # the rewound topic's fingerprint is gone
    assert stage.counters["input_resets"] == 1
    assert (
        f"input {topics.predictions.name}[2]: read to offset 500, but the next records start at "
        "offset 0"
    ) in caplog.text

    # Both topics rewound in one batch: one new epoch, two resets.
    part.read = {PREDICTIONS: 3, OUTCOMES: 302}
    stage._check_rewound(part, {PREDICTIONS: _records(1), OUTCOMES: _records(7)})
    assert part.epoch == 2
    assert stage.counters["input_resets"] == 3


def test_records_at_or_after_the_read_position_change_nothing() -> None:
    stage, _ = _stage()
    part = stage._open(0, None)
    part.read = {PREDICTIONS: 10}
    mark = Mark(9, 1, 2)
    part.marks = {PREDICTIONS: mark}
    # At the position, past it (a gap: retention deleted what was below), a topic never read
    # (position 0), and a topic with no records in the batch.
    stage._check_rewound(
        part, {PREDICTIONS: _records(10, 11), OUTCOMES: _records(0, 1), 2: _records()}
    )
    stage._check_rewound(part, {PREDICTIONS: _records(40)})
    assert part.epoch == 0
    assert part.marks == {PREDICTIONS: mark}
    assert stage.counters["input_resets"] == 0
