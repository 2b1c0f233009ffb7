"""Scoring: classification correctness and confusion, regression errors, label-free readers."""

from __future__ import annotations

import pytest

from driftswitch.streams.config.model import Guardrail, Metric
from driftswitch.streams.contract.events import PredictionEvent
from driftswitch.streams.pipeline.join import Label
from driftswitch.streams.pipeline.scoring import (
    PairScore,
    label_value,
    prediction_reader,
    same_label,
    score_pair,
)


@pytest.mark.parametrize(
    ("prediction", "label", "equal"),
    [
        ("cat", "cat", True),
        ("cat", "dog", False),
        (1, 1.0, True),
        (True, 1, False),
        (1, True, False),
        (False, False, True),
        ("1", 1, False),
    ],
    ids=["same-str", "other-str", "int-float", "bool-int", "int-bool", "bools", "str-int"],
)
def test_same_label(prediction: Label, label: Label, equal: bool) -> None:
    assert same_label(prediction, label) is equal


def test_classification_with_a_positive_label_gives_the_confusion_cell() -> None:
    assert score_pair("classification", "spam", "spam", positive_label="spam") == PairScore(
        True, None, True, True
    )
    assert score_pair("classification", "spam", "ham", positive_label="spam") == PairScore(
        False, None, True, False
    )
    assert score_pair("classification", "ham", "spam", positive_label="spam") == PairScore(
        False, None, False, True
    )
    assert score_pair("classification", "ham", "ham") == PairScore(True, None, None, None)


def test_regression_errors() -> None:
    score = score_pair("regression", 3.0, 5)
    assert score.abs_error == 2.0
    assert score.squared_error == 4.0
    assert label_value(Metric.ABS_ERROR, score) == 2.0
    assert label_value(Metric.SQUARED_ERROR, score) == 4.0
    # A non-numeric side is missing data, not an error of any size.
    assert score_pair("regression", "n/a", 5).abs_error is None
    assert score_pair("regression", True, 1).abs_error is None


def test_overflowing_regression_errors_are_not_scored() -> None:
    """Finite inputs whose error overflows must not reach detectors or sums as infinity."""
    huge = score_pair("regression", 1e200, 0)
    assert huge.abs_error is None
    assert huge.squared_error is None
    assert label_value(Metric.SQUARED_ERROR, huge) is None
    assert score_pair("regression", 1e150, 0).squared_error == pytest.approx(1e300)


def test_a_failed_inference_is_not_scored_against_its_label() -> None:
    score = score_pair("classification", "cat", "cat", errored=True)
    assert score == PairScore(None, None, None, None)
    assert label_value(Metric.ACCURACY, score) is None


def test_accuracy_observation_is_an_error_bit() -> None:
    assert label_value(Metric.ACCURACY, score_pair("classification", "a", "a")) == 0.0
    assert label_value(Metric.ACCURACY, score_pair("classification", "a", "b")) == 1.0
    with pytest.raises(ValueError, match="without a label"):
        label_value(Metric.LATENCY_MS, score_pair("classification", "a", "b"))


def _guardrail(metric: str, **extra: object) -> Guardrail:
    return Guardrail.model_validate(
        {
            "name": "g",
            "variant": "v",
            "metric": metric,
            "detector": {"kind": "psi"},
            "action": "warn",
            **extra,
        }
    )


def test_label_free_readers_take_the_field_or_nothing() -> None:
    full = PredictionEvent(
        request_id="r",
        flag="f",
        variant="v",
        ts=1.0,
        prediction="a",
        score=0.7,
        latency_ms=12.5,
        error="timeout",
        features={"age": 31.0},
    )
    bare = PredictionEvent(request_id="r", flag="f", variant="v", ts=1.0, prediction="a")
    assert prediction_reader(_guardrail("error_rate"))(full) == 1.0
    assert prediction_reader(_guardrail("error_rate"))(bare) == 0.0
    assert prediction_reader(_guardrail("latency_ms"))(full) == 12.5
    assert prediction_reader(_guardrail("latency_ms"))(bare) is None
    assert prediction_reader(_guardrail("score"))(full) == 0.7
    assert prediction_reader(_guardrail("score"))(bare) is None
    assert prediction_reader(_guardrail("feature", feature="age"))(full) == 31.0
    assert prediction_reader(_guardrail("feature", feature="age"))(bare) is None
    with pytest.raises(ValueError, match="needs a label"):
        prediction_reader(_guardrail("accuracy"))
