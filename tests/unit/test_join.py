"""JoinBuffer: both arrival orders, event-time TTL expiry, duplicates counted once, the bound."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftswitch.streams.pipeline.join import DUPLICATE, JoinBuffer


def test_prediction_then_outcome_joins() -> None:
    buf = JoinBuffer(ttl=60.0, max_pending=10)
    assert buf.add_prediction("r1", 100.0, "f/a", ("yes", False)) is None
    assert buf.add_outcome("r1", 105.0, "yes") == (100.0, "f/a", ("yes", False))
    assert buf.joined == 1
    assert buf.pending_predictions == buf.pending_outcomes == 0


def test_outcome_then_prediction_joins() -> None:
    buf = JoinBuffer(ttl=60.0, max_pending=10)
    assert buf.add_outcome("r1", 100.0, 3.5) is None
    assert buf.add_prediction("r1", 99.0, "f/a", (3.0,)) == (100.0, 3.5)
    assert buf.joined == 1
    assert buf.pending_outcomes == 0


def test_unjoined_records_expire_in_event_time_and_are_counted_per_side() -> None:
    buf = JoinBuffer(ttl=10.0, max_pending=10)
    buf.add_prediction("p-old", 100.0, "f/a", None)
    buf.add_prediction("p-old-b", 100.5, "f/b", None)
    buf.add_outcome("o-old", 101.0, 1)
    buf.add_prediction("p-new", 105.0, "f/a", None)
    # The watermark is the second largest ts: 112 once the outcome below arrives (cutoff 102).
    buf.add_prediction("tick", 112.0, "f/a", None)
    # An outcome for an expired prediction does not join: the prediction is counted expired and
    # the outcome now waits for a prediction of its own.
    assert buf.add_outcome("p-old", 112.0, 1) is None
    buf.expire()
    assert buf.expired_predictions == {"f/a": 1, "f/b": 1}
    assert buf.expired_outcomes == 1
    assert buf.pending_predictions == 2  # p-new, tick
    assert buf.pending_outcomes == 1  # the late outcome for p-old
    assert buf.add_outcome("p-new", 113.0, 0) == (105.0, "f/a", None)


def test_a_record_older_than_the_watermark_minus_ttl_expires_on_arrival() -> None:
    buf = JoinBuffer(ttl=10.0, max_pending=10)
    buf.add_prediction("a", 199.0, "f/a", None)
    buf.add_prediction("b", 200.0, "f/a", None)  # two records agree: the watermark is 199
    assert buf.add_prediction("late", 150.0, "f/b", None) is None
    assert buf.add_outcome("late-o", 150.0, 1) is None
    assert buf.expired_predictions == {"f/b": 1}
    assert buf.expired_outcomes == 1
    assert buf.pending_predictions == 2
    assert buf.pending_outcomes == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("prediction", "prediction"),
        ("outcome", "outcome"),
    ],
    ids=["two-predictions", "two-outcomes"],
)
def test_duplicate_while_pending_counts_once(first: str, second: str) -> None:
    buf = JoinBuffer(ttl=60.0, max_pending=10)
    add = {
        "prediction": lambda: buf.add_prediction("r", 1.0, "f/a", None),
        "outcome": lambda: buf.add_outcome("r", 1.0, 1),
    }
    assert add[first]() is None
    assert add[second]() is DUPLICATE
    assert buf.duplicate_predictions + buf.duplicate_outcomes == 1
    assert buf.pending_predictions + buf.pending_outcomes == 1


def test_duplicates_after_the_join_are_reported_until_the_ttl_passes() -> None:
    buf = JoinBuffer(ttl=60.0, max_pending=10)
    buf.add_prediction("r", 10.0, "f/a", None)
    assert buf.add_outcome("r", 20.0, 1) is not None
    assert buf.add_outcome("r", 21.0, 1) is DUPLICATE
    assert buf.add_prediction("r", 22.0, "f/a", None) is DUPLICATE
    assert (buf.joined, buf.duplicate_outcomes, buf.duplicate_predictions) == (1, 1, 1)
    buf.add_prediction("later", 200.0, "f/a", None)  # the joined id is now older than the TTL
    buf.expire()
    assert buf.add_outcome("r", 200.0, 1) is None  # no longer remembered: a new pending outcome


def test_max_pending_evicts_the_oldest_and_counts_it() -> None:
    buf = JoinBuffer(ttl=1e6, max_pending=3)
    buf.add_prediction("p1", 1.0, "f/a", None)
    buf.add_outcome("o1", 2.0, 1)
    buf.add_prediction("p2", 3.0, "f/a", None)
    buf.add_outcome("o2", 4.0, 1)  # over the bound: p1 (oldest) goes
    buf.add_prediction("p3", 5.0, "f/a", None)  # o1 goes
    assert (buf.evicted_predictions, buf.evicted_outcomes) == (1, 1)
    assert buf.pending_predictions + buf.pending_outcomes == 3
    assert buf.add_outcome("p1", 6.0, 1) is None  # p1 was evicted: no join
    assert buf.add_prediction("o2", 6.0, "f/a", None) == (4.0, 1)


def test_recently_joined_ids_are_bounded_too() -> None:
    buf = JoinBuffer(ttl=1e6, max_pending=2)
    for i in range(5):
        buf.add_prediction(f"r{i}", float(i), "f/a", None)
        buf.add_outcome(f"r{i}", float(i), 1)
    assert orjson.loads(orjson.dumps(buf.to_state()))["joined_ids"] == {"r3": 3.0, "r4": 4.0}


_ops = st.lists(
    st.tuples(
        st.sampled_from(["p", "o"]),
        st.integers(0, 15),  # request id
        st.floats(0, 100, allow_nan=False),  # ts
    ),
    max_size=60,
)


def _apply(buf: JoinBuffer, ops: list[tuple[str, int, float]]) -> list[object]:
    out: list[object] = []
    for side, rid, ts in ops:
        if side == "p":
            out.append(buf.add_prediction(f"r{rid}", ts, "f/a", ("x", rid)))
        else:
            out.append(buf.add_outcome(f"r{rid}", ts, rid % 2 == 0))
    return out


@settings(max_examples=150, deadline=None)
@given(ops=_ops, cut=st.integers(0, 60), ttl=st.floats(1, 50), bound=st.integers(1, 20))
def test_state_round_trip_and_sweeps_do_not_change_results(
    ops: list[tuple[str, int, float]], cut: int, ttl: float, bound: int
) -> None:
    whole = JoinBuffer(ttl, bound)
    expected = _apply(whole, ops)
    whole.expire()
    first = JoinBuffer(ttl, bound)
    got = _apply(first, ops[:cut])
    first.expire()
    # Through orjson, as every snapshot is: it writes a dict's own order, which for an
    # OrderedDict could differ from its iteration order (JoinBuffer.to_state).
    resumed = JoinBuffer.from_state(orjson.loads(orjson.dumps(first.to_state())))
    got += _apply(resumed, ops[cut:])
    resumed.expire()
    assert [_plain(x) for x in got] == [_plain(x) for x in expected]
    assert orjson.dumps(resumed.to_state()) == orjson.dumps(whole.to_state())


def _plain(x: object) -> object:
    return json.loads(json.dumps(x, default=str))


def test_the_state_keeps_a_rejoined_id_in_recency_order() -> None:
    """A request id joined again goes to the end of the joined ids in the serialised state too,
    so a restored buffer forgets the same id first (OrderedDict.move_to_end would have moved it
    only in the iteration order, not in what orjson writes)."""
    buf = JoinBuffer(ttl=10.0, max_pending=3)
    for rid, ts in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        buf.add_prediction(rid, ts, "f/x", None)
        buf.add_outcome(rid, ts, 1)
    buf.add_prediction("d", 20.0, "f/x", None)  # a's, b's and c's joins are now past the ttl
    buf.add_prediction("a", 21.0, "f/x", None)
    buf.add_outcome("a", 21.0, 1)  # a joined again: the most recent
    state = orjson.loads(orjson.dumps(buf.to_state()))
    assert list(state["joined_ids"]) == ["b", "c", "a"]
    resumed = JoinBuffer.from_state(state)
    resumed.add_prediction("e", 22.0, "f/x", None)
    resumed.add_outcome("e", 22.0, 1)  # one joined id too many: b, the oldest, goes
    assert list(orjson.loads(orjson.dumps(resumed.to_state()))["joined_ids"]) == ["c", "a", "e"]


def test_a_state_of_an_earlier_version_with_lists_of_entries_still_loads() -> None:
    buf = JoinBuffer(ttl=60.0, max_pending=100)
    buf.add_prediction("p", 1.0, "f/x", ("f", "x", True, False))
    buf.add_outcome("o", 2.0, "cat")
    buf.add_prediction("j", 3.0, "f/x", ("f", "x", 1, False))
    buf.add_outcome("j", 4.0, 1)
    state = orjson.loads(orjson.dumps(buf.to_state()))
    older = {
        **state,
        "predictions": [[rid, *entry] for rid, entry in state["predictions"].items()],
        "outcomes": [[rid, *entry] for rid, entry in state["outcomes"].items()],
        "joined_ids": [[rid, ts] for rid, ts in state["joined_ids"].items()],
    }
    restored = JoinBuffer.from_state(older)
    assert orjson.dumps(restored.to_state()) == orjson.dumps(buf.to_state())
    assert restored.add_outcome("p", 5.0, True) == (1.0, "f/x", ("f", "x", True, False))
