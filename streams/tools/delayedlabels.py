"""A delayed-labels workload for the join stage at scale: many predictions waiting at once.

:class:`DelayedLabels` describes predictions at a constant event-time rate whose outcomes arrive
``delay`` seconds of event time after them (30 minutes by default), at the same rate, so that
``pending`` predictions wait at once once the first outcome arrives, and stay waiting:

- predictions ``0 .. pending + labelled - 1``, one every ``delay / pending`` seconds of event
  time (prediction ``i`` at ``t0 + i * delay / pending``);
- the outcome of prediction ``j < labelled`` at ``ts(j) + delay``, the event time of prediction
  ``j + pending``: written right after it, in event-time order.

So the first ``pending`` predictions fill the join, then each new prediction comes with one
outcome and the count waiting stays at ``pending``; at the end the last ``pending`` predictions
are still waiting. Everything is a pure function of the index, so the exact counts per variant
(:meth:`DelayedLabels.expected`) need no reference run.

:func:`produce` writes a range of it with confluent-kafka (librdkafka's default partitioner,
CRC-32 of the key: each record in its join partition), from several processes at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from driftswitch.streams.contract.topics import Topics

__all__ = ["CONFIG", "DelayedLabels", "produce"]

VARIANTS = ("control", "candidate")

#: The config the workload is made for: one flag with :data:`VARIANTS`, a join that keeps
#: entries for 2 h (longer than the 30-minute delay) and holds at most 1,000 in memory (the rest
#: wait on disk with ``state_dir``), and partitions idle after 5 s without input.
CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 50, value: control}
      candidate: {weight: 50, value: candidate}
join:
  ttl: 2h
  max_pending: 1000
  idle_after: 5
"""


@dataclass(frozen=True)
class DelayedLabels:
    """``pending`` predictions per ``delay`` seconds of event time; the first ``labelled`` get
    their outcome ``delay`` seconds after them (see the module doc)."""

    pending: int
    labelled: int
    delay: float = 1800.0
    t0: float = 1_700_000_000.0
    flag: str = "ranker"

    @property
    def predictions(self) -> int:
        return self.pending + self.labelled

    def ts(self, i: int) -> float:
        return self.t0 + i * self.delay / self.pending

    @staticmethod
    def request_id(i: int) -> str:
        return f"dl-{i:09d}"

    @staticmethod
    def variant(i: int) -> str:
        return VARIANTS[i % 2]

    @staticmethod
    def prediction(i: int) -> int:
        return (i >> 1) & 1

    @staticmethod
    def label(i: int) -> int:
        """The outcome of prediction ``i``: right for 9 in 10 of control's predictions and 8 in
        10 of candidate's."""
        right = i % 20 < (18 if i % 2 == 0 else 16)
        p = DelayedLabels.prediction(i)
        return p if right else 1 - p

    def expected(self) -> dict[str, dict[str, int]]:
        """Per variant: predictions accepted, predictions joined with their outcome (scored),
        and joined ones whose prediction equals the label (correct)."""
        n = self.predictions
        counts = {v: {"predictions": 0, "scored": 0, "correct": 0} for v in VARIANTS}
        counts["control"]["predictions"] = (n + 1) // 2
        counts["candidate"]["predictions"] = n // 2
        for j in range(self.labelled):
            c = counts[self.variant(j)]
            c["scored"] += 1
            c["correct"] += self.label(j) == self.prediction(j)
        return counts

    def records(self, start: int, stop: int, step: int = 1) -> Iterator[tuple[bool, bytes, bytes]]:
        """``(is_prediction, key, value)`` for predictions ``start, start + step, ... < stop``,
        each followed by the outcome that arrives with it (if any)."""
        flag = self.flag
        for i in range(start, min(stop, self.predictions), step):
            rid = self.request_id(i)
            key = rid.encode()
            ts = self.ts(i)
            yield (
                True,
                key,
                orjson.dumps(
                    {
                        "kind": "prediction",
                        "request_id": rid,
                        "flag": flag,
                        "variant": self.variant(i),
                        "ts": ts,
                        "prediction": self.prediction(i),
                    }
                ),
            )
            j = i - self.pending
            if 0 <= j < self.labelled:
                rid = self.request_id(j)
                value = {"kind": "outcome", "request_id": rid, "ts": ts, "label": self.label(j)}
                yield False, rid.encode(), orjson.dumps(value)


def _produce_share(
    bootstrap: str, predictions: str, outcomes: str, w: DelayedLabels, start: int, stop: int,
    step: int,
) -> None:  # fmt: skip
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "batch.size": 1 << 20,
            "queue.buffering.max.messages": 200_000,
            "queue.buffering.max.kbytes": 64 << 10,  # 64 MiB: a slow broker holds the loop back
        }
    )
    send = producer.produce
    for is_prediction, key, value in w.records(start, stop, step):
        topic = predictions if is_prediction else outcomes
        while True:
            try:
                send(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(300) != 0:
        raise RuntimeError("records still unacknowledged after 300 s")


def produce(
    bootstrap: str,
    topics: Topics,
    workload: DelayedLabels,
    start: int,
    stop: int,
    processes: int = 2,
) -> None:
    """Write predictions ``start .. stop - 1`` of ``workload`` and their outcomes (keyed by
    request id, confluent-kafka's default partitioner), from ``processes`` child processes (each
    every ``processes``-th prediction, in event-time order); raise if one of them fails."""
    w = workload
    common = [bootstrap, topics.predictions.name, topics.outcomes.name, str(w.pending)]
    common += [str(w.labelled), repr(w.delay), repr(w.t0), w.flag, str(stop), str(processes)]
    children = [
        subprocess.Popen([sys.executable, "-m", __name__, *common, str(start + k)])
        for k in range(processes)
    ]
    failed = [code for code in (c.wait() for c in children) if code != 0]
    if failed:
        raise RuntimeError(f"producer processes failed with exit codes {failed}")


if __name__ == "__main__":
    bootstrap, predictions, outcomes, pending, labelled, delay, t0, flag = sys.argv[1:9]
    stop, step, start = (int(a) for a in sys.argv[9:12])
    workload = DelayedLabels(int(pending), int(labelled), float(delay), float(t0), flag)
    _produce_share(bootstrap, predictions, outcomes, workload, start, stop, step)
