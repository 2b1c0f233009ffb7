"""The simulator is seeded, ordered in event time, and honours its scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.events import OutcomeEvent, PredictionEvent, decode_line
from driftswitch.streams.tools.simulate import (
    Scenario,
    VariantSpec,
    config_yaml,
    simulate,
    write_jsonl,
)


def test_same_seed_same_events_other_seed_other_events() -> None:
    scenario = Scenario(requests=300, seed=4)
    assert list(simulate(scenario)) == list(simulate(scenario))
    assert list(simulate(scenario)) != list(simulate(Scenario(requests=300, seed=5)))


def test_events_are_in_event_time_order_and_every_outcome_has_a_prediction() -> None:
    events = list(simulate(Scenario(requests=500, label_fraction=0.5, seed=1)))
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    predicted = {e.request_id for e in events if isinstance(e, PredictionEvent)}
    outcomes = [e.request_id for e in events if isinstance(e, OutcomeEvent)]
    assert len(predicted) == 500
    assert set(outcomes) <= predicted
    assert len(outcomes) == len(set(outcomes))
    assert 200 < len(outcomes) < 300


def test_accuracy_changes_at_the_change_point() -> None:
    scenario = Scenario(
        variants=(VariantSpec("a", weight=100, accuracy=0.9, accuracy_after=0.5),),
        requests=4000,
        change_at=2000,
        label_delay=0.0,
        seed=3,
    )
    predictions: dict[str, PredictionEvent] = {}
    correct = [0, 0]
    for e in simulate(scenario):
        if isinstance(e, PredictionEvent):
            predictions[e.request_id] = e
        else:
            index = int(e.request_id.removeprefix("req-"))
            correct[index >= 2000] += predictions[e.request_id].prediction == e.label
    assert correct == [1811, 1007]  # 0.906 and 0.504 of 2000


def test_shadows_predict_on_every_request_with_their_own_ids() -> None:
    scenario = Scenario(
        variants=(VariantSpec("a", weight=100), VariantSpec("s", shadow=True)),
        requests=50,
        seed=0,
    )
    shadow = [e for e in simulate(scenario) if isinstance(e, PredictionEvent) and not e.served]
    assert len(shadow) == 50
    assert all(e.variant == "s" and e.request_id.endswith("~s") for e in shadow)


def test_written_file_decodes_and_config_validates(tmp_path: Path) -> None:
    scenario = Scenario(requests=20, seed=9)
    path = tmp_path / "e.jsonl"
    assert write_jsonl(simulate(scenario), path) == 40
    assert [decode_line(line) for line in path.read_bytes().splitlines()] == list(
        simulate(scenario)
    )
    config = parse_config(config_yaml(scenario))
    assert {n: v.weight for n, v in config.flags["ranker"].variants.items()} == {
        "control": 90,
        "candidate": 10,
    }


def test_a_scenario_without_served_traffic_is_refused() -> None:
    with pytest.raises(ValueError, match="served variant"):
        Scenario(variants=(VariantSpec("s", shadow=True),))
