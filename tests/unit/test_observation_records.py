"""A full observations record fits the join stage's producer batch (``PRODUCER_BATCH_BYTES``):
a record larger than the batch waits in ``send`` for the request in flight to be answered."""

from __future__ import annotations

import uuid

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.pipeline.merge import Batch, encode_batch
from driftswitch.streams.pipeline.observations import Joiner
from driftswitch.streams.service.joinstage import BATCH_OBSERVATIONS, PRODUCER_BATCH_BYTES
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import ENGINE_GUARDRAILS

#: Kafka's default limit on a record batch (``message.max.bytes``).
KAFKA_MESSAGE_MAX_BYTES = 1_048_588


def test_a_full_observation_record_fits_one_producer_batch() -> None:
    scenario = Scenario(
        flag="a-flag-name-as-long-as-a-real-teams-model-ranker-v2",
        variants=(
            VariantSpec("control", weight=50, accuracy=0.9),
            VariantSpec("candidate", weight=50, accuracy=0.8),
            VariantSpec("shadow", accuracy=0.85, shadow=True),
        ),
        requests=2 * BATCH_OBSERVATIONS,
        regions=("eu-west-1", "us-east-1", "ap-northeast-1"),
    )
    config = parse_config(config_yaml(scenario, ENGINE_GUARDRAILS))
    events = list(simulate(scenario))
    # Positions as the join stage gives them: (topic index, offset) with offsets in the millions.
    positions = [(0, 10_000_000_000 + i) for i in range(len(events))]
    observations, rejections = Joiner(config, track=True).process(events, positions)
    assert not rejections
    assert len(observations) >= BATCH_OBSERVATIONS
    full = Batch(
        3,
        {0: 10_000_000_000 + len(events), 1: 10_000_000_000, 2: 0},
        events[-1].ts,
        False,
        observations[:BATCH_OBSERVATIONS],
        uuid.uuid4().hex,
    )
    assert len(encode_batch(full)) <= PRODUCER_BATCH_BYTES  # 346 KB here
    assert PRODUCER_BATCH_BYTES < KAFKA_MESSAGE_MAX_BYTES
