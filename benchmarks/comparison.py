"""The `sequential` comparison, measured: A/A false harm at every split, kills through the engine.

    .venv/bin/python benchmarks/comparison.py [--runs 1000] [--kill-runs 200] [--quick]

Prints three tables:

1. **A/A harm** — both arms at the same accuracy, control at 50, 25, 75, 5, 95, 1 and 99 % of
   traffic, accuracies 0.5, 0.9 and 0.99; ``--runs`` seeded runs of ``--events`` matured events
   each, looked at on the detector's own schedule (every block of ~6 % of the count; the
   asymptotic interval after every 4 events). "harm" is the share of runs in which harm was ever
   declared (α = 0.05, margin 0), with its Clopper–Pearson 95 % interval; "better" the share in
   which the variant was ever declared better. Mixture (the default for 0/1 outcomes) and the
   asymptotic interval it replaced, side by side.
2. **Kill** — a candidate at 10 % of traffic with accuracy 0.3, 0.5, 0.7 or 0.8 against a 0.9
   control, guarded by `sequential` alone (`action: kill`, `min_samples` 100), through the engine
   (simulated predictions and outcomes, 2 s mean label delay): share of runs killed within
   ``--max-requests`` requests, and the candidate's matured samples at the kill (median, p90).
3. **Power** — median pairs (50/50) until harm, 0.90 against 0.85 and 0.80, per method.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import numpy as np

from driftswitch.detectors.sequential import (
    Sequential,
    block_ends,
    cs_bounds,
    mixture_log_e_equal,
)
from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate

ALPHA = 0.05
SHARES = (0.5, 0.25, 0.75, 0.05, 0.95, 0.01, 0.99)
ACCURACIES = (0.5, 0.9, 0.99)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` (by bisection on the binomial tail)."""

    def tail(p: float, upper: bool) -> float:
        # P(X >= k) if upper else P(X <= k) for X ~ Binomial(n, p)
        terms = range(k, n + 1) if upper else range(k + 1)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in terms)

    a = (1 - level) / 2

    def solve(target: float, upper: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            value = tail(mid, upper)
            # P(X >= k) grows with p; P(X <= k) shrinks with p
            if (value < target) == upper:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(a, True)
    high = 1.0 if k == n else solve(a, False)
    return low, high


def aa_mixture(
    rng: np.random.Generator, runs: int, events: int, share: float, accuracy: float
) -> tuple[int, int]:
    """Runs (of ``runs``) with harm ever declared, and with "better" ever declared."""
    looks = np.array(block_ends(events))
    harm = better = 0
    for start in range(0, runs, 200):
        size = min(200, runs - start)
        variant = rng.random((size, events)) >= share  # control gets ``share``
        error = rng.random((size, events)) >= accuracy
        n_v = np.cumsum(variant, axis=1, dtype=np.int32)[:, looks - 1].astype(np.float64)
        ones_v = np.cumsum(variant & error, axis=1, dtype=np.int32)[:, looks - 1].astype(float)
        ones = np.cumsum(error, axis=1, dtype=np.int32)[:, looks - 1].astype(np.float64)
        n_c = looks - n_v
        ones_c = ones - ones_v
        both = (n_c > 0) & (n_v > 0)
        log_e = mixture_log_e_equal(ones_c, n_c, ones_v, n_v)
        crossed = (log_e >= math.log(1 / ALPHA)) & both
        worse = ones_v * n_c > ones_c * n_v
        harm += int((crossed & worse).any(axis=1).sum())
        better += int((crossed & ~worse).any(axis=1).sum())
    return harm, better


def aa_asymptotic(
    rng: np.random.Generator, runs: int, events: int, share: float, accuracy: float
) -> tuple[int, int]:
    """The same for the asymptotic interval (min_samples 30 per arm), looked at every 4 events."""
    looks = np.arange(4, events + 1, 4)
    harm = better = 0
    for start in range(0, runs, 200):
        size = min(200, runs - start)
        variant = rng.random((size, events)) >= share
        error = (rng.random((size, events)) >= accuracy).astype(np.float64)
        n_v = np.cumsum(variant, axis=1)[:, looks - 1].astype(np.float64)
        s_v = np.cumsum(error * variant, axis=1)[:, looks - 1]
        s = np.cumsum(error, axis=1)[:, looks - 1]
        n_c = looks - n_v
        s_c = s - s_v
        ok = (n_c >= 30) & (n_v >= 30)
        with np.errstate(divide="ignore", invalid="ignore"):
            lower, upper = cs_bounds(n_c, s_c, s_c, n_v, s_v, s_v, alpha=ALPHA)
        harm += int((ok & (upper < 0)).any(axis=1).sum())
        better += int((ok & (lower > 0)).any(axis=1).sum())
    return harm, better


GUARDRAIL = """\
    guardrails:
      - name: candidate-vs-control
        variant: candidate
        compare_to: control
        metric: accuracy
        detector: {kind: sequential}
        action: kill
"""


def kill_run(accuracy: float, seed: int, max_requests: int) -> int | None:
    """Candidate samples at the kill through the engine, or None if not killed."""
    sc = Scenario(
        requests=max_requests,
        change_at=None,
        seed=seed,
        variants=(
            VariantSpec("control", weight=90, accuracy=0.9),
            VariantSpec("candidate", weight=10, accuracy=accuracy),
        ),
    )
    engine = Engine(parse_config(config_yaml(sc, GUARDRAIL)))
    batch: list[object] = []
    for event in simulate(sc):
        batch.append(event)
        if len(batch) == 1000:
            for out in engine.process(batch).outputs:  # type: ignore[arg-type]
                if isinstance(out.event, FlagChangeEvent):
                    return out.event.cause.samples["candidate"]
            batch = []
    for out in engine.process(batch).outputs:  # type: ignore[arg-type]
        if isinstance(out.event, FlagChangeEvent):
            return out.event.cause.samples["candidate"]
    return None


def power(method: str, p_variant: float, runs: int) -> float:
    """Median pairs until harm, 0.90 control against ``p_variant`` (50/50, seeded)."""
    found = []
    for seed in range(runs):
        rng = random.Random(seed)
        seq = Sequential(method=method)
        for i in range(1, 20_001):
            seq.update("control", float(rng.random() >= 0.9))
            seq.update("variant", float(rng.random() >= p_variant))
            if seq.harm:
                found.append(i)
                break
    return statistics.median(found) if found else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--kill-runs", type=int, default=200)
    parser.add_argument("--max-requests", type=int, default=40_000)
    parser.add_argument("--power-runs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="100 A/A runs, 20 kill runs")
    parser.add_argument("--only", choices=("aa", "kill", "power"), default=None)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.kill_runs, args.power_runs = 100, 20, 10
    rng = np.random.default_rng(20261129)
    started = time.perf_counter()
    if args.only in (None, "aa"):
        print(f"A/A harm, α = {ALPHA}, {args.runs} runs x {args.events} events per row")
        print("| control share | accuracy | mixture harm [95% CI] | mixture better |", end="")
        print(" asymptotic harm | asymptotic better |")
        print("|---:|---:|---:|---:|---:|---:|")
        for share in SHARES:
            for accuracy in ACCURACIES:
                harm, better = aa_mixture(rng, args.runs, args.events, share, accuracy)
                lo, hi = clopper_pearson(harm, args.runs)
                a_harm, a_better = aa_asymptotic(rng, args.runs, args.events, share, accuracy)
                n = args.runs
                print(
                    f"| {share:.0%} | {accuracy} | {harm / n:.1%} [{lo:.1%}, {hi:.1%}] | "
                    f"{better / n:.1%} | {a_harm / n:.1%} | {a_better / n:.1%} |",
                    flush=True,
                )
    if args.only in (None, "kill"):
        print(f"\nKill through the engine: candidate at 10 % vs control 0.9, {args.kill_runs} runs")
        print("| candidate accuracy | killed [95% CI] | median samples | p90 samples |")
        print("|---:|---:|---:|---:|")
        for accuracy in (0.3, 0.5, 0.7, 0.8):
            found = [kill_run(accuracy, seed, args.max_requests) for seed in range(args.kill_runs)]
            killed = [s for s in found if s is not None]
            lo, hi = clopper_pearson(len(killed), len(found))
            q = np.percentile(killed, [50, 90]) if killed else [math.nan, math.nan]
            print(
                f"| {accuracy} | {len(killed)}/{len(found)} [{lo:.1%}, {hi:.1%}] | "
                f"{q[0]:.0f} | {q[1]:.0f} |",
                flush=True,
            )
    if args.only in (None, "power"):
        print(f"\nMedian pairs (50/50) until harm against 0.90, {args.power_runs} runs")
        print("| variant accuracy | mixture | betting | asymptotic |")
        print("|---:|---:|---:|---:|")
        for p in (0.85, 0.80):
            row = [power(m, p, args.power_runs) for m in ("mixture", "betting", "asymptotic")]
            print(f"| {p} | " + " | ".join(f"{x:.0f}" for x in row) + " |", flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
