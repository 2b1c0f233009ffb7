"""Topic settings: default names, prefix and per-topic overrides from the environment, checks."""

from __future__ import annotations

import pytest

from driftswitch.streams.contract.topics import ROLES, TopicError, Topics, TopicSpec


def test_defaults_are_the_documented_names() -> None:
    topics = Topics()
    assert [s.name for s in topics.specs()] == [
        "driftswitch.predictions.v1",
        "driftswitch.outcomes.v1",
        "driftswitch.flags.v1",
        "driftswitch.control.v1",
        "driftswitch.deadletter.v1",
        "driftswitch.observations.v1",
        "driftswitch.repartition.v1",
    ]
    assert [s.partitions for s in topics.specs()] == [4, 4, 1, 1, 1, 4, 4]
    assert topics.flags.config == {"cleanup.policy": "compact"}
    assert topics.flags.compacted
    assert not topics.predictions.compacted
    assert Topics.from_env({}) == topics == Topics.with_prefix()


def test_environment_sets_prefix_partitions_replication_and_single_names() -> None:
    topics = Topics.from_env(
        {
            "DRIFTSWITCH_TOPIC_PREFIX": "acme.ds",
            "DRIFTSWITCH_TOPIC_PARTITIONS": "12",
            "DRIFTSWITCH_TOPIC_REPLICATION_FACTOR": "3",
            "DRIFTSWITCH_TOPIC_FLAGS": "shared.flag-state",
            "DRIFTSWITCH_TOPIC_OBSERVATIONS_PARTITIONS": "6",
            "DRIFTSWITCH_TOPIC_REPARTITION": "acme.rerouted",
            "UNRELATED": "x",
        }
    )
    assert topics.predictions == TopicSpec(
        name="acme.ds.predictions.v1", partitions=12, replication_factor=3
    )
    assert topics.outcomes.partitions == 12
    assert topics.repartition == TopicSpec(
        name="acme.rerouted", partitions=12, replication_factor=3
    )
    assert topics.observations == TopicSpec(
        name="acme.ds.observations.v1", partitions=6, replication_factor=3
    )
    assert topics.flags.name == "shared.flag-state"
    assert topics.flags.compacted
    assert topics.control.name == "acme.ds.control.v1"
    assert {s.replication_factor for s in topics.specs()} == {3}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DRIFTSWITCH_TOPIC_PARTITIONS": "many"}, "DRIFTSWITCH_TOPIC_PARTITIONS='many'"),
        ({"DRIFTSWITCH_TOPIC_PARTITIONS": "0"}, "expected a positive integer"),
        (
            {"DRIFTSWITCH_TOPIC_OBSERVATIONS_PARTITIONS": "-2"},
            "DRIFTSWITCH_TOPIC_OBSERVATIONS_PARTITIONS='-2': expected a positive integer",
        ),
        ({"DRIFTSWITCH_TOPIC_PREFIX": "bad prefix"}, "invalid topic settings"),
        ({"DRIFTSWITCH_TOPIC_OUTCOMES": "driftswitch.predictions.v1"}, "must be distinct"),
    ],
    ids=[
        "partitions-not-a-number",
        "partitions-zero",
        "observation-partitions-negative",
        "space-in-name",
        "duplicate-name",
    ],
)
def test_bad_environment_is_a_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TopicError, match=message):
        Topics.from_env(environ)


def test_unknown_role_lists_the_known_ones() -> None:
    with pytest.raises(TopicError, match="unknown topic role 'audit'; known roles: predictions"):
        Topics.with_prefix(names={"audit": "x"})


def test_join_topics_must_be_co_partitioned() -> None:
    with pytest.raises(ValueError, match="same number of partitions"):
        Topics(outcomes=TopicSpec(name="o", partitions=2))


def test_repartition_topic_must_be_co_partitioned_with_the_join_inputs() -> None:
    with pytest.raises(ValueError, match="repartition topic needs as many partitions"):
        Topics(repartition=TopicSpec(name="r", partitions=3))
    # The observations topic is keyed by flag, not request_id: any count.
    assert Topics(observations=TopicSpec(name="o", partitions=7)).observations.partitions == 7
    both = Topics.with_prefix("x", partitions=6, observation_partitions=2)
    assert (both.repartition.partitions, both.observations.partitions) == (6, 2)


def test_flags_topic_must_be_compacted() -> None:
    with pytest.raises(ValueError, match=r"cleanup\.policy=compact"):
        Topics(flags=TopicSpec(name="f", partitions=1))


def test_roles_match_fields() -> None:
    assert tuple(Topics.model_fields) == ROLES
