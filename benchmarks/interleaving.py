"""Impressions to decide: team-draft interleaving against an A/B test on click-through.

Users are simulated with a position-based click model (Craswell et al. 2008; Chuklin, Markov &
de Rijke, "Click Models for Web Search", 2015) over graded relevance fixed by a seed:

- ``--queries`` queries, each with 40 documents graded 0–4 (probabilities 0.55, 0.25, 0.12, 0.06,
  0.02);
- a ranker scores a document as its grade plus Gaussian noise (fixed per ranker, query and
  document) and shows the top ``k = 10``. Control's noise has standard deviation
  ``--control-noise``; the candidate adds ``--extra-noise`` of its own, so it is slightly worse,
  by the nDCG@10 and click-through gaps printed for each scenario. Two scenarios: a *revision*
  (the candidate is control's scores plus the extra noise: the two lists mostly agree, as for a
  retrained model) and *unrelated* rankers (independent noise of the same total size: the lists
  differ everywhere);
- a user examines position ``r`` (0-based) with probability ``1/(r + 1)`` and clicks an examined
  document of grade ``g`` with probability ``0.05 + 0.9 (2^g − 1)/15``, independently per position.

Interleaving: every impression shows the team-draft list of both rankers
(:func:`driftswitch.streams.contract.interleave.team_draft`, the function the client calls; all
2^5 coin patterns of ``k = 10`` are enumerated per query from real request ids), and is a win,
loss or tie for the candidate with the exact probabilities the click model gives for that list.
The test is the ``interleaving`` detector (beta-binomial mixture confidence sequence on the win
probability), checked after every impression; ``--check`` replays runs through the detector
itself and compares decision times.

A/B: every impression shows one ranker's list (50/50); the metric is click-through (at least one
click), compared by the ``sequential`` detector's asymptotic confidence sequence (``cs_bounds``,
``method: asymptotic``), checked after every impression, with 30 impressions per arm before any
decision.

Both at the same α, two-sided: a run decides when the interval on the difference (A/B) or on the
win probability (interleaving) excludes "no difference"; deciding for the worse ranker is a wrong
decision. A/A runs give both arms the same ranker and count any decision as a false positive.
Runs undecided within the horizon count at the horizon in the percentiles (and are reported).

Run: ``.venv/bin/python benchmarks/interleaving.py [--runs 500] [--aa-runs 1000] [--check]``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.interleaving import Interleaving, prior_a
from driftswitch.detectors.sequential import cs_bounds
from driftswitch.streams.contract.interleave import team_draft

F = npt.NDArray[np.float64]
I = npt.NDArray[np.int64]  # noqa: E741

K = 10
DOCS = 40
GRADE_P = (0.55, 0.25, 0.12, 0.06, 0.02)
EXAMINE = 1.0 / (np.arange(K) + 1.0)


def attraction(grade: npt.NDArray[np.int64]) -> F:
    """Click probability of an examined document of ``grade``."""
    return 0.05 + 0.9 * (2.0**grade - 1.0) / 15.0


@dataclass
class World:
    """Queries, grades and both rankers' top-k lists, all from one seed."""

    grades: I  # (queries, docs)
    control: I  # (queries, K) doc indices
    candidate: I

    @classmethod
    def build(
        cls, queries: int, control_noise: float, extra_noise: float, *, revision: bool, seed: int
    ) -> World:
        rng = np.random.default_rng(seed)
        grades = rng.choice(len(GRADE_P), size=(queries, DOCS), p=GRADE_P)
        base, own = rng.standard_normal((2, queries, DOCS))
        control = grades + control_noise * base
        if revision:
            candidate = control + extra_noise * own
        else:
            candidate = grades + math.hypot(control_noise, extra_noise) * own
        tops = [np.argsort(-scores, axis=1)[:, :K] for scores in (control, candidate)]
        return cls(grades, tops[0], tops[1])

    def ndcg(self, top: I) -> float:
        gains = 2.0 ** np.take_along_axis(self.grades, top, axis=1) - 1.0
        discount = 1.0 / np.log2(np.arange(K) + 2.0)
        best = -np.sort(-self.grades, axis=1)[:, :K]  # grades in decreasing order
        ideal = 2.0**best - 1.0
        return float(
            np.mean((gains * discount).sum(1) / np.maximum((ideal * discount).sum(1), 1e-12))
        )

    def ctr(self, top: I) -> F:
        """P(at least one click) per query for a list."""
        c = EXAMINE * attraction(np.take_along_axis(self.grades, top, axis=1))
        result: F = 1.0 - np.prod(1.0 - c, axis=1)
        return result


def interleaving_outcomes(world: World, candidate: I, seed_prefix: str) -> tuple[F, F]:
    """Per (query, coin pattern): P(candidate wins), P(candidate loses), from the click model."""
    queries = world.grades.shape[0]
    p_win = np.zeros((queries, 2 ** (K // 2)))
    p_loss = np.zeros_like(p_win)
    for q in range(queries):
        lists = {
            "control": [str(d) for d in world.control[q]],
            "candidate": [str(d) for d in candidate[q]],
        }
        patterns: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        j = 0
        while len(patterns) < p_win.shape[1] and j < 100_000:
            merged = team_draft(lists, K, flag="search", request_id=f"{seed_prefix}{q}-{j}")
            patterns.setdefault(tuple(t for _, t in merged), merged)
            j += 1
        for i, merged in enumerate(patterns.values()):
            grades = np.array([world.grades[q, int(item)] for item, _ in merged])
            clicks = EXAMINE[: len(merged)] * attraction(grades)
            # Distribution of (candidate clicks − control clicks), position by position.
            dist = np.zeros(2 * K + 1)
            dist[K] = 1.0
            for (_, team), c in zip(merged, clicks, strict=True):
                step = 1 if team == "candidate" else -1
                dist = dist * (1.0 - c) + np.roll(dist, step) * c
            p_win[q, i] = dist[K + 1 :].sum()
            p_loss[q, i] = dist[:K].sum()
    return p_win, p_loss


@dataclass
class Outcome:
    """Impressions to decide (horizon if undecided), and the decision's direction."""

    n: I
    decided: npt.NDArray[np.bool_]
    candidate_better: npt.NDArray[np.bool_]


def run_interleaving(
    p_win: F,
    p_loss: F,
    runs: int,
    horizon: int,
    *,
    alpha: float,
    tuning_n: int,
    min_samples: int,
    seed: int,
    chunk: int = 1024,
    keep: bool = False,
) -> tuple[Outcome, list[F]]:
    """Simulate ``runs`` interleaving experiments in parallel, checked after every impression.

    ``ln M_n(½)`` is accumulated as the running sum of the beta posterior's predictive ratios
    (equal to the detector's closed form; ``tests/unit/test_interleaving.py`` checks the
    identity). With ``keep``, the per-impression outcomes (0 win, 1 loss, 0.5 tie) of each run
    are returned too, for ``--check``.
    """
    rng = np.random.default_rng(seed)
    a = prior_a(alpha, tuning_n)
    bound = -math.log(alpha)
    queries, patterns = p_win.shape
    active = np.arange(runs)
    wins = np.zeros(runs)
    losses = np.zeros(runs)
    log_m = np.zeros(runs)
    n_done = np.full(runs, horizon, dtype=np.int64)
    decided = np.zeros(runs, dtype=bool)
    better = np.zeros(runs, dtype=bool)
    kept: list[list[F]] = [[] for _ in range(runs)] if keep else []
    t0 = 0
    while active.size and t0 < horizon:
        c = min(chunk, horizon - t0)
        q = rng.integers(queries, size=(active.size, c))
        pat = rng.integers(patterns, size=(active.size, c))
        u = rng.random((active.size, c))
        pw, pl = p_win[q, pat], p_loss[q, pat]
        win = u < pw
        loss = (u >= pw) & (u < pw + pl)
        if keep:
            for r, row in zip(active, np.where(win, 0.0, np.where(loss, 1.0, 0.5)), strict=True):
                kept[r].append(row)
        w_cum = wins[active, None] + np.cumsum(win, axis=1)
        l_cum = losses[active, None] + np.cumsum(loss, axis=1)
        w_prev, l_prev = w_cum - win, l_cum - loss
        n_prev = w_prev + l_prev
        step = np.where(
            win,
            np.log((a + w_prev) / (2 * a + n_prev)) + math.log(2.0),
            np.where(loss, np.log((a + l_prev) / (2 * a + n_prev)) + math.log(2.0), 0.0),
        )
        m_cum = log_m[active, None] + np.cumsum(step, axis=1)
        seen = t0 + np.arange(1, c + 1)
        hit = (m_cum >= bound) & (seen >= min_samples)[None, :]
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
        stop = first >= 0
        idx = active[stop]
        n_done[idx] = t0 + first[stop] + 1
        decided[idx] = True
        better[idx] = w_cum[stop, first[stop]] > l_cum[stop, first[stop]]
        wins[active], losses[active], log_m[active] = w_cum[:, -1], l_cum[:, -1], m_cum[:, -1]
        active = active[~stop]
        t0 += c
    return Outcome(n_done, decided, better), [np.concatenate(k) for k in kept]


def run_ab(
    ctr_control: F,
    ctr_candidate: F,
    runs: int,
    horizon: int,
    *,
    alpha: float,
    tuning_n: int,
    min_samples: int,
    seed: int,
    chunk: int = 2048,
) -> Outcome:
    """Simulate ``runs`` A/B tests on click-through in parallel, checked after every impression."""
    rng = np.random.default_rng(seed)
    queries = ctr_control.shape[0]
    ctr = np.stack([ctr_control, ctr_candidate])  # (arm, query)
    active = np.arange(runs)
    n = np.zeros((2, runs))
    s = np.zeros((2, runs))
    n_done = np.full(runs, horizon, dtype=np.int64)
    decided = np.zeros(runs, dtype=bool)
    better = np.zeros(runs, dtype=bool)
    t0 = 0
    while active.size and t0 < horizon:
        c = min(chunk, horizon - t0)
        arm = rng.integers(2, size=(active.size, c))
        q = rng.integers(queries, size=(active.size, c))
        click = rng.random((active.size, c)) < ctr[arm, q]
        cand = arm == 1
        n_v = n[1, active, None] + np.cumsum(cand, axis=1)
        n_c = n[0, active, None] + np.cumsum(~cand, axis=1)
        s_v = s[1, active, None] + np.cumsum(click & cand, axis=1)
        s_c = s[0, active, None] + np.cumsum(click & ~cand, axis=1)
        ok = (n_c >= min_samples) & (n_v >= min_samples)
        with np.errstate(divide="ignore", invalid="ignore"):
            lower, upper = cs_bounds(
                n_c, s_c, s_c, n_v, s_v, s_v, alpha=alpha, tuning_n=tuning_n, higher_is_better=True
            )
        hit = ok & ((lower > 0) | (upper < 0))
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
        stop = first >= 0
        idx = active[stop]
        n_done[idx] = t0 + first[stop] + 1
        decided[idx] = True
        better[idx] = lower[stop, first[stop]] > 0
        n[1, active], n[0, active] = n_v[:, -1], n_c[:, -1]
        s[1, active], s[0, active] = s_v[:, -1], s_c[:, -1]
        active = active[~stop]
        t0 += c
    return Outcome(n_done, decided, better)


def write_events(world: World, path: str, impressions: int, seed: int) -> None:
    """A JSON Lines file of interleaved impressions and their clicks (the example for
    ``driftswitch backtest --config examples/interleaving.yaml``): the impressions of the flag
    ``search``'s candidate users, clicks drawn position by position from the click model."""
    import orjson

    rng = np.random.default_rng(seed)
    t0 = 1_767_225_600.0
    with open(path, "wb") as out:
        for written in range(impressions):
            q = int(rng.integers(world.grades.shape[0]))
            rid, ts = f"q{written}", round(t0 + 0.1 * written, 3)
            lists = {
                "control": [f"doc-{q}-{d}" for d in world.control[q]],
                "candidate": [f"doc-{q}-{d}" for d in world.candidate[q]],
            }
            merged = team_draft(lists, K, flag="search", request_id=rid)
            grades = np.array([world.grades[q, int(item.rsplit("-", 1)[1])] for item, _ in merged])
            clicked = rng.random(len(merged)) < EXAMINE[: len(merged)] * attraction(grades)
            ranking = [{"item": item, "team": team} for item, team in merged]
            impression = {"kind": "prediction", "request_id": rid, "flag": "search"}
            impression |= {"variant": "candidate", "ts": ts, "ranking": ranking}
            clicks = [item for (item, _), c in zip(merged, clicked, strict=True) if c]
            outcome = {"kind": "outcome", "request_id": rid, "ts": ts + 5.0, "clicks": clicks}
            out.write(orjson.dumps(impression) + b"\n" + orjson.dumps(outcome) + b"\n")


def check(p_win: F, p_loss: F, args: argparse.Namespace) -> None:
    """Replay a few simulated runs through the ``interleaving`` detector: same decision time."""
    out, kept = run_interleaving(
        p_win,
        p_loss,
        20,
        args.il_horizon,
        alpha=args.alpha,
        tuning_n=args.il_tuning_n,
        min_samples=args.min_samples,
        seed=99,
        keep=True,
    )
    for r, xs in enumerate(kept):
        det = Interleaving(alpha=args.alpha, tuning_n=args.il_tuning_n)
        at = args.il_horizon
        for i, x in enumerate(xs[: out.n[r]]):
            det.update(float(x))
            if i + 1 >= args.min_samples and (det.harm or det.superior):
                at = i + 1
                break
        assert at == out.n[r], (r, at, out.n[r])
    print("check: 20 runs replayed through the detector decide at the same impression\n")


def row(name: str, out: Outcome, worse_is_candidate: bool = True) -> str:
    wrong = out.decided & (out.candidate_better == worse_is_candidate)
    return (
        f"| {name} | {np.median(out.n):,.0f} | {np.percentile(out.n, 90):,.0f} | "
        f"{wrong.sum() / len(out.n):.2%} | {(~out.decided).sum()} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--aa-runs", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--control-noise", type=float, default=1.0)
    parser.add_argument("--extra-noise", type=float, default=0.5)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--il-tuning-n", type=int, default=3000)
    parser.add_argument("--ab-tuning-n", type=int, default=30_000)
    parser.add_argument("--min-samples", type=int, default=100)
    parser.add_argument("--il-horizon", type=int, default=100_000)
    parser.add_argument("--ab-horizon", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true")
    parser.add_argument(
        "--write-events",
        metavar="PATH",
        help="only write an example events file (the revision scenario) and exit",
    )
    args = parser.parse_args()
    if args.write_events:
        world = World.build(
            args.queries, args.control_noise, args.extra_noise, revision=True, seed=args.seed
        )
        write_events(world, args.write_events, impressions=2000, seed=args.seed)
        return

    started = time.perf_counter()
    print(
        f"{args.queries} queries x {DOCS} documents (seed {args.seed}); control noise "
        f"{args.control_noise}, candidate extra noise {args.extra_noise}; alpha {args.alpha} "
        f"(two-sided), looked at after every impression; {args.runs} runs per test\n"
        f"interleaving: detector `interleaving`, tuning_n {args.il_tuning_n}, min_samples "
        f"{args.min_samples}; A/B: `sequential` cs_bounds on click-through, tuning_n "
        f"{args.ab_tuning_n}, 30 impressions per arm"
    )
    common = {"alpha": args.alpha, "min_samples": args.min_samples}
    ab_common = {"alpha": args.alpha, "min_samples": 30, "tuning_n": args.ab_tuning_n}
    worst = {"il": 0, "ab": 0}
    world = World.build(args.queries, args.control_noise, 0.0, revision=True, seed=args.seed)
    for scenario, revision in (("revision", True), ("unrelated rankers", False)):
        world = World.build(
            args.queries, args.control_noise, args.extra_noise, revision=revision, seed=args.seed
        )
        ctr_c, ctr_v = world.ctr(world.control), world.ctr(world.candidate)
        p_win, p_loss = interleaving_outcomes(world, world.candidate, "q")
        pw, pl = p_win.mean(), p_loss.mean()
        print(
            f"\n## {scenario}\n\nnDCG@10 control {world.ndcg(world.control):.4f}, candidate "
            f"{world.ndcg(world.candidate):.4f}; click-through control {ctr_c.mean():.4f}, "
            f"candidate {ctr_v.mean():.4f} ({ctr_v.mean() - ctr_c.mean():+.4f}); interleaved, "
            f"the candidate wins {pw:.4f}, loses {pl:.4f}, ties {1 - pw - pl:.4f} of impressions "
            f"(win probability among non-tied {pw / (pw + pl):.4f})\n"
        )
        if args.check:
            check(p_win, p_loss, args)
        il = run_interleaving(
            p_win, p_loss, args.runs, args.il_horizon, tuning_n=args.il_tuning_n, seed=1, **common
        )[0]
        ab = run_ab(ctr_c, ctr_v, args.runs, args.ab_horizon, seed=3, **ab_common)
        print("| test | median impressions | p90 impressions | wrong decisions | undecided |")
        print("|---|---|---|---|---|")
        print(row("interleaving", il))
        print(row("A/B on click-through", ab))
        ratio = np.median(ab.n) / np.median(il.n)
        ratio90 = np.percentile(ab.n, 90) / np.percentile(il.n, 90)
        print(
            f"\nA/B needs {ratio:.1f}x the impressions of interleaving (median), "
            f"{ratio90:.1f}x (p90)"
        )
        worst["il"] = max(worst["il"], int(np.percentile(il.n, 90)))
        worst["ab"] = max(worst["ab"], int(np.percentile(ab.n, 90)))

    # A/A: both arms are control. Looked at after every impression for 5x the largest p90
    # impressions-to-decide above (capped by the horizons).
    aa_il_horizon = min(5 * worst["il"], args.il_horizon)
    aa_ab_horizon = min(5 * worst["ab"], args.ab_horizon)
    ctr_c = world.ctr(world.control)
    aa_win, aa_loss = interleaving_outcomes(world, world.control, "aa")
    il_aa = run_interleaving(
        aa_win, aa_loss, args.aa_runs, aa_il_horizon, tuning_n=args.il_tuning_n, seed=2, **common
    )[0]
    ab_aa = run_ab(ctr_c, ctr_c, args.aa_runs, aa_ab_horizon, seed=4, **ab_common)
    print(
        f"\n## A/A ({args.aa_runs} runs each, both arms control)\n\n"
        f"false positives (any decision): interleaving {il_aa.decided.mean():.2%} within "
        f"{aa_il_horizon:,} impressions; A/B {ab_aa.decided.mean():.2%} within "
        f"{aa_ab_horizon:,} impressions (alpha {args.alpha})"
    )
    print(f"\nsimulated in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
