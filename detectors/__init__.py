"""driftswitch.detectors: pure online statistics (no Kafka, no Faust)."""

from __future__ import annotations

import driftswitch.detectors.river  # noqa: F401  (registers the river detectors)
