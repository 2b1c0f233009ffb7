"""A seeded simulation of a model service behind a flag: predictions and delayed outcomes.

Used by tests, ``backtest`` examples, ``driftswitch demo`` and the benchmarks. Deterministic: the
same :class:`Scenario` always yields the same events, in event-time order.

Each request goes to one served variant by weight; each shadow variant also predicts on it
(``served: false``, request id ``<id>~<variant>``, with its own outcome record: the contract joins
one prediction to one outcome). A variant is right with probability ``accuracy``, or
``accuracy_after`` from request ``change_at`` on (the change point). Outcomes follow after an
exponential label delay; ``label_fraction`` of requests get one at all.

Examples
--------
>>> scenario = Scenario(requests=3, seed=1)
>>> [(e.kind, e.request_id) for e in simulate(scenario)][:3]
[('prediction', 'req-000000000'), ('prediction', 'req-000000001'), ('prediction', 'req-000000002')]
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from driftswitch.streams.contract.events import OutcomeEvent, PredictionEvent, encode

if TYPE_CHECKING:
    from driftswitch.streams.config.model import Config

#: 2026-01-01T00:00:00Z, the default start of simulated event time.
START_TS = 1767225600.0


@dataclass(frozen=True)
class VariantSpec:
    """One simulated variant.

    ``weight`` is its share of served traffic (ignored for shadows); ``accuracy_after`` applies
    from ``Scenario.change_at`` on (None: no change); ``error_rate`` is the share of failed
    inferences; latency is log-normal around ``latency_ms``.
    """

    name: str
    weight: int = 50
    accuracy: float = 0.9
    accuracy_after: float | None = None
    latency_ms: float = 20.0
    error_rate: float = 0.0
    shadow: bool = False


def _default_variants() -> tuple[VariantSpec, ...]:
    return (
        VariantSpec("control", weight=90, accuracy=0.90),
        VariantSpec("candidate", weight=10, accuracy=0.90, accuracy_after=0.75),
    )


@dataclass(frozen=True)
class Scenario:
    """What to simulate; every field has a usable default (a candidate that degrades)."""

    flag: str = "ranker"
    variants: tuple[VariantSpec, ...] = field(default_factory=_default_variants)
    #: Number of requests (served predictions).
    requests: int = 20_000
    #: Requests per second of event time.
    rate: float = 200.0
    #: Request index from which ``accuracy_after`` applies (None: never).
    change_at: int | None = 10_000
    #: Mean label delay in seconds (exponential); 0 = the outcome at the prediction's time.
    label_delay: float = 2.0
    #: Share of requests whose outcome is ever observed.
    label_fraction: float = 1.0
    #: Class labels; a wrong prediction is another class, drawn uniformly.
    classes: tuple[str, ...] = ("relevant", "irrelevant")
    start_ts: float = START_TS
    seed: int = 0
    #: Values of the ``region`` attribute, drawn uniformly per request (empty: no attributes).
    regions: tuple[str, ...] = ()
    #: Regions where ``accuracy_after`` applies (empty: everywhere), e.g. a candidate that is
    #: bad only in ``jp``.
    change_in: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        served = [v for v in self.variants if not v.shadow]
        if not served or sum(v.weight for v in served) <= 0:
            raise ValueError("a scenario needs at least one served variant with weight > 0")
        if len(self.classes) < 2:
            raise ValueError("classification needs at least two classes")
        if self.rate <= 0 or self.requests < 0 or self.label_delay < 0:
            raise ValueError("rate must be > 0; requests and label_delay must be >= 0")
        if not 0.0 <= self.label_fraction <= 1.0:
            raise ValueError("label_fraction must lie in [0, 1]")
        if set(self.change_in) - set(self.regions):
            raise ValueError("change_in names regions that are not in regions")


def simulate(
    scenario: Scenario, weights: Callable[[], Mapping[str, int]] | None = None
) -> Iterator[PredictionEvent | OutcomeEvent]:
    """Yield the events in event-time order (an outcome due at a request's time comes first).

    ``weights``, if given, is asked before every request for the served weights in force (e.g. a
    flag state's ``served_weights``): traffic then follows the flag as a client would, and a
    shadow variant given weight (a promoted shadow) is served instead of shadowed.
    """
    rng = random.Random(scenario.seed)
    served = [v for v in scenario.variants if not v.shadow]
    shadows = [v for v in scenario.variants if v.shadow]
    cum: list[float] = []
    total = 0.0
    for v in served:
        total += v.weight
        cum.append(total)
    in_force: Mapping[str, int] | None = None
    classes = scenario.classes
    pending: list[tuple[float, int, OutcomeEvent]] = []  # outcomes waiting for their time
    seq = 0
    step = 1.0 / scenario.rate
    for i in range(scenario.requests):
        ts = round(scenario.start_ts + i * step, 6)
        while pending and pending[0][0] <= ts:
            yield heapq.heappop(pending)[2]
        truth = classes[rng.randrange(len(classes))]
        if weights is not None and (now := weights()) != in_force:
            in_force = dict(now)
            served = [v for v in scenario.variants if in_force.get(v.name, 0) > 0]
            shadows = [v for v in scenario.variants if v.shadow and not in_force.get(v.name, 0)]
            cum, total = [], 0.0
            for v in served:
                total += in_force[v.name]
                cum.append(total)
        pick = rng.random() * total
        variant = served[next(k for k, c in enumerate(cum) if pick < c)]
        rid = f"req-{i:09d}"
        region = (
            scenario.regions[rng.randrange(len(scenario.regions))] if scenario.regions else None
        )
        attributes = {"region": region} if region is not None else {}
        for v, request_id in [(variant, rid), *((s, f"{rid}~{s.name}") for s in shadows)]:
            changed = scenario.change_at is not None and i >= scenario.change_at
            if scenario.change_in and region not in scenario.change_in:
                changed = False
            accuracy = v.accuracy_after if changed and v.accuracy_after is not None else v.accuracy
            errored = rng.random() < v.error_rate
            right = rng.random() < accuracy
            wrong = [c for c in classes if c != truth]
            prediction = truth if right else wrong[rng.randrange(len(wrong))]
            latency = round(v.latency_ms * math.exp(0.25 * rng.gauss(0.0, 1.0)), 3)
            yield PredictionEvent(
                request_id=request_id,
                flag=scenario.flag,
                variant=v.name,
                ts=ts,
                prediction=prediction,
                score=round(rng.random() * 0.5 + (0.5 if right else 0.0), 4),
                latency_ms=latency,
                error="inference_failed" if errored else None,
                served=not v.shadow,
                model_version=f"{v.name}-1",
                attributes=attributes,
            )
            if rng.random() < scenario.label_fraction:
                delay = rng.expovariate(1.0 / scenario.label_delay) if scenario.label_delay else 0
                at = round(ts + delay, 6)
                heapq.heappush(
                    pending, (at, seq, OutcomeEvent(request_id=request_id, ts=at, label=truth))
                )
                seq += 1
    while pending:
        yield heapq.heappop(pending)[2]


def simulate_following(
    scenario: Scenario, config: Config, batch: int = 500
) -> list[PredictionEvent | OutcomeEvent]:
    """The events of ``scenario`` with traffic following the flag's live weights: a closed loop.

    An :class:`~driftswitch.streams.pipeline.engine.Engine` for ``config`` processes the events
    every
    ``batch`` events, and the simulated clients serve the weights of its current flag state, so a
    rollout's advances (or a kill) change who gets the candidate from then on. The result is a
    fixed event list: replaying it (``backtest``, or the live worker) reaches the same decisions.
    """
    from driftswitch.streams.pipeline.engine import Engine

    engine = Engine(config)
    events: list[PredictionEvent | OutcomeEvent] = []
    done = 0
    for event in simulate(scenario, lambda: engine.state(scenario.flag).served_weights()):
        events.append(event)
        if len(events) - done >= batch:
            engine.process(events[done:])
            done = len(events)
    return events


def write_jsonl(events: Iterable[PredictionEvent | OutcomeEvent], path: str | Path) -> int:
    """Write events as JSON Lines (the ``backtest`` input format); returns the count."""
    n = 0
    with Path(path).open("wb") as out:
        for event in events:
            out.write(encode(event) + b"\n")
            n += 1
    return n


def config_yaml(scenario: Scenario, guardrails: str = "") -> str:
    """A config for the scenario's flag: its variants at their weights (first served variant is
    the default), plus the given ``guardrails:`` YAML block (already indented by 4 spaces)."""
    served = [v for v in scenario.variants if not v.shadow]
    lines = ["flags:", f"  {scenario.flag}:", f"    default: {served[0].name}", "    variants:"]
    total = sum(v.weight for v in served)
    weights = [round(100 * v.weight / total) for v in served]
    weights[0] += 100 - sum(weights)
    for v, w in zip(served, weights, strict=True):
        lines.append(f"      {v.name}: {{weight: {w}, value: {v.name}}}")
    for v in scenario.variants:
        if v.shadow:
            lines.append(f"      {v.name}: {{weight: 0, value: {v.name}, shadow: true}}")
    text = "\n".join(lines) + "\n"
    if guardrails:
        text += "    guardrails:\n" + guardrails
    return text
