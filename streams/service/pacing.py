"""How often the worker snapshots: often enough to bound a replay, rarely enough to stay fast.

A snapshot stops the hot loop while the engine state is serialised, so the worker keeps that
under about 10 % of its time: the interval is at least 10 × the last snapshot's duration. One
snapshot that took long for a reason unrelated to the state's size (a broker frozen for 30 s)
must not space every later snapshot out to minutes, which would make the replay after a crash
that much longer: the interval never exceeds :data:`MAX_SNAPSHOT_INTERVAL` seconds (or the
configured interval, if that is longer).
"""

from __future__ import annotations

__all__ = ["MAX_SNAPSHOT_INTERVAL", "snapshot_interval"]

#: Longest automatic spacing between snapshots, seconds.
MAX_SNAPSHOT_INTERVAL = 10.0


def snapshot_interval(configured: float, last_cost: float) -> float:
    """Seconds to wait after a snapshot that took ``last_cost`` seconds.

    >>> snapshot_interval(1.0, 0.02)
    1.0
    >>> snapshot_interval(1.0, 0.4)
    4.0
    >>> snapshot_interval(1.0, 30.0)  # the broker was frozen: capped
    10.0
    """
    return max(configured, min(10 * last_cost, MAX_SNAPSHOT_INTERVAL))
