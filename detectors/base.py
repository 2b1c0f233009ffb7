"""The contract every driftswitch detector satisfies.

The shape follows river's ``DriftDetector``: ``update(x)`` feeds one observation and the
read-only ``drift_detected`` is edge-triggered (true only right after the update that raised the
alarm). On top of that a decision needs the current ``statistic``, the ``threshold`` it is
compared against, the number of observations seen (``n``) and a plain-data ``explain()`` for the
flag change's evidence.

Every detector serialises to plain JSON-compatible data (``to_state``) and restores with
``from_state`` into an object that continues exactly as the original would have.

Observations always mean the same thing: for Bernoulli metrics ``x = 1`` is an *error* (a
wrong prediction) and ``x = 0`` a correct one; for continuous metrics ``x`` is the value that gets
worse as it grows (latency, absolute error).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

#: A JSON-compatible value: what ``to_state`` and ``explain`` return.
JSON = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]


@runtime_checkable
class Detector(Protocol):
    """A one-stream online change detector (river's shape plus evidence and state)."""

    kind: ClassVar[str]

    def update(self, x: float) -> None: ...

    @property
    def drift_detected(self) -> bool: ...

    @property
    def statistic(self) -> float: ...

    @property
    def threshold(self) -> float: ...

    @property
    def n(self) -> int: ...

    def explain(self) -> dict[str, JSON]: ...

    def to_state(self) -> dict[str, JSON]: ...


def check_kind(kind: str, state: Mapping[str, Any]) -> None:
    """Refuse, in ``from_state``, a state written by another kind of detector than ``kind``."""
    if state.get("kind") != kind:
        raise ValueError(f"state of kind {state.get('kind')!r} given to {kind!r}")


class BaseDetector(ABC):
    """Defaults shared by all detectors: batch feeding and the registry hook.

    Subclasses implement ``update``, the properties and the state methods. A detector with
    sufficient statistics (counts, or sums and sums of squares) sets ``supports_counts = True`` and
    overrides ``update_counts``: the service then feeds pre-aggregated batches instead of paying
    Python's per-event overhead.
    """

    kind: ClassVar[str]
    supports_counts: ClassVar[bool] = False

    @abstractmethod
    def update(self, x: float) -> None:
        """Feed one observation."""

    @property
    @abstractmethod
    def drift_detected(self) -> bool:
        """True right after the update that raised an alarm, false otherwise."""

    @property
    @abstractmethod
    def statistic(self) -> float:
        """The current value of the detection statistic."""

    @property
    @abstractmethod
    def threshold(self) -> float:
        """The value of ``statistic`` at or beyond which the detector alarms."""

    @property
    @abstractmethod
    def n(self) -> int:
        """Observations fed so far."""

    @abstractmethod
    def to_state(self) -> dict[str, JSON]:
        """Plain JSON-compatible state; ``from_state`` restores an identical detector."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild a detector from ``to_state`` output."""

    def explain(self) -> dict[str, JSON]:
        """Plain-data evidence for a decision; subclasses add their own fields."""
        return {
            "detector": self.kind,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "n": self.n,
        }

    def update_many(self, xs: Iterable[float]) -> bool:
        """Feed observations in order; return whether any of them raised an alarm.

        ``drift_detected`` afterwards reflects only the last update, so callers that feed batches
        use the return value.
        """
        alarmed = False
        for x in xs:
            self.update(x)
            alarmed = alarmed or self.drift_detected
        return alarmed

    def update_until_alarm(self, xs: Sequence[float]) -> int | None:
        """Feed observations in order up to and including the first that raises an alarm.

        Returns that observation's index (the rest are not fed: the caller acts on the alarm,
        then feeds them), or None when all were fed without one. The state afterwards is the
        one ``update`` would leave after the same observations. Detectors whose batch update
        can stop at an alarm override this (Bernoulli CUSUM and GLR, psi/js/ks, latency_quantile);
        the default feeds one at a time.
        """
        for i, x in enumerate(xs):
            self.update(x)
            if self.drift_detected:
                return i
        return None

    def _update_many_through_alarms(self, values: Sequence[float]) -> bool:
        """``update_many`` for a detector with a batched ``update_until_alarm``: feed ``values``
        in calls of it, each resuming after the previous alarm; whether any alarmed."""
        alarmed = False
        start = 0
        while start < len(values):
            hit = self.update_until_alarm(values[start:])
            if hit is None:
                break
            alarmed = True
            start += hit + 1
        return alarmed

    def update_counts(self, n: int, total: float, total_sq: float | None = None) -> bool:
        """Feed a pre-aggregated batch: ``n`` observations summing to ``total``.

        For Bernoulli metrics ``total`` is the number of errors. Only detectors with
        ``supports_counts = True`` accept this; return whether the batch raised an alarm.
        """
        raise TypeError(f"detector {self.kind!r} needs individual observations, not counts")
