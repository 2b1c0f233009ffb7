"""What a guardrail's false-alarm budget means in time, at a given traffic.

Every detector with an ``arl0`` raises, on an unchanged model, on average one false alarm per
``arl0`` events that reach it. At ``rate`` such events per second that is one false alarm every
``T = arl0 / rate`` seconds on average, and the false alarms of a long-running guardrail form a
renewal process, close to a Poisson one when ``arl0`` is large: the chance of at least one within
a period ``t`` is ``1 − exp(−t / T)`` (63 % within ``T`` itself — an ARL0 is not a guarantee of
quiet for ``T``). Read backwards, a budget stated as a duration (``false_alarm_every: 90d``) at an
expected traffic (``expected_rate: 40/s``) is ``arl0 = 90 days · 40/s``.

Comparisons (``sequential``) have no rate: their ``alpha`` is the probability of declaring harm
at least once over the whole comparison when the variants are equally good, however long it runs
and however often it is looked at.

Used by ``driftswitch validate --explain``, by the config (``false_alarm_every``) and by the flag
status of the HTTP API. Pure computation, no I/O.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

__all__ = [
    "DAY",
    "arl0_for",
    "describe",
    "explain",
    "format_duration",
    "observed_rate",
    "parse_rate",
    "within",
]

DAY = 86_400.0

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*(?:/\s*(ms|s|m|h|d))?\s*$")
_PER = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, None: 1.0}
#: Periods for which ``explain`` gives the chance of at least one false alarm.
PERIODS = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY}


def parse_rate(value: object) -> float:
    """Events per second from a number (per second) or ``"40/s"``, ``"2400/m"``, ``"1e6/d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a rate such as 40/s, 2400/m, 100000/d or events per second")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str) and (m := _RATE.match(value)):
        rate = float(m.group(1)) / _PER[m.group(2)]
    else:
        raise ValueError(
            f"expected a rate such as 40/s, 2400/m, 100000/d or events per second, got {value!r}"
        )
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"a rate must be a positive number of events per second, got {value!r}")
    return rate


def arl0_for(every_s: float, rate: float) -> float:
    """The ``arl0`` (events) giving one false alarm per ``every_s`` seconds at ``rate`` events/s."""
    if not (every_s > 0 and rate > 0):
        raise ValueError("false_alarm_every and the rate must both be positive")
    return every_s * rate


def within(t_s: float, mean_s: float) -> float:
    """Chance of at least one false alarm within ``t_s`` seconds, one per ``mean_s`` on average."""
    if mean_s <= 0:
        return 1.0
    return -math.expm1(-t_s / mean_s)


def observed_rate(count: int, first_ts: float | None, last_ts: float | None) -> float | None:
    """Events per second from ``count`` events seen between event times ``first_ts`` and
    ``last_ts`` (seconds); ``None`` until there are two events at distinct times."""
    if count < 2 or first_ts is None or last_ts is None or not last_ts > first_ts:
        return None
    return (count - 1) / (last_ts - first_ts)


def _pct(p: float) -> str:
    if p >= 0.9995:
        return "> 99.9 %"
    if p < 0.001:
        return "< 0.1 %"
    # "63 %", as "> 99.9 %" above and the documentation write it (not Python's "63%").
    return f"{100 * p:.1f} %" if p < 0.1 else f"{100 * p:.0f} %"


def format_duration(seconds: float) -> str:
    """A readable duration: ``"42 s"``, ``"18 min"``, ``"5.2 h"``, ``"29 days"``, ``"3 years"``."""
    if not math.isfinite(seconds):
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    if seconds < 730 * DAY:
        days = seconds / DAY
        return f"{days:.0f} days" if days >= 10 else f"{days:.1f} days"
    return f"{seconds / (365.25 * DAY):.1f} years"


def _format_rate(rate: float) -> str:
    if rate >= 1:
        return f"{rate:g} events/s"
    if rate * 3600 >= 1:
        return f"{rate * 3600:.3g} events/h"
    return f"{rate * DAY:.3g} events/day"


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A detector spec (``{"kind": ..., **params}``) with the detector's defaults filled in."""
    if "kind" not in spec:
        return spec
    from driftswitch.detectors import registry

    try:
        defaults = {
            name: p.default
            for name, p in registry.parameters(spec["kind"]).items()
            if p.default is not inspect.Parameter.empty
        }
    except ValueError:
        return spec
    return {**defaults, **spec}


def explain(
    params: dict[str, Any], *, rate: float | None, rate_source: str = "observed"
) -> dict[str, Any]:
    """The budget of a detector spec or ``params`` (defaults filled in from the registry when
    ``params`` has a ``kind``) in plain data, in time when ``rate`` is known.

    Keys: ``budget`` (``"arl0"``, ``"alpha"`` or ``"none"``), ``arl0``/``alpha``, and with an
    ``arl0`` and a rate: ``rate`` (events/s), ``rate_source``, ``mean_seconds_between`` (the
    mean time between false alarms), ``chance_within`` (per period of :data:`PERIODS`) and
    ``text``, one sentence for people.
    """
    params = _with_defaults(params)
    out: dict[str, Any]
    if "alpha" in params and params["alpha"] is not None:
        alpha = float(params["alpha"])
        out = {
            "budget": "alpha",
            "alpha": alpha,
            "text": (
                f"α = {alpha:g}: when the variants are equally good, the chance of declaring "
                "harm at least once over the whole comparison, however long it runs and however "
                "often it is looked at; it does not grow with traffic or time."
            ),
        }
        return out
    arl0 = params.get("arl0")
    if arl0 is None:
        return {
            "budget": "none",
            "text": "no stated false-alarm budget (this detector is not calibrated to one).",
        }
    arl0 = float(arl0)
    out = {"budget": "arl0", "arl0": arl0}
    if rate is None or not rate > 0:
        out["text"] = (
            f"one false alarm per {arl0:,.0f} events on average "
            "(no traffic known yet to say how long that is)."
        )
        return out
    mean_s = arl0 / rate
    chances = {name: within(t, mean_s) for name, t in PERIODS.items()}
    out.update(
        {
            "rate": rate,
            "rate_source": rate_source,
            "mean_seconds_between": mean_s,
            "chance_within": chances,
        }
    )
    mean = format_duration(mean_s)
    out["text"] = (
        f"one false alarm every ~{mean} at {_format_rate(rate)} ({rate_source}) for this "
        f"variant; {_pct(within(mean_s, mean_s))} chance of one within {mean}, "
        f"{_pct(chances['1d'])} within a day, {_pct(chances['30d'])} within 30 days."
    )
    return out


def describe(params: dict[str, Any], *, rate: float | None, rate_source: str = "observed") -> str:
    """One sentence: :func:`explain`'s ``text``."""
    return str(explain(params, rate=rate, rate_source=rate_source)["text"])
