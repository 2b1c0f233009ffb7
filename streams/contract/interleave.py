"""Team-draft interleaving: merge rankers' lists into one, and credit clicks to the rankers.

Team-draft interleaving (Radlinski, Kurup & Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008) builds the shown list like captains picking teams: in each round the ranker
with fewer picks so far (a coin flip when even) adds its highest-ranked item not yet shown, and
that position belongs to its team. A click credits the team that placed the clicked item; per
impression the ranker with more credited clicks wins, equal credit (no clicks included) is a tie.
With more than two rankers the same rule is team-draft multileaving (Schuth et al., CIKM 2014):
among the rankers with the fewest picks, one is drawn at random.

Duplicates across the lists are the point of the method: an item both rankers rank is shown once,
credited to the team that placed it first. The merge stops at ``k`` items or when a ranker on
turn has nothing left to add (the original algorithm; a ranker with a longer list gains no extra
positions).

The random draws come from a generator seeded with ``sha256(flag, request_id)``, so the producer,
the worker and ``driftswitch backtest`` all recompute the same list from the same inputs
(:func:`team_draft` is a pure function; Python's ``random.Random`` keeps its sequence for an
integer seed across versions).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Credit", "credit", "seed", "team_draft"]


def seed(flag: str, request_id: str) -> int:
    """The integer seed of one impression's draws: the first 8 bytes of sha256(flag, NUL, id)."""
    digest = hashlib.sha256(f"{flag}\0{request_id}".encode(errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def team_draft(
    rankings: Mapping[str, Sequence[str]], k: int, *, flag: str, request_id: str
) -> list[tuple[str, str]]:
    """The interleaved list as ``(item, team)`` pairs, at most ``k`` long.

    ``rankings`` maps each team (variant) to its ranked item ids, best first; the teams take turns
    in the order described in the module docstring, the draws seeded from ``flag`` and
    ``request_id``. Duplicate ids inside one ranking count once.

    >>> team_draft({"a": ["x", "y", "z"], "b": ["y", "w", "x"]}, 4, flag="f", request_id="r1")
    [('y', 'b'), ('x', 'a'), ('w', 'b'), ('z', 'a')]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not rankings:
        raise ValueError("rankings must name at least one team")
    rng = random.Random(seed(flag, request_id))
    teams = sorted(rankings)  # the draw must not depend on the caller's dict order
    lists = {t: list(rankings[t]) for t in teams}
    cursor = dict.fromkeys(teams, 0)
    picks = dict.fromkeys(teams, 0)
    shown: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < k:
        fewest = min(picks.values())
        turn = [t for t in teams if picks[t] == fewest]
        team = turn[0] if len(turn) == 1 else turn[int(rng.random() * len(turn))]
        items, i = lists[team], cursor[team]
        while i < len(items) and items[i] in shown:
            i += 1
        if i == len(items):
            break  # the ranker on turn is exhausted
        cursor[team] = i + 1
        picks[team] += 1
        shown.add(items[i])
        out.append((items[i], team))
    return out


@dataclass(frozen=True, slots=True)
class Credit:
    """Clicks credited per team for one impression, or why the clicks do not fit it."""

    clicks: dict[str, int]
    #: Set when a click names an item or position the impression did not show.
    error: str | None = None

    def outcome(self, team: str, other: str) -> float | None:
        """``0.0`` if ``team`` won against ``other``, ``1.0`` if it lost, ``0.5`` for a tie;
        None when either team placed nothing in the impression (it does not compare them)."""
        a, b = self.clicks.get(team), self.clicks.get(other)
        if a is None or b is None:
            return None
        return 0.0 if a > b else 1.0 if a < b else 0.5


def credit(
    ranking: Sequence[tuple[str, str]] | Sequence[Sequence[str]],
    items: Iterable[str] = (),
    positions: Iterable[int] = (),
) -> Credit:
    """Credit clicks (item ids and/or 0-based positions) to the teams of ``ranking``.

    Every team present in the impression gets an entry (0 without clicks). A click counted twice
    (by id and by position, or repeated) counts once. A click on an item or position that was not
    shown is an error: the clicks then belong to another impression or a buggy producer.
    """
    team_of: dict[str, str] = {}
    clicks: dict[str, int] = {}
    for item, team in ranking:
        team_of[item] = team
        clicks[team] = 0
    clicked: set[str] = set()
    for item in items:
        if item not in team_of:
            return Credit(clicks, f"clicked item {item!r} was not shown")
        clicked.add(item)
    for pos in positions:
        if not 0 <= pos < len(ranking):
            return Credit(clicks, f"clicked position {pos} was not shown ({len(ranking)} shown)")
        clicked.add(ranking[pos][0])
    for item in clicked:
        clicks[team_of[item]] += 1
    return Credit(clicks)
