"""driftswitch.detectors: pure online statistics. Nothing here imports Kafka or
driftswitch.streams."""

from __future__ import annotations

# Importing the detector modules registers their kinds (each class uses @register).
from driftswitch.detectors import drift, interleaving, quantiles, river, sequential
from driftswitch.detectors.binary import cusum, glr

__all__ = ["cusum", "drift", "glr", "interleaving", "quantiles", "river", "sequential"]
