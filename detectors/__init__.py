"""driftswitch.detectors: pure online statistics (no Kafka, no Faust)."""

from __future__ import annotations

import driftswitch.detectors.river  # registers the river detectors
import driftswitch.detectors.sequential  # noqa: F401  (registers sequential)
