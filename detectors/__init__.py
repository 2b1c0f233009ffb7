"""driftswitch.detectors: pure online statistics (no Kafka, no Faust)."""

from __future__ import annotations

# Importing the detector modules registers their kinds (each class uses @register).
from driftswitch.detectors import cusum, drift, glr, quantiles, river, sequential

__all__ = ["cusum", "drift", "glr", "quantiles", "river", "sequential"]
