"""When a join partition is due for a checkpoint (no broker: the stage and its partition are
built in memory). Input makes it due on the work it saved; markers alone (the idle repeats of
the other partitions' re-route horizons, streams/service/joinstage.py "Idle") only after
``MARKERS_CHECKPOINT_INTERVAL``, so that an idle process neither serialises its pending entries
every few seconds nor leaves its long idle waits."""

from __future__ import annotations

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.joinstage import MARKERS_CHECKPOINT_INTERVAL, JoinStage
from driftswitch.streams.service.pacing import MAX_SNAPSHOT_INTERVAL
from driftswitch.streams.service.worker import WorkerSettings

FLAGS = "flags: {ranker: {default: a, variants: {a: {weight: 100, value: 1}}}}\n"


def _stage() -> JoinStage:
    settings = WorkerSettings(bootstrap="127.0.0.1:1", topics=Topics.with_prefix("t"))
    return JoinStage(parse_config(FLAGS), settings)


def test_input_makes_a_partition_due_and_markers_alone_only_after_their_interval() -> None:
    stage = _stage()
    part = stage._open(0, None)
    saved = part.saved_at
    assert not stage._due(part, saved + 10 * MARKERS_CHECKPOINT_INTERVAL)  # nothing read
    part.markers_unsaved = True
    assert not stage._due(part, saved + MAX_SNAPSHOT_INTERVAL)
    assert not stage._due(part, saved + MARKERS_CHECKPOINT_INTERVAL - 1)
    assert stage._due(part, saved + MARKERS_CHECKPOINT_INTERVAL + 0.001)
    part.dirty = True  # input: due on the input's clock again
    assert stage._due(part, saved + MAX_SNAPSHOT_INTERVAL + 0.001)


def test_a_partition_that_read_only_markers_stays_quiet() -> None:
    # The idle loop's long waits (JoinStage._quiet) are for partitions with no input to save.
    stage = _stage()
    part = stage.parts[0] = stage._open(0, None)
    part.sent = part.announced = (0.0, True)
    part.markers_unsaved = True
    assert stage._quiet()
    part.dirty = True
    assert not stage._quiet()
