"""driftswitch.detectors: pure online statistics (no Kafka, no Faust)."""

from __future__ import annotations
