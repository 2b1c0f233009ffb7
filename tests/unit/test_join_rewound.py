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


def _times(*ts: float) -> list[SimpleNamespace]:
    return [SimpleNamespace(ts=t) for t in ts]


def test_a_reset_of_one_topic_leaves_the_other_topics_records_counted_once() -> None:
    # The input's disorder counts each record once per process, also what a recovery from an
    # older checkpoint reads again. The outcomes topic's data is lost and read anew: that
    # moves the partition to a new epoch, but the predictions' offsets still name the same
    # records, so a recovery from a checkpoint taken before the reset (in the old epoch) must
    # not count the predictions it reads again, nor the outcomes' new data when it finds the
    # loss again.
    stage, _ = _stage()
    part = stage._open(0, None)
    disorder = stage.disorder
    stage._observe_disorder(
        part, PREDICTIONS, _times(1, 2, 3, 4), 0, 4, _records(0, 1, 2, 3), [0, 1, 2, 3]
    )
    stage._observe_disorder(part, OUTCOMES, _times(1, 2), 0, 2, _records(0, 1), [0, 1])
    part.read = {PREDICTIONS: 4, OUTCOMES: 2}
    stage._check_rewound(part, {OUTCOMES: _records(0)})
    assert part.epoch == 1
    stage._observe_disorder(part, OUTCOMES, _times(5), 0, 1, _records(0), [0])  # the new data
    stage._observe_disorder(part, PREDICTIONS, _times(5, 6), 0, 2, _records(4, 5), [0, 1])
    assert (disorder[PREDICTIONS].records, disorder[OUTCOMES].records) == (6, 3)
    older = stage._open(0, None)  # the checkpoint before the reset: epoch 0
    assert older.epoch == 0
    stage._observe_disorder(
        older,
        PREDICTIONS,
        _times(1, 2, 3, 4, 5, 6),
        0,
        6,
        _records(0, 1, 2, 3, 4, 5),
        list(range(6)),
    )
    assert disorder[PREDICTIONS].records == 6  # read again, not counted again
    stage._observe_disorder(older, PREDICTIONS, _times(7), 0, 1, _records(6), [0])
    assert disorder[PREDICTIONS].records == 7  # what follows is counted
    # The recovery finds the outcomes lost again (its checkpoint's position is the old data's):
    # the new data it reads again was counted already.
    older.read[OUTCOMES] = 2
    stage._check_rewound(older, {OUTCOMES: _records(0)})
    assert older.resets == part.resets == {OUTCOMES: 1}
    stage._observe_disorder(older, OUTCOMES, _times(5), 0, 1, _records(0), [0])
    assert disorder[OUTCOMES].records == 3
    stage._observe_disorder(older, OUTCOMES, _times(6), 0, 1, _records(1), [0])
    assert disorder[OUTCOMES].records == 4
