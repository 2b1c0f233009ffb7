"""Scoring one prediction, alone or joined with its outcome: pure functions, no state.

Label-free metrics (``error_rate``, ``latency_ms``, ``score``, ``feature``) are scored from the
prediction alone, as soon as it arrives; label metrics (``accuracy``, ``abs_error``,
``squared_error``) when the join completes. The numbers follow the detectors' convention
(``driftswitch.detectors.base``): a Bernoulli observation is 1 for a *bad* event, a continuous one
grows as things get worse.

Missing data is never scored as bad: a prediction without ``latency_ms`` gives no latency
observation, and a failed inference (``error`` set) counts in ``error_rate`` but gives no accuracy
or regression error, since it made no prediction worth comparing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from driftswitch.streams.config.model import Guardrail, Metric
from driftswitch.streams.contract.events import AnyPrediction
from driftswitch.streams.pipeline.join import Label


def same_label(prediction: Label, label: Label) -> bool:
    """Label equality without Python's ``True == 1``: a bool only equals a bool.

    Numbers compare by value (``1 == 1.0``), strings by text.
    """
    if (type(prediction) is bool) is not (type(label) is bool):
        return False
    return prediction == label


def is_number(value: object) -> bool:
    """An int or float that is not a bool (what a regression error needs)."""
    return type(value) is int or type(value) is float


@dataclass(frozen=True, slots=True)
class PairScore:
    """The score of one joined (prediction, outcome) pair.

    ``correct`` is None for regression or a failed inference; ``abs_error`` is None unless both
    sides are numbers. ``predicted_positive``/``actual_positive`` are None without a configured
    positive label.
    """

    correct: bool | None
    abs_error: float | None
    predicted_positive: bool | None
    actual_positive: bool | None

    @property
    def squared_error(self) -> float | None:
        """``abs_error²``."""
        return None if self.abs_error is None else self.abs_error * self.abs_error


def score_pair(
    task: str,
    prediction: Label,
    label: Label,
    *,
    errored: bool = False,
    positive_label: Label | None = None,
) -> PairScore:
    """Score a joined pair for a ``classification`` or ``regression`` flag."""
    if errored:
        return PairScore(None, None, None, None)
    if task == "regression":
        if is_number(prediction) and is_number(label):
            err = abs(float(prediction) - float(label))  # type-checked numbers above
            # Finite inputs can still overflow (1e200 - 0, squared): such a pair is not scored,
            # so neither a detector nor a running sum ever sees an infinity.
            return PairScore(None, err if math.isfinite(err * err) else None, None, None)
        return PairScore(None, None, None, None)
    correct = same_label(prediction, label)
    if positive_label is None:
        return PairScore(correct, None, None, None)
    return PairScore(
        correct, None, same_label(prediction, positive_label), same_label(label, positive_label)
    )


def label_value(metric: Metric, score: PairScore) -> float | None:
    """The detector observation of a label metric for a scored pair (None: nothing to feed)."""
    if metric is Metric.ACCURACY:
        return None if score.correct is None else (0.0 if score.correct else 1.0)
    if metric is Metric.ABS_ERROR:
        return score.abs_error
    if metric is Metric.SQUARED_ERROR:
        return score.squared_error
    raise ValueError(f"metric {metric.value!r} is scored without a label")


#: Reads a label-free observation from a prediction (None when the prediction lacks it).
PredictionReader = Callable[[AnyPrediction], float | None]


def _error_bit(event: AnyPrediction) -> float:
    return 0.0 if event.error is None else 1.0


def _latency(event: AnyPrediction) -> float | None:
    return event.latency_ms


def _score(event: AnyPrediction) -> float | None:
    return event.score


def prediction_reader(guardrail: Guardrail) -> PredictionReader:
    """The function giving a label-free guardrail its observation from each prediction."""
    metric = guardrail.metric
    if metric is Metric.ERROR_RATE:
        return _error_bit
    if metric is Metric.LATENCY_MS:
        return _latency
    if metric is Metric.SCORE:
        return _score
    if metric is Metric.FEATURE:
        name = guardrail.feature or ""

        def feature(event: AnyPrediction) -> float | None:
            return event.features.get(name)

        return feature
    raise ValueError(f"metric {metric.value!r} needs a label")
