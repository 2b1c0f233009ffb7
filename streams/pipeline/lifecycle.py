"""Flag debt: which flags are expired or stale, from the config and the flags' histories.

Pure: the caller reads the flags topic (every change of a flag, oldest first) and, for traffic,
the newest event time seen per flag (the worker's engine statistics). Four findings:

- ``expired``: the config's ``expires`` date has passed (UTC).
- ``fully_rolled_out``: a ``temporary`` flag has served one variant at 100 % for more than
  ``days`` days: the release is done, the flag should go.
- ``no_traffic``: no prediction for the flag in ``days`` days (or none ever, for a flag created
  more than ``days`` days ago).

A change stamped at time 0 (a worker's version 1 from the config, made before any event) has no
known time: the checks that count days from it skip it rather than guess.
- ``killed``: a variant has been killed for more than ``days`` days, never restored (nobody
  decided what to do with it).

``expired`` feeds ``driftswitch_flag_expired``; the other three ``driftswitch_flag_stale``
(label ``reason``), in :mod:`driftswitch.streams.service.metrics`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.events import FlagChangeEvent

__all__ = ["DEFAULT_DAYS", "KINDS", "STALE_KINDS", "Finding", "findings", "full_variant"]

#: Days after which a fully rolled-out temporary flag, or a flag without traffic, is stale.
DEFAULT_DAYS = 14.0
KINDS = ("expired", "fully_rolled_out", "no_traffic", "killed")
STALE_KINDS = ("fully_rolled_out", "no_traffic", "killed")
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason a flag needs attention."""

    flag: str
    kind: str
    detail: str
    owner: str | None
    #: Unix time the condition started, when known.
    since: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def full_variant(state: FlagChangeEvent) -> str | None:
    """The variant serving everyone (weight 100, not killed), if there is one."""
    for name, v in state.variants.items():
        if v.weight == 100 and not v.killed:
            return name
    return None


def _days(seconds: float) -> str:
    return f"{seconds / _DAY:.1f} days"


def findings(
    config: Config,
    histories: Mapping[str, Sequence[FlagChangeEvent]],
    last_traffic: Mapping[str, float | None] | None,
    now: float,
    days: float = DEFAULT_DAYS,
) -> list[Finding]:
    """Every finding for the config's flags, in config order then :data:`KINDS` order.

    ``histories`` holds each flag's changes oldest first (its last one is the current state; a
    flag with none is skipped for the state checks). ``last_traffic`` maps a flag to the newest
    prediction's event time (None: none seen); ``None`` as a whole means traffic is unknown, and
    ``no_traffic`` is not checked.
    """
    out: list[Finding] = []
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    limit = days * _DAY
    for name, flag in config.flags.items():
        owner = flag.owner
        if flag.expires is not None and flag.expires < today:
            since = dt.datetime.combine(flag.expires, dt.time(), dt.UTC).timestamp() + _DAY
            out.append(
                Finding(name, "expired", f"expired on {flag.expires.isoformat()}", owner, since)
            )
        history = list(histories.get(name, ()))
        if not history:
            continue
        state = history[-1]
        full = full_variant(state)
        if flag.temporary and full is not None:
            since = state.ts
            for change in reversed(history):  # back to the start of the current 100 % run
                if full_variant(change) != full:
                    break
                since = change.ts
            if since > 0 and now - since > limit:
                out.append(
                    Finding(
                        name,
                        "fully_rolled_out",
                        f"temporary flag serving {full} to everyone for {_days(now - since)}",
                        owner,
                        since,
                    )
                )
        if last_traffic is not None:
            last = last_traffic.get(name)
            created = history[0].ts
            if last is None and created > 0 and now - created > limit:
                out.append(
                    Finding(
                        name,
                        "no_traffic",
                        f"no prediction seen since it was created {_days(now - created)} ago",
                        owner,
                        created,
                    )
                )
            elif last is not None and now - last > limit:
                out.append(
                    Finding(
                        name, "no_traffic", f"no prediction for {_days(now - last)}", owner, last
                    )
                )
        for vname, v in state.variants.items():
            if not v.killed:
                continue
            since = state.ts
            for change in reversed(history):  # back to the kill
                cv = change.variants.get(vname)
                if cv is None or not cv.killed:
                    break
                since = change.ts
            if since <= 0 or now - since <= limit:
                continue
            out.append(
                Finding(
                    name,
                    "killed",
                    f"variant {vname} killed {_days(now - since)} ago, never restored",
                    owner,
                    since,
                )
            )
    return out
