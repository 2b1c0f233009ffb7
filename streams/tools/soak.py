"""The soak workload: millions of predictions and outcomes with a steady count of pending joins.

``benchmarks/soak.py`` feeds it to ``driftswitch run`` and samples the process's RSS. A
:class:`Soak` has ``flags`` flags, each with the variants of :data:`VARIANTS` (45 / 45 / 10 %
of the traffic) and :data:`GUARDRAILS` (a CUSUM kill on the candidate's accuracy, a sequential
comparison of candidate and control that warns, a latency hold on the challenger):

- predictions ``0 .. predictions - 1``, round-robin over the flags, at ``rate`` per second of
  event time;
- the outcome of prediction ``j`` right after prediction ``j + pending``, stamped with that
  prediction's event time; so from the first outcome on ``pending`` predictions wait at once,
  and the last ``pending`` never get an outcome.

Variants, labels and latencies are pure functions of the index (:func:`_mix`), so a range of the
workload is written without holding anything but the records in flight. The first flag's
candidate drops from 0.90 to 0.75 accuracy halfway, so a kill happens mid-run.

Examples
--------
>>> soak = Soak(predictions=4, pending=2)
>>> list(soak.order(0, 4))
[(True, 0), (True, 1), (True, 2), (False, 0), (True, 3), (False, 1)]
>>> soak.events
6
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

__all__ = ["GUARDRAILS", "VARIANTS", "Soak", "slope"]

#: Start of event time (2026-01-01T00:00:00Z).
T0 = 1_767_225_600.0

#: ``(variant, weight)``, in the order a prediction's draw picks them.
VARIANTS = (("control", 45), ("candidate", 45), ("challenger", 10))

GUARDRAILS = """\
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 1000000}
        min_samples: 200
        action: kill
      - name: candidate-vs-control
        variant: candidate
        compare_to: control
        metric: accuracy
        detector: {kind: sequential, alpha: 0.05}
        action: warn
      - name: challenger-latency
        variant: challenger
        metric: latency_ms
        detector: {kind: cusum_mean, shift: 1.0, warmup: 50, arl0: 1000000}
        action: hold
"""


def _mix(i: int) -> int:
    """A 32-bit hash of ``i`` (Knuth's multiplicative hash, then an xorshift): the workload's
    per-prediction draws, reproducible without a random generator's state."""
    h = (i * 2_654_435_761) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 2_246_822_519) & 0xFFFFFFFF
    return h ^ (h >> 13)


@dataclass(frozen=True)
class Soak:
    """``predictions`` predictions at ``rate`` per second of event time over ``flags`` flags; the
    outcome of prediction ``j`` comes right after prediction ``j + pending``."""

    predictions: int
    pending: int
    flags: int = 20
    rate: float = 1000.0

    @classmethod
    def for_events(cls, events: int, pending: int, flags: int, rate: float) -> Soak:
        """The workload of about ``events`` records (predictions plus outcomes): every prediction
        but the last ``pending`` gets its outcome, so ``2 * predictions - pending`` records."""
        if pending < 1 or events < 2 * pending:
            raise ValueError(f"events ({events}) must be at least twice pending ({pending})")
        return cls((events + pending + 1) // 2, pending, flags, rate)

    @property
    def events(self) -> int:
        """Records in all: every prediction, and an outcome for all but the last ``pending``."""
        return self.predictions + max(0, self.predictions - self.pending)

    def order(self, start: int, stop: int) -> Iterator[tuple[bool, int]]:
        """``(is_prediction, index)`` for predictions ``start .. stop - 1``, each followed by the
        outcome that arrives with it: that of prediction ``index - pending``, if any."""
        for i in range(start, min(stop, self.predictions)):
            yield True, i
            j = i - self.pending
            if j >= 0:
                yield False, j

    def ts(self, i: int) -> float:
        """Prediction ``i``'s event time."""
        return T0 + i / self.rate

    def flag(self, i: int) -> str:
        return f"model-{i % self.flags:02d}"

    @staticmethod
    def variant(i: int) -> str:
        draw = _mix(i) % 100
        for name, weight in VARIANTS:
            if draw < weight:
                return name
            draw -= weight
        raise AssertionError("weights sum to 100")

    @staticmethod
    def request_id(i: int) -> str:
        return f"soak-{i:010d}"

    def accuracy(self, i: int) -> float:
        """0.90, but 0.75 for the first flag's candidate in the second half."""
        drifted = (
            i % self.flags == 0 and i >= self.predictions // 2 and self.variant(i) == "candidate"
        )
        return 0.75 if drifted else 0.90

    def label(self, i: int) -> int:
        """Prediction ``i``'s outcome: its prediction (``i``'s parity) when it is right, which it
        is with probability :meth:`accuracy`."""
        right = (_mix(i) >> 8) % 1000 < round(self.accuracy(i) * 1000)
        return i & 1 if right else 1 - (i & 1)

    def records(self, start: int, stop: int) -> Iterator[tuple[bool, bytes, bytes]]:
        """``(is_prediction, key, value)`` in :meth:`order`."""
        dumps = orjson.dumps
        for is_prediction, i in self.order(start, stop):
            rid = self.request_id(i)
            if is_prediction:
                value = {
                    "kind": "prediction",
                    "request_id": rid,
                    "flag": self.flag(i),
                    "variant": self.variant(i),
                    "ts": self.ts(i),
                    "prediction": i & 1,
                    "latency_ms": 15.0 + (_mix(i) >> 16) % 100 / 10,
                }
            else:  # arrives at the event time of the prediction it comes after
                value = {
                    "kind": "outcome",
                    "request_id": rid,
                    "ts": self.ts(i + self.pending),
                    "label": self.label(i),
                }
            yield is_prediction, rid.encode(), dumps(value)

    def config(self, ttl: float) -> str:
        """The worker's YAML config: the flags with their guardrails, and a join ``ttl``
        (seconds of event time) that outlives the label delay."""
        lines = ["flags:"]
        for f in range(self.flags):
            lines += [f"  model-{f:02d}:", "    default: control", "    variants:"]
            lines += [f"      {name}: {{weight: {w}, value: {name}}}" for name, w in VARIANTS]
            lines.append(GUARDRAILS.rstrip("\n"))
        lines += ["join:", f"  ttl: {ttl:g}"]
        return "\n".join(lines) + "\n"

    def warmup(self, ttl: float) -> int:
        """Records after which every bounded join structure is at its steady size: the pending
        predictions (from the first outcome on) and the joined ids, which are kept for ``ttl``
        seconds of event time after their outcome."""
        predictions = min(self.predictions, self.pending + round(ttl * self.rate))
        return predictions + max(0, predictions - self.pending)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` over ``xs`` (at least two distinct ``xs``)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError("slope needs two or more (x, y) pairs")
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("slope needs two distinct x values")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
