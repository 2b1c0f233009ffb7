"""The stage groups' index assignment, without a broker (the group itself: test_groups.py in
tests/integration)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.kafka.groups import (
    Claim,
    GroupError,
    StageMember,
    _Claims,
    assign_indexes,
    common_partitions,
    decode_claim,
    encode_claim,
    partition_for,
    stage_assignor,
)
from driftswitch.streams.kafka.settings import as_settings


def check_partition(partitions: int, out: Mapping[str, frozenset[int]]) -> None:
    """Every index exactly once; counts differ by at most one."""
    seen = [i for owned in out.values() for i in owned]
    assert sorted(seen) == list(range(partitions))
    counts = [len(owned) for owned in out.values()]
    assert max(counts) - min(counts) <= 1


def claims(generation: int, **owned: set[int]) -> dict[str, Claim]:
    return {m: Claim(frozenset(o), generation) for m, o in owned.items()}


def test_one_member_owns_every_index() -> None:
    assert assign_indexes(4, {"a": Claim()}) == {"a": frozenset({0, 1, 2, 3})}


def test_no_members_and_no_partitions() -> None:
    assert assign_indexes(4, {}) == {}
    assert assign_indexes(0, {"a": Claim(), "b": Claim()}) == {
        "a": frozenset(),
        "b": frozenset(),
    }


def test_balanced_for_every_size() -> None:
    rng = random.Random(12)
    for partitions in range(13):
        for n in range(1, 7):
            members = {
                f"m{k}": Claim(
                    frozenset(i for i in range(partitions + 2) if rng.random() < 0.4),
                    rng.randrange(-1, 4),
                )
                for k in range(n)
            }
            check_partition(partitions, assign_indexes(partitions, members))


def test_a_joining_member_takes_half_and_the_first_keeps_the_rest() -> None:
    out = assign_indexes(4, {**claims(1, a={0, 1, 2, 3}), "b": Claim()})
    assert out == {"a": frozenset({0, 1}), "b": frozenset({2, 3})}


def test_a_third_member_takes_one_index_from_one_of_the_others() -> None:
    out = assign_indexes(4, {**claims(2, a={0, 1}, b={2, 3}), "c": Claim()})
    check_partition(4, out)
    assert sorted(len(o) for o in out.values()) == [1, 1, 2]
    assert out["a"] <= {0, 1}
    assert out["b"] <= {2, 3}
    assert len(out["c"]) == 1


def test_a_leaving_members_indexes_go_to_the_others_who_keep_theirs() -> None:
    out = assign_indexes(4, claims(3, a={0, 1}, c={3}))  # b, which had {2}, left
    check_partition(4, out)
    assert out["a"] == {0, 1}
    assert out["c"] == {2, 3}
    out = assign_indexes(4, claims(3, b={2}))
    assert out == {"b": frozenset({0, 1, 2, 3})}


def test_nothing_moves_when_nothing_changes() -> None:
    before = claims(5, a={0, 3}, b={1}, c={2})
    out = assign_indexes(4, before)
    assert out == {m: c.owned for m, c in before.items()}


def test_as_few_indexes_move_as_balance_allows() -> None:
    """Random balanced groups that gain or lose members: every member keeps as many of its
    indexes as its new share allows, and the larger shares go to those that owned most."""
    rng = random.Random(7)
    for _ in range(300):
        partitions = rng.randrange(1, 17)
        names = [f"m{k:02d}" for k in range(rng.randrange(1, 6))]
        first = assign_indexes(partitions, {m: Claim() for m in names})
        gen = rng.randrange(0, 50)
        now = {m: Claim(first[m], gen) for m in names}
        if rng.random() < 0.5 or len(names) == 1:
            now.update({f"new{k}": Claim() for k in range(rng.randrange(1, 4))})
        else:
            for m in rng.sample(names, rng.randrange(1, len(names))):
                del now[m]
        out = assign_indexes(partitions, now)
        check_partition(partitions, out)
        base, extra = divmod(partitions, len(now))
        owned = sorted((len(c.owned) for c in now.values()), reverse=True)
        best = sum(min(c, base + (1 if r < extra else 0)) for r, c in enumerate(owned))
        assert sum(len(out[m] & c.owned) for m, c in now.items()) == best


def test_the_later_generation_wins_a_disputed_index() -> None:
    # "old" was expelled while frozen and still claims what it had two generations ago.
    out = assign_indexes(
        4,
        {
            "old": Claim(frozenset({0, 1}), 4),
            "new": Claim(frozenset({0, 1, 2, 3}), 6),
        },
    )
    assert out == {"new": frozenset({0, 1}), "old": frozenset({2, 3})}
    # Equal generations (which a correct group never produces): the smaller id wins.
    out = assign_indexes(2, {"b": Claim(frozenset({0}), 1), "a": Claim(frozenset({0}), 1)})
    assert out == {"a": frozenset({0}), "b": frozenset({1})}


def test_claims_beyond_the_partition_count_are_ignored() -> None:
    out = assign_indexes(2, claims(1, a={5, 6, 7}, b={1}))
    assert out == {"a": frozenset({0}), "b": frozenset({1})}


def test_deterministic_whatever_the_order_of_members() -> None:
    rng = random.Random(3)
    members = {
        f"m{k}": Claim(frozenset(rng.sample(range(9), rng.randrange(0, 5))), rng.randrange(4))
        for k in range(5)
    }
    expected = assign_indexes(9, members)
    for _ in range(20):
        order = list(members)
        rng.shuffle(order)
        assert assign_indexes(9, {m: members[m] for m in order}) == expected


def test_claims_round_trip_and_bad_ones_claim_nothing(caplog: pytest.LogCaptureFixture) -> None:
    claim = Claim(frozenset({3, 0, 2}), 17)
    assert decode_claim(encode_claim(claim)) == claim
    assert decode_claim(b"") == Claim()
    assert decode_claim(None) == Claim()
    with caplog.at_level(logging.WARNING):
        assert decode_claim(b"holder") == Claim()
        assert decode_claim(b'{"v": 2, "generation": 1, "owned": [1]}') == Claim()
        assert decode_claim(b'{"v": 1, "generation": 1, "owned": [-1]}') == Claim()
        assert decode_claim(b'{"v": 1, "owned": [1]}') == Claim()
    assert len(caplog.records) == 4


def test_topics_with_different_partition_counts_are_refused() -> None:
    assert common_partitions({"a": 4, "b": 4, "c": 4}) == 4
    with pytest.raises(GroupError, match=r"same number of partitions.*a: 4, b: 3"):
        common_partitions({"a": 4, "b": 3})
    assert issubclass(GroupError, DriftswitchError)


def test_a_member_needs_distinct_topics() -> None:
    kafka = as_settings("localhost:9")
    with pytest.raises(GroupError, match="at least one topic"):
        StageMember(kafka, "g", [])
    with pytest.raises(GroupError, match="listed twice"):
        StageMember(kafka, "g", ["a", "a"])


class Cluster:
    """The one method of aiokafka's ClusterMetadata an assignor calls."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.counts.get(topic)
        return set(range(n)) if n is not None else None


def test_the_assignor_gives_partition_p_of_every_topic_together() -> None:
    mine = _Claims()
    mine.claim = Claim(frozenset({0, 1, 2, 3}), 2)
    assignor = stage_assignor(mine)
    topics = ["preds", "outs", "repart"]
    members = {
        "m-a": assignor.metadata(topics),  # type: ignore[attr-defined]
        "m-b": stage_assignor().metadata(topics),  # type: ignore[attr-defined]
    }
    # The metadata crosses the wire encoded; decode it as the leader would.
    members = {
        m: ConsumerProtocolMemberMetadata.decode(meta.encode()) for m, meta in members.items()
    }
    out = assignor.assign(Cluster(dict.fromkeys(topics, 4)), members)  # type: ignore[attr-defined]
    a = {(t, p) for t, parts in out["m-a"].assignment for p in parts}
    b = {(t, p) for t, parts in out["m-b"].assignment for p in parts}
    assert a == {(t, p) for t in topics for p in (0, 1)}
    assert b == {(t, p) for t in topics for p in (2, 3)}


def test_the_assignor_hands_out_only_common_indexes_when_counts_differ(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assignor = stage_assignor()
    meta = ConsumerProtocolMemberMetadata.decode(
        assignor.metadata(["x", "y"]).encode()  # type: ignore[attr-defined]
    )
    with caplog.at_level(logging.ERROR):
        out = assignor.assign(Cluster({"x": 4, "y": 2}), {"m": meta})  # type: ignore[attr-defined]
    assert sorted(out["m"].assignment) == [("x", [0, 1]), ("y", [0, 1])]
    assert "same number of partitions" in caplog.text


def test_partition_for_is_stable_and_in_range() -> None:
    keys = [f"req-{i}".encode() for i in range(200)]
    for n in (1, 3, 4, 12):
        placed = [partition_for(k, n) for k in keys]
        assert all(0 <= p < n for p in placed)
        assert placed == [partition_for(k, n) for k in keys]
    assert len({partition_for(k, 4) for k in keys}) == 4
    with pytest.raises(ValueError, match="at least 1"):
        partition_for(b"k", 0)


def test_a_failed_rebalance_callback_still_reaches_getmany_after_a_membership_check() -> None:
    # The join stage checks its membership beside its loop (JoinStage._confirm); a failure the
    # check raised first must still stop the loop, which meets it at its next getmany.
    async def scenario() -> None:
        async def restore(indexes: set[int]) -> None:
            raise RuntimeError("restoring partition 0 failed")

        member = StageMember(as_settings("localhost:9"), "g", ["a"], on_assigned=restore)
        await member._assign({0})  # as aiokafka calls it after a rebalance
        for _ in range(2):
            with pytest.raises(GroupError, match="restoring partition 0 failed"):
                await member.check()
        with pytest.raises(GroupError, match="restoring partition 0 failed"):
            await member.getmany()  # raised before it fetches: this member has no consumer

    asyncio.run(scenario())
