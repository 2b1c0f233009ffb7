"""Progressive rollouts: a candidate variant earns traffic step by step, on evidence. No I/O.

A :class:`Rollout` is the state machine of one flag's ``rollout:`` plan
(:class:`~driftswitch.streams.config.model.RolloutConfig`). The engine feeds it the same matured
observations its guardrails see, one at a time in arrival order (``observe``), with the flag's
current state; it answers with the flag changes (cause kind ``rollout``) and alerts that follow.
Deciding per observation, in event time, keeps the engine's promise that the live worker, a
restarted worker and ``backtest`` reach the same decisions however the stream is cut into batches.

Phases and gates
----------------
The rollout sits at a *step* (an index into ``steps``; ``-1`` is the shadow phase of a
``promote_shadow`` candidate that serves no one yet). At step ``k`` the candidate has weight
``steps[k]``, ``compare_to`` the rest (the other variants keep theirs, so the total stays 100).
After each observation:

- **harm** (the comparison shows the candidate worse by more than ``margin``) acts as soon as it
  stands, at any step and even while paused: ``on_harm: kill`` kills the candidate (its weight
  returns to ``compare_to``) and ends the rollout; ``previous`` goes back one step (from the
  first step: weight 0, rollout stopped; from the shadow phase there is nothing to take back, so
  it warns and stops);
- **advance** when the candidate has ``min_samples`` matured samples in the step, the step has
  lasted ``min_duration`` and the comparison declares non-inferiority — unless the flag is
  ``paused`` (by hand, or by a guardrail's ``hold``) or pinned by an operator (then a harm with
  ``previous`` only warns: the operator holds the weights);
- **hold** when the step is still inconclusive ``max_duration`` after it began: the flag is
  paused (a change with action ``hold``) and an alert with action ``warn`` goes out. A resume
  (``paused`` back to false) restarts the step's clock.

The last step is final: the rollout is complete there and keeps watching for harm only — as long
as ``compare_to`` still receives traffic. A step that leaves ``compare_to`` no traffic (typically
100 %) *ends the comparison*: the control would only receive the late outcomes of earlier
predictions, a frozen sample with no power and the place false kills came from. From there on the
candidate is watched by the flag's one-sample guardrails (``cusum``, ``glr`` on the candidate). To
keep measuring against control, end the steps below 100 (e.g. ``[1, 5, 25, 50, 95]``: a 5 %
holdout that stays on control). A killed candidate (by a guardrail, or by hand) ends the rollout;
a later restore does not restart it.

The comparison is restarted at every step
-----------------------------------------
Each phase runs its own anytime-valid comparison (``sequential``: the Beta-mixture e-value for
0/1 metrics, the asymptotic confidence sequence for continuous ones) on the observations that
matured during that phase. The rollout's ``alpha`` is *spent* over phases whose number has no
bound — a rollback (``on_harm: previous``) or a restart without a snapshot starts a new phase —
so phase ``k`` (1, 2, 3, …) gets ``alpha · 6 / (π² k²)``; these sum to ``alpha``, so the
probability that *any* phase of the whole rollout declares harm or non-inferiority wrongly is at
most ``alpha``, however many phases there are. ``k`` only grows: it is kept in the snapshot and
written into every rollout flag change's evidence (``phase``), and a worker that restarts
without a snapshot continues after the published phase (``align``), skipping the phase the
previous worker may have begun. Within a phase the comparison is valid however often it is
looked at, so advancing at the first look that passes the gates is honest optional stopping.
A restart, rather than one sequence carried across steps, is what makes each step's
evidence its own: the interval in a step's flag change describes the candidate *at that share of
traffic* (a population or load effect that appears only at 25 % is not averaged away by the 1 %
step), and each step's ``min_samples`` gate counts that step's samples. The price is a smaller
level per phase (0.61·alpha for the first, 0.15·alpha for the second, …).

Weights keep their total and the candidate's interval only grows during a ramp: with the
candidate and ``compare_to`` adjacent in the assignment order (validated in the config), users
move only from ``compare_to`` to the candidate as it advances
(:mod:`driftswitch.streams.contract.assign`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from driftswitch.detectors import registry
from driftswitch.detectors.base import JSON
from driftswitch.detectors.interleaving import Interleaving
from driftswitch.detectors.sequential import Sequential
from driftswitch.streams.config.model import (
    METRIC_TRAITS,
    FlagConfig,
    Metric,
    OnHarm,
    RolloutConfig,
)
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    Cause,
    CauseKind,
    FlagChangeEvent,
    Output,
)
from driftswitch.streams.pipeline.monitor import finite, plain
from driftswitch.streams.pipeline.transitions import next_state, rollout_gate

#: The step index of a shadow candidate before its promotion.
SHADOW_STEP = -1
#: The name a rollout's alerts carry in place of a guardrail's.
ALERT_NAME = "rollout"

RUNNING = "running"  # gates are evaluated; advances may follow
COMPLETE = "complete"  # at the last step: watching for harm only
KILLED = "killed"  # killed by the rollout on harm
STOPPED = "stopped"  # rolled back out of traffic (on_harm: previous at the first step)
ENDED = "ended"  # the candidate was killed from outside (guardrail or operator)
TERMINAL = frozenset({KILLED, STOPPED, ENDED})


class Rollout:
    """The rollout state machine of one flag (module docstring); plain-data state.

    ``pending`` is filled by the engine on its hot path with ``(arm, value, index, ts)``
    observations (arm 1 = candidate, 0 = ``compare_to``; values oriented so lower is better,
    e.g. error bits) and drained through :meth:`observe`.
    """

    __slots__ = (
        "candidate",
        "comparing",
        "comparison",
        "control",
        "flag",
        "flag_config",
        "paused_seen",
        "pending",
        "phase",
        "plan",
        "samples",
        "segment",
        "segments",
        "status",
        "step",
        "step_start",
    )

    def __init__(self, flag: str, flag_config: FlagConfig, plan: RolloutConfig) -> None:
        self.flag = flag
        self.plan = plan
        self.candidate = plan.variant
        self.control = plan.control(flag_config)
        self.flag_config = flag_config
        #: Rollout by segment: the current segment's index (0 without segments) and how many.
        self.segment = 0
        self.segments = len(plan.segments or ())
        #: The current phase (1, 2, ...): every step entered, rollback or restart without a
        #: snapshot starts a new one; it never goes back.
        self.phase = 1
        #: False once ``compare_to`` gets no traffic (the comparison has ended).
        self.comparing = True
        #: ``(arm, value, index, ts)``, plus the prediction's segment index for a rollout by
        #: segment (observations of other segments are not evidence for the current one).
        self.pending: list[tuple[Any, ...]] = []
        self.step = SHADOW_STEP if plan.promote_shadow else 0
        self.status = COMPLETE if self.step == len(plan.steps) - 1 else RUNNING
        self.step_start: float | None = None
        self.paused_seen = False
        self.samples = [0, 0]
        self.comparison: Sequential | Interleaving = self._fresh()

    @property
    def alpha(self) -> float:
        """Error rate of the current phase's comparison (``phase_alpha``)."""
        return phase_alpha(self.plan.alpha, self.phase)

    def _fresh(self) -> Sequential | Interleaving:
        if self.plan.metric is Metric.INTERLEAVING:
            # One observation per interleaved impression (arm 1): a win, loss or tie; the margin
            # is in win-probability units, and margin 0 makes the advance gate superiority.
            return Interleaving(alpha=self.alpha, margin=self.plan.margin)
        # Observations are oriented "lower is better" (error bits, latency, abs error).
        return Sequential(
            alpha=self.alpha,
            margin=self.plan.margin,
            higher_is_better=False,
            method=Sequential.method_for(METRIC_TRAITS[self.plan.metric].input),
        )

    def percent(self, step: int) -> int:
        """The candidate's weight at ``step`` (0 in the shadow phase)."""
        return 0 if step == SHADOW_STEP else self.plan.steps[step]

    # -- deciding ------------------------------------------------------------------------------

    def observe(
        self, state: FlagChangeEvent, arm: int, x: float, ts: float, segment: int | None = None
    ) -> list[Output]:
        """Feed one matured observation of ``arm`` at event time ``ts``; return what follows
        (nothing, one flag change, or a flag change and an alert, in publishing order).

        In a rollout by segment, ``segment`` is the index of the first plan segment the
        prediction's context matched (None: none); only the current segment's count."""
        if self.status in TERMINAL:
            return []
        if self.segments and segment != self.segment:
            return []
        current = state.variants.get(self.candidate)
        if current is None or current.killed:
            self.status = ENDED
            return []
        if self.step_start is None:
            self.step_start = ts  # the engine has no clock but its events
        if state.paused:
            self.paused_seen = True
        elif self.paused_seen:  # resumed: the step's clock starts again
            self.paused_seen = False
            self.step_start = ts
        ctrl = state.variants.get(self.control)
        self.comparing = ctrl is not None and ctrl.weight > 0 and not ctrl.killed
        if not self.comparing:
            return []  # ended: control's outcomes are stale; one-sample guardrails watch on
        seq = self.comparison
        if isinstance(seq, Interleaving):
            seq.update(x)
        else:
            seq.update("variant" if arm else "control", x)
        self.samples[arm] += 1
        if seq.harm:  # a level: acts whenever it stands (pinned: reported once, on its edge)
            if state.pinned is not None and self.plan.on_harm is OnHarm.PREVIOUS:
                return self._harm(state, ts) if seq.drift_detected else []
            return self._harm(state, ts)
        if self.status != RUNNING or state.paused or state.pinned is not None:
            return []
        elapsed = ts - self.step_start
        plan = self.plan
        if (
            self.samples[1] >= plan.min_samples
            and elapsed >= plan.min_duration
            and seq.non_inferior
        ):
            return [self._advance(state, ts)]
        if plan.max_duration is not None and elapsed > plan.max_duration:
            return self._hold(state, ts)
        return []

    def _advance(self, state: FlagChangeEvent, ts: float) -> FlagChangeEvent:
        to = self.step + 1
        lo = self.comparison.interval[0]
        why = (
            f"non-inferior to {self.control} (lower bound {lo:.5f} > "
            f"{self.comparison.threshold:.5f}) with {self.samples[1]} candidate samples"
        )
        if self.segments and to == len(self.plan.steps) - 1 and self.segment < self.segments - 1:
            # The segment reaches the last step: it keeps that share (the gate's `done`), and
            # the next segment starts at the first step.
            assert self.plan.segments is not None
            done, nxt = self.plan.segments[self.segment], self.plan.segments[self.segment + 1]
            why += (
                f"; segment {done.name} done at {self.plan.steps[-1]}%, segment {nxt.name} starts"
            )
            self.segment += 1
            change = self._change(state, 0, Action.ADVANCE, why, ts, statistic=lo)
            self._enter(0, ts)
            return change
        change = self._change(state, to, Action.ADVANCE, why, ts, statistic=lo)
        self._enter(to, ts)
        return change

    def _harm(self, state: FlagChangeEvent, ts: float) -> list[Output]:
        hi = self.comparison.interval[1]
        why = (
            f"harm against {self.control} (upper bound {hi:.5f} < {self.comparison.threshold:.5f})"
        )
        if self.plan.on_harm is OnHarm.KILL:  # always possible, pinned or not
            change = self._change(state, None, Action.KILL, why, ts, statistic=hi)
            self.status = KILLED
            return [change]
        if self.step == SHADOW_STEP:
            cause = self._cause(Action.WARN, f"{why}; shadow not promoted, rollout stopped", ts)
            self.status = STOPPED
            return [self._alert(state, cause, ts)]
        if state.pinned is not None:  # the operator holds the weights: report, move nothing
            why = f"{why}; flag pinned to {state.pinned.variant}, no rollback"
            return [self._alert(state, self._cause(Action.WARN, why, ts), ts)]
        to = self.step - 1
        change = self._change(state, to, Action.ROLLBACK, why, ts, statistic=hi)
        if to < 0:
            self.status = STOPPED
        else:
            self._enter(to, ts)
        return [change]

    def _hold(self, state: FlagChangeEvent, ts: float) -> list[Output]:
        assert self.step_start is not None
        why = (
            f"step {self._describe(self.step)} inconclusive after {ts - self.step_start:.0f} s "
            f"(max_duration {self.plan.max_duration:.0f} s); rollout held"
        )
        cause = self._cause(Action.HOLD, f"rollout of {self.candidate}: {why}", ts)
        hold = next_state(state, cause, ts, paused=True)
        warn = cause.model_copy(update={"action": Action.WARN})
        return [hold, self._alert(hold, warn, ts)]

    def align(self, state: FlagChangeEvent) -> None:
        """Take the position a published state implies: the step whose percent is the
        candidate's weight, with a fresh comparison whose clock starts at the next observation.

        For a worker that starts without a snapshot and adopts the flags topic's states; a
        state that matches no step (weights set by hand) leaves the position as it is.
        """
        if self.status in TERMINAL:
            return
        current = state.variants.get(self.candidate)
        if current is None or current.killed:
            self.status = ENDED
            return
        if self.segments and state.rollout_gate is not None:
            self.segment = min(state.rollout_gate.segment, self.segments - 1)
        published = _published_phase(state)
        if published is not None and published + 1 >= self.phase:
            # The previous worker decided in phase ``published`` and may have run the next one:
            # continue after both, so no phase's error budget is spent twice.
            self.phase = published + 1
            if current.weight == self.percent(self.step):
                self._enter(self.step, None)
                return
        if current.weight == self.percent(self.step):
            return
        first = SHADOW_STEP if self.plan.promote_shadow else 0
        for step in range(first, len(self.plan.steps)):
            if self.percent(step) == current.weight:
                self._enter(step, None)
                return
        if current.weight == 0:  # rolled back out of traffic
            self.status = STOPPED

    def _enter(self, step: int, ts: float | None) -> None:
        """Start ``step`` in a new phase: a fresh comparison and clock (None: from the next
        observation)."""
        self.step = step
        self.step_start = ts
        self.samples = [0, 0]
        self.phase += 1
        self.comparison = self._fresh()
        self.status = COMPLETE if step == len(self.plan.steps) - 1 else RUNNING

    # -- building outputs ----------------------------------------------------------------------

    def _describe(self, step: int) -> str:
        return "shadow" if step == SHADOW_STEP else f"{step + 1} ({self.plan.steps[step]}%)"

    def _change(
        self,
        state: FlagChangeEvent,
        to: int | None,
        action: Action,
        why: str,
        ts: float,
        statistic: float,
    ) -> FlagChangeEvent:
        """The new flag state: the candidate at step ``to``'s weight (None: killed)."""
        variants = dict(state.variants)
        cand, ctrl = variants[self.candidate], variants.get(self.control)
        others = sum(
            v.weight for n, v in variants.items() if n not in (self.candidate, self.control)
        )
        pair = sum(v.weight for v in variants.values()) - others
        weight = 0 if to is None else min(self.percent(to), pair)
        variants[self.candidate] = cand.model_copy(update={"weight": weight, "killed": to is None})
        if ctrl is not None:
            variants[self.control] = ctrl.model_copy(update={"weight": pair - weight})
        target = "killed" if to is None else f"step {self._describe(to)}"
        reason = f"rollout of {self.candidate}: step {self._describe(self.step)} -> {target}: {why}"
        cause = self._cause(action, reason, ts, to=to, statistic=statistic)
        if self.segments:
            gate = rollout_gate(self.flag_config, self.segment)
            return next_state(state, cause, ts, variants=variants, rollout_gate=gate)
        return next_state(state, cause, ts, variants=variants)

    def _alert(self, state: FlagChangeEvent, cause: Cause, ts: float) -> AlertEvent:
        return AlertEvent(
            flag=state.flag,
            guardrail=ALERT_NAME,
            variant=self.candidate,
            cause=cause,
            ts=ts,
            flag_version=state.version,
        )

    def _cause(
        self,
        action: Action,
        reason: str,
        ts: float,
        *,
        to: int | None = None,
        statistic: float | None = None,
    ) -> Cause:
        """The evidence of a decision: interval, samples per arm, step and gate values."""
        seq = self.comparison
        lo, hi = finite(seq.interval[0]), finite(seq.interval[1])
        interval = (lo, hi) if lo is not None and hi is not None else None
        evidence: dict[str, Any] = {
            "step": self.step,
            "percent": self.percent(self.step),
            "steps": list(self.plan.steps),
            "gates": self._gates(ts),
            "phase": self.phase,
            "alpha": self.alpha,
            "comparison": seq.explain(),
        }
        if self.plan.segments:
            evidence["segment"] = self.plan.segments[self.segment].name
        if action in (Action.ADVANCE, Action.ROLLBACK):
            evidence["to_step"] = to
            evidence["to_percent"] = None if to is None else self.percent(to)
        plain_evidence = plain(evidence)
        assert isinstance(plain_evidence, dict)
        return Cause(
            kind=CauseKind.ROLLOUT,
            action=action,
            reason=reason,
            variant=self.candidate,
            compare_to=self.control,
            metric=self.plan.metric.value,
            detector=seq.kind,
            statistic=None if statistic is None else finite(statistic),
            threshold=seq.threshold,
            samples={self.candidate: self.samples[1], self.control: self.samples[0]},
            interval=interval,
            window={"first_ts": self.step_start, "last_ts": ts, "events": sum(self.samples)},
            evidence=plain_evidence,
        )

    def _gates(self, ts: float | None) -> dict[str, JSON]:
        plan = self.plan
        start = self.step_start
        return {
            "min_samples": plan.min_samples,
            "samples": self.samples[1],
            "min_duration": plan.min_duration,
            "elapsed": None if start is None or ts is None else ts - start,
            "max_duration": plan.max_duration,
            "non_inferior": self.comparison.non_inferior,
            "harm": self.comparison.harm,
        }

    # -- reading -------------------------------------------------------------------------------

    def summary(self, paused: bool, last_ts: float | None = None) -> dict[str, JSON]:
        """Plain-data position for the status API (``last_ts``: the engine's event-time now)."""
        seq = self.comparison
        lo, hi = finite(seq.interval[0]), finite(seq.interval[1])
        return {
            "variant": self.candidate,
            "compare_to": self.control,
            "status": self.status,
            "paused": paused,
            "step": self.step,
            "percent": self.percent(self.step),
            "steps": list(self.plan.steps),
            "step_started": self.step_start,
            "samples": {self.candidate: self.samples[1], self.control: self.samples[0]},
            "interval": [lo, hi] if lo is not None and hi is not None else None,
            "decision": str(seq.explain()["decision"]),
            "gates": self._gates(last_ts),
            "phase": self.phase,
            "alpha": self.alpha,
            "comparison": "running" if self.comparing else "ended: compare_to gets no traffic",
            "on_harm": self.plan.on_harm.value,
            "segment": self.plan.segments[self.segment].name if self.plan.segments else None,
        }

    # -- state ---------------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        """Plain data; the pending list must be empty (state is taken between batches)."""
        if self.pending:
            raise RuntimeError("flush before taking the state")
        return {
            "plan": plain(self.plan.model_dump(mode="json")),
            "step": self.step,
            "status": self.status,
            "step_start": self.step_start,
            "paused_seen": self.paused_seen,
            "samples": list(self.samples),
            "phase": self.phase,
            "comparing": self.comparing,
            "comparison": self.comparison.to_state(),
            "segment": self.segment,
        }

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Continue from ``to_state`` output made for the same plan.

        Returns False (and keeps the fresh rollout) when the config changed the plan.
        """
        if state.get("plan") != plain(self.plan.model_dump(mode="json")):
            return False
        self.step = int(state["step"])
        self.status = str(state["status"])
        start = state["step_start"]
        self.step_start = None if start is None else float(start)
        self.paused_seen = bool(state["paused_seen"])
        self.samples = [int(n) for n in state["samples"]]
        # Snapshots from before phases were counted: the step index bounds the phases run.
        self.phase = int(state.get("phase", self.step + 2))
        self.comparing = bool(state.get("comparing", True))
        self.comparison = registry.restore(state["comparison"])
        self.segment = int(state.get("segment", 0))
        return True


def phase_alpha(alpha: float, phase: int) -> float:
    """The error rate of phase ``phase`` (1, 2, ...): ``alpha · 6 / (π² phase²)``.

    Since Σ 1/k² = π²/6 the levels of all phases, however many, add up to ``alpha``.
    """
    return alpha * 6.0 / (math.pi**2 * phase * phase)


def _published_phase(state: FlagChangeEvent) -> int | None:
    """The rollout phase recorded in a published rollout flag change, if any."""
    cause = state.cause
    if cause.kind is not CauseKind.ROLLOUT or not isinstance(cause.evidence, dict):
        return None
    phase = cause.evidence.get("phase")
    return phase if isinstance(phase, int) and not isinstance(phase, bool) else None


#: Rollout metrics read from a prediction alone; the others (accuracy, abs_error, squared_error)
#: are scored on the join, and interleaving on an impression's clicks.
LABEL_FREE = frozenset({Metric.ERROR_RATE, Metric.LATENCY_MS})
