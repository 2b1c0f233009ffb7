"""Detection delay against false-alarm rate for driftswitch's accuracy detectors.

For an accuracy drop 0.90 → 0.80 and 0.90 → 0.85 at requested ARL0 1e4 and 1e5, prints a
Markdown table per detector: the ARL0 measured on an in-control stream (events / false alarms,
alarms restart the statistic), false alarms per 10k events, the mean detection delay over seeded
runs with the change at event ``--pre``, misses (no alarm within ``--horizon`` events after the
change) and the ratio of the mean delay to the optimal worst-case delay
(:data:`OPTIMAL_DELAY`) interpolated log-linearly at the *measured* ARL0.

``cusum`` and ``glr`` are calibrated for the requested ARL0; river's ``adwin`` and
``page_hinkley`` (when registered) run with their defaults, so their rows are the same under both
budgets.

Then: the calibration table (``glr`` and ``cusum`` ARL0 measured over at least ``--alarms`` false
alarms per budget, with 95 % CIs, and ``glr``'s fresh-start delays against the optimum), and the
learned-baseline study (``--deployments`` seeded warm-ups per row, each deployment's real ARL0
from the exact chain). ``--calibration-only`` / ``--learned-only`` print just those.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detectors.py [--runs N] [--null-events N]``
(one BLAS thread: the chain's small dense solves are slower multithreaded on a loaded machine).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from driftswitch.detectors import registry
from driftswitch.detectors.base import BaseDetector

#: The exact optimal worst-case delay of the CUSUM tuned to the drop, by ARL0 (1e3 … 1e7): Lorden
#: and Moustakides' bound (tests/unit/detectors/test_cusum.py checks the Markov-chain ARL on it).
OPTIMAL_DELAY: dict[tuple[float, float], tuple[float, ...]] = {
    (0.90, 0.85): (143, 307, 491, 678, 867),
    (0.90, 0.80): (62, 111, 163, 215, 267),
}
_ARL_GRID = (1e3, 1e4, 1e5, 1e6, 1e7)


def optimal_delay(change: tuple[float, float], arl0: float) -> float:
    """The optimal delay at ``arl0``, interpolated (and extrapolated) linearly in ln ARL0."""
    xs = np.log10(_ARL_GRID)
    ys = np.asarray(OPTIMAL_DELAY[change], dtype=float)
    x = math.log10(arl0)
    if x <= xs[0]:
        return float(ys[0] + (ys[1] - ys[0]) * (x - xs[0]))
    if x >= xs[-1]:
        return float(ys[-1] + (ys[-1] - ys[-2]) * (x - xs[-1]))
    return float(np.interp(x, xs, ys))


def _feed(det: Any, bits: np.ndarray) -> list[int]:
    """Indices of the alarms raised by ``bits`` (vectorised where the detector allows it)."""
    if type(det).update_many is not BaseDetector.update_many:
        alarms: list[int] = []
        # Chunks small enough that one alarm per chunk is the rule; locate alarms per event inside
        # a chunk that alarmed.
        step = 4096
        for start in range(0, len(bits), step):
            chunk = bits[start : start + step]
            state = det.to_state()
            if det.update_many(chunk):
                det = registry.restore(state)
                for i, x in enumerate(chunk):
                    det.update(float(x))
                    if det.drift_detected:
                        alarms.append(start + i)
        return alarms
    out = []
    for i, x in enumerate(bits.tolist()):
        det.update(x)
        if det.drift_detected:
            out.append(i)
    return out


def null_arl(make: Callable[[], Any], q0: float, events: int, seed: int) -> tuple[float, float]:
    """(measured ARL0, false alarms per 10k events) on an in-control stream."""
    rng = np.random.default_rng(seed)
    det = make()
    alarms = 0
    block = 500_000
    for start in range(0, events, block):
        bits = (rng.random(min(block, events - start)) < q0).astype(np.int64)
        alarms += len(_feed(det, bits))
    arl = events / alarms if alarms else math.inf
    return arl, alarms / events * 1e4


def delays(
    make: Callable[[], Any], q0: float, q1: float, runs: int, pre: int, horizon: int, seed: int
) -> tuple[float, int]:
    """(mean delay, misses): events from the change to the first alarm at or after it."""
    rng = np.random.default_rng(seed)
    found = []
    misses = 0
    for _ in range(runs):
        det = make()
        before = (rng.random(pre) < q0).astype(np.int64)
        after = (rng.random(horizon) < q1).astype(np.int64)
        _feed(det, before)
        for start in range(0, horizon, 256):
            hit = _feed(det, after[start : start + 256])
            if hit:
                found.append(start + hit[0] + 1)
                break
        else:
            misses += 1
    return (float(np.mean(found)) if found else math.inf), misses


def _first_harm_pairs(
    rng: np.random.Generator,
    q_control: float,
    q_variant: float,
    runs: int,
    horizon: int,
    min_samples: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Per run, the pair count at which ``sequential`` first declares harm (inf if never) and
    whether its interval ever excluded 0, looking after every pair (error bits, alpha 0.05)."""
    from driftswitch.detectors.sequential import cs_bounds

    first = np.full(runs, np.inf)
    excluded = np.zeros(runs, dtype=bool)
    looks = np.arange(min_samples, horizon + 1)
    n = looks.astype(np.float64)
    chunk = max(1, 2_000_000 // horizon)
    for start in range(0, runs, chunk):
        size = min(chunk, runs - start)
        c = np.cumsum(rng.random((size, horizon)) < q_control, axis=1)[:, looks - 1]
        v = np.cumsum(rng.random((size, horizon)) < q_variant, axis=1)[:, looks - 1]
        c, v = c.astype(np.float64), v.astype(np.float64)
        nn = np.broadcast_to(n, c.shape)
        lower, upper = cs_bounds(nn, c, c, nn, v, v, alpha=0.05)
        harm = upper < 0
        hit = harm.any(axis=1)
        first[start : start + size] = np.where(hit, looks[harm.argmax(axis=1)], np.inf)
        excluded[start : start + size] = ((lower > 0) | harm).any(axis=1)
    return first, excluded


def sequential_table(runs: int, horizon: int, seed: int) -> None:
    """``sequential`` (alpha 0.05, margin 0, N* 5,000): A/A false positives when looking after
    every pair, and events per arm until harm is declared for a worse variant."""
    rng = np.random.default_rng(seed)
    print()
    print(
        f"`sequential`, alpha = 0.05, looked at after every pair up to {horizon:,} pairs, "
        f"{runs:,} seeded runs per row:"
    )
    print()
    print(
        "| control vs variant accuracy | harm declared | interval excluded 0 "
        "| median events per arm to harm |"
    )
    print("|---|---:|---:|---:|")
    for baseline, variant in ((0.90, 0.90), (0.90, 0.85), (0.90, 0.80)):
        first, excluded = _first_harm_pairs(rng, 1 - baseline, 1 - variant, runs, horizon)
        decided = np.isfinite(first)
        median = float(np.median(first)) if decided.mean() > 0.5 else math.inf
        median_txt = f"{median:,.0f}" if math.isfinite(median) else "—"
        print(
            f"| {baseline:.2f} vs {variant:.2f} | {decided.mean():.1%} | {excluded.mean():.1%} "
            f"| {median_txt} |",
            flush=True,
        )


def glr_null_arl(
    q0: float, min_drop: float, arl0: float, alarms: int, seed: int
) -> tuple[float, int, int]:
    """Measured in-control ARL0 of ``glr`` (events / alarms, restart after each alarm) on a
    seeded stream run until ``alarms`` false alarms; returns (ARL0, alarms, events).

    Fast: the statistic of a whole block is computed at once (:func:`glr_path`, vectorised over
    events and windows); after an alarm the block is recomputed from the restart.
    """
    from driftswitch.detectors.binary.glr import glr_calibration, glr_path, glr_windows

    q1 = q0 + min_drop
    h = glr_calibration(q0, q1, arl0)[0]
    windows = glr_windows(q0, q1, arl0)
    rng = np.random.default_rng(seed)
    block = int(min(max(2 * arl0, 50_000), 2_000_000))
    hist = np.zeros(0, dtype=np.int64)
    events = 0
    found = 0
    pending = np.zeros(0, dtype=np.int64)
    while found < alarms:
        if len(pending) == 0:
            pending = (rng.random(block) < q0).astype(np.int64)
        path = glr_path(hist, pending, windows, q0, q1)
        hits = np.flatnonzero(path >= h)
        if len(hits) == 0:
            events += len(pending)
            hist = np.concatenate([hist, pending])[-windows[-1] :]
            pending = pending[:0]
            continue
        end = int(hits[0]) + 1
        events += end
        found += 1
        hist = np.zeros(0, dtype=np.int64)
        pending = pending[end:]
    return events / found, found, events


def _arl_ci(arl: float, alarms: int) -> tuple[float, float]:
    """95 % CI of a mean run length from ``alarms`` (about exponential) run lengths."""
    half = 1.96 / math.sqrt(alarms)
    return arl / (1 + half), arl / max(1 - half, 1e-9)


def cusum_null_arl(
    baseline: float, target: float, arl0: float, alarms: int, seed: int
) -> tuple[float, int, int]:
    """Measured in-control ARL0 of ``cusum`` run until ``alarms`` false alarms (vectorised)."""
    from driftswitch.detectors.binary.cusum import CUSUM

    det = CUSUM(baseline=baseline, target=target, arl0=arl0)
    rng = np.random.default_rng(seed)
    events = 0
    while det.explain()["alarms"] < alarms:
        bits = (rng.random(1_000_000) < 1 - baseline).astype(np.int64)
        det.update_many(bits)
        events += len(bits)
    found = int(det.explain()["alarms"])
    return events / found, found, events


def glr_delay(
    q0: float, min_drop: float, q1: float, arl0: float, runs: int, seed: int
) -> tuple[float, float]:
    """Mean delay (and its standard error) of ``glr`` calibrated for ``arl0`` at reference
    ``q0`` when the error rate is ``q1`` from the first event (a fresh start: the worst case for
    a statistic that starts at 0, as in the optimal delays of :data:`OPTIMAL_DELAY`)."""
    from driftswitch.detectors.binary.glr import glr_calibration, glr_path, glr_windows

    h = glr_calibration(q0, q0 + min_drop, arl0)[0]
    windows = glr_windows(q0, q0 + min_drop, arl0)
    rng = np.random.default_rng(seed)
    found = []
    empty = np.zeros(0, dtype=np.int64)
    for _ in range(runs):
        length = 4000
        while True:
            bits = (rng.random(length) < q1).astype(np.int64)
            hits = np.flatnonzero(glr_path(empty, bits, windows, q0, q0 + min_drop) >= h)
            if len(hits):
                found.append(int(hits[0]) + 1)
                break
            length *= 2
    arr = np.asarray(found, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(len(arr)))


def calibration_table(alarms: int, delay_runs: int, seed: int, budgets: list[float]) -> None:
    """ARL0 measured against requested for ``glr`` (min_drop 0.05 and 0.10) and ``cusum``, with
    fresh-start delays against the optimal ones."""
    print()
    print(
        f"Calibration at baseline 0.90: ARL0 measured over at least {alarms} false alarms "
        "(95 % CI), fresh-start delay over "
        f"{delay_runs} seeded runs (± standard error) against the optimal delay:"
    )
    print()
    print(
        "| detector | requested ARL0 | measured ARL0 (95 % CI) | ratio | alarms | events "
        "| delay 0.90 → 0.85 (optimal) | delay 0.90 → 0.80 (optimal) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arl0 in budgets:
        rows: list[tuple[str, tuple[float, int, int], str, str]] = []
        for md in (0.05, 0.10):
            measured = glr_null_arl(0.10, md, arl0, alarms, seed)
            cells = []
            for q1 in (0.15, 0.20):
                if q1 - 0.10 < md - 1e-9:
                    cells.append("—")
                    continue
                d, se = glr_delay(0.10, md, q1, arl0, delay_runs, seed + 1)
                opt = optimal_delay((0.90, 1 - q1), arl0)
                cells.append(f"{d:.0f} ± {se:.0f} ({opt:.0f})")
            rows.append((f"glr, min_drop {md}", measured, cells[0], cells[1]))
        measured = cusum_null_arl(0.90, 0.80, arl0, alarms, seed)
        rows.append(("cusum 0.90 → 0.80", measured, "—", "—"))
        for name, (arl, found, events), d85, d80 in rows:
            lo, hi = _arl_ci(arl, found)
            print(
                f"| {name} | {arl0:.0e} | {arl:,.0f} ({lo:,.0f}–{hi:,.0f}) | {arl / arl0:.2f} "
                f"| {found} | {events:,} | {d85} | {d80} |",
                flush=True,
            )


def _count_alarms(
    bits: np.ndarray, windows: tuple[int, ...], q0: float, q1: float, h: float, block: int
) -> int:
    """False alarms of ``glr`` over ``bits`` (restart after each), computed ``block`` at a time."""
    from driftswitch.detectors.binary.glr import glr_path

    hist = np.zeros(0, dtype=np.int64)
    alarms, start = 0, 0
    while start < len(bits):
        part = bits[start : start + block]
        hits = np.flatnonzero(glr_path(hist, part, windows, q0, q1) >= h)
        if len(hits) == 0:
            hist = np.concatenate([hist, part])[-windows[-1] :]
            start += len(part)
            continue
        alarms += 1
        hist = hist[:0]
        start += int(hits[0]) + 1
    return alarms


def glr_learned_table(deployments: int, seed: int, events: int = 20_000) -> None:
    """``glr`` (min_drop 0.1, ARL0 1e3) with learned baselines: each deployment learns from its
    own warm-up at accuracy 0.9 and then runs ``events`` in-control events (alarms restart the
    statistic); its false-alarm rate is alarms / events. Mean over deployments relative to the
    budget (95 % CI), corrected (the detector as built) and uncorrected (calibrated at the
    learned rate as if it were exact)."""
    from driftswitch.detectors.binary._bernoulli import learned_error_rate
    from driftswitch.detectors.binary.glr import GLR, glr_calibration, glr_windows

    q0, md, arl0 = 0.10, 0.10, 1e3
    rng = np.random.default_rng(seed)
    print()
    print(
        f"`glr` (min_drop {md}, ARL0 {arl0:,.0f}) with a learned baseline, {deployments:,} seeded "
        f"deployments per row, {events:,} in-control events each:"
    )
    print()
    print(
        "| warm-up | mean false-alarm rate / budget (95 % CI) | same, ignoring the estimation "
        "error |"
    )
    print("|---:|---:|---:|")
    for warmup in (1000, 500):
        errors = rng.binomial(warmup, q0, size=deployments)
        thresholds: dict[int, tuple[float, float]] = {}
        for k in np.unique(errors).tolist():
            det = GLR(min_drop=md, warmup=warmup, arl0=arl0)
            det.update_counts(warmup, k)
            qh = learned_error_rate(k, warmup)
            thresholds[k] = (det.threshold, glr_calibration(qh, qh + md, arl0)[0])
        rates = np.zeros((deployments, 2))
        for i, k in enumerate(errors.tolist()):
            qh = learned_error_rate(k, warmup)
            windows = glr_windows(qh, qh + md, arl0)
            bits = (rng.random(events) < q0).astype(np.int64)
            for j, h in enumerate(thresholds[k]):
                alarms = _count_alarms(bits, windows, qh, qh + md, h, block=4000)
                rates[i, j] = alarms / events * arl0
        cells = []
        for j in range(2):
            mean = rates[:, j].mean()
            half = 1.96 * rates[:, j].std(ddof=1) / math.sqrt(deployments)
            cells.append(f"{mean:.2f}× ({mean - half:.2f}–{mean + half:.2f})")
        print(f"| {warmup:,} | {cells[0]} | {cells[1]} |", flush=True)


def cusum_table(alarms: int, seed: int, budgets: list[float]) -> None:
    """``cusum``'s ARL0 over at least ``alarms`` false alarms (95 % CI) per budget and drop."""
    print()
    print(f"`cusum`, baseline 0.90, ARL0 over at least {alarms} false alarms (95 % CI):")
    print()
    print("| change | requested ARL0 | measured ARL0 (95 % CI) | ratio | alarms | events |")
    print("|---|---:|---:|---:|---:|---:|")
    for arl0 in budgets:
        for target in (0.80, 0.85):
            arl, found, events = cusum_null_arl(0.90, target, arl0, alarms, seed)
            lo, hi = _arl_ci(arl, found)
            print(
                f"| 0.90 → {target:.2f} | {arl0:.0e} | {arl:,.0f} ({lo:,.0f}–{hi:,.0f}) "
                f"| {arl / arl0:.2f} | {found} | {events:,} |",
                flush=True,
            )


def _wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _naive_arl0(q_true: float, errors: int, warmup: int, drop: float, arl0: float) -> float:
    """Real ARL0 of a deployment calibrated as if the learned baseline were exact (the old way)."""
    from driftswitch.detectors.binary._bernoulli import learned_error_rate
    from driftswitch.detectors.binary.cusum import (
        bernoulli_arl,
        bernoulli_lattice,
        bernoulli_threshold,
    )

    q0 = learned_error_rate(errors, warmup)
    up, down = bernoulli_lattice(q0, q0 + drop, arl0)
    return bernoulli_arl(q_true, up, down, bernoulli_threshold(q0, up, down, arl0))


def learned_baseline_table(deployments: int, seed: int) -> None:
    """``cusum`` with a learned baseline: each deployment learns its baseline from its own
    warm-up (errors ~ Binomial(warmup, 0.1)), and its real ARL0 under the true rate comes from
    the exact Markov chain. Mean false-alarm rate relative to the budget (95 % CI over
    deployments) and the share of deployments whose real ARL0 is below half the budget."""
    from driftswitch.detectors.binary.cusum import deployed_arl0

    q0, drop = 0.10, 0.10
    rng = np.random.default_rng(seed)
    print()
    print(
        f"`cusum` (drop {drop}) with a baseline learned over a warm-up at accuracy {1 - q0:.2f}, "
        f"{deployments:,} seeded deployments per row (real ARL0 of each from the exact chain):"
    )
    print()
    print(
        "| warm-up | requested ARL0 | mean false-alarm rate / budget (95 % CI) "
        "| real ARL0 < half the budget | same, ignoring the estimation error |"
    )
    print("|---:|---:|---:|---:|---:|")
    for warmup, arl0 in ((1000, 1e4), (500, 1e4), (1000, 1e5), (500, 1e5)):
        errors = rng.binomial(warmup, q0, size=deployments)
        rows = {}
        for k in np.unique(errors).tolist():
            rows[k] = (
                arl0 / deployed_arl0(q0, k, warmup, drop, arl0),
                arl0 / _naive_arl0(q0, k, warmup, drop, arl0),
            )
        ratio = np.array([rows[k][0] for k in errors.tolist()])
        naive = np.array([rows[k][1] for k in errors.tolist()])
        half = 1.96 * ratio.std(ddof=1) / math.sqrt(deployments)
        low, high = _wilson(int(np.count_nonzero(ratio > 2)), deployments)
        n_half = 1.96 * naive.std(ddof=1) / math.sqrt(deployments)
        print(
            f"| {warmup:,} | {arl0:.0e} | {ratio.mean():.2f}× ({ratio.mean() - half:.2f}–"
            f"{ratio.mean() + half:.2f}) | {np.mean(ratio > 2):.1%} ({low:.1%}–{high:.1%}) "
            f"| {naive.mean():.2f}× ± {n_half:.2f}, {np.mean(naive > 2):.1%} below half |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="change runs per cell")
    parser.add_argument("--null-events", type=int, default=2_000_000, help="in-control events")
    parser.add_argument("--pre", type=int, default=2000, help="in-control events before the change")
    parser.add_argument("--horizon", type=int, default=20_000, help="events after the change")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seq-runs", type=int, default=2000, help="sequential runs per row")
    parser.add_argument("--seq-horizon", type=int, default=10_000, help="sequential pairs per run")
    parser.add_argument(
        "--deployments", type=int, default=1000, help="learned-baseline deployments per row"
    )
    parser.add_argument("--alarms", type=int, default=100, help="false alarms per ARL0 estimate")
    parser.add_argument("--delay-runs", type=int, default=200, help="delay runs per GLR cell")
    parser.add_argument(
        "--budgets", default="1e4,1e5,1e6", help="ARL0s of the calibration table (comma list)"
    )
    parser.add_argument("--learned-only", action="store_true", help="only the learned baselines")
    parser.add_argument("--calibration-only", action="store_true", help="only the calibration")
    parser.add_argument("--cusum-only", action="store_true", help="only the cusum ARL0 table")
    parser.add_argument(
        "--delays-only", action="store_true", help="only the delay and sequential tables"
    )
    args = parser.parse_args()
    if args.cusum_only:
        cusum_table(args.alarms, args.seed, [float(b) for b in args.budgets.split(",")])
        return
    if args.learned_only or args.calibration_only:
        if args.calibration_only:
            budgets = [float(b) for b in args.budgets.split(",")]
            calibration_table(args.alarms, args.delay_runs, args.seed, budgets)
        if args.learned_only:
            learned_baseline_table(args.deployments, args.seed)
            glr_learned_table(max(500, args.deployments // 2), args.seed)
        return

    known = set(registry.kinds())
    print(
        "| change | requested ARL0 | detector | measured ARL0 | false alarms / 10k | mean delay "
        "| misses | optimal delay at measured ARL0 | ratio |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for baseline, target in ((0.90, 0.80), (0.90, 0.85)):
        q0, q1 = 1 - baseline, 1 - target
        for arl0 in (1e4, 1e5):
            specs: list[tuple[str, dict[str, Any]]] = [
                ("cusum", {"baseline": baseline, "target": target, "arl0": arl0}),
                ("glr", {"baseline": baseline, "min_drop": 0.05, "arl0": arl0}),
            ]
            specs += [(k, {}) for k in ("adwin", "page_hinkley") if k in known]
            for kind, params in specs:

                def make(kind: str = kind, params: dict[str, Any] = params) -> Any:
                    return registry.create({"kind": kind, **params})

                arl, fa = null_arl(make, q0, args.null_events, args.seed)
                delay, misses = delays(
                    make, q0, q1, args.runs, args.pre, args.horizon, args.seed + 1
                )
                opt = optimal_delay((baseline, target), arl) if math.isfinite(arl) else math.nan
                ratio = delay / opt if math.isfinite(opt) else math.nan
                arl_txt = f"{arl:,.0f}" if math.isfinite(arl) else f"> {args.null_events:,}"
                opt_txt = f"{opt:.0f}" if math.isfinite(opt) else "—"
                ratio_txt = f"{ratio:.2f}" if math.isfinite(ratio) else "—"
                print(
                    f"| {baseline:.2f} → {target:.2f} | {arl0:.0e} | {kind} | {arl_txt} | {fa:.2f} "
                    f"| {delay:.1f} | {misses}/{args.runs} | {opt_txt} | {ratio_txt} |",
                    flush=True,
                )
    sequential_table(args.seq_runs, args.seq_horizon, args.seed)
    if args.delays_only:
        return
    calibration_table(
        args.alarms, args.delay_runs, args.seed, [float(b) for b in args.budgets.split(",")]
    )
    learned_baseline_table(args.deployments, args.seed)
    glr_learned_table(max(500, args.deployments // 2), args.seed)


if __name__ == "__main__":
    main()
