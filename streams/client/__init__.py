"""What a model service imports: the flag-reading, event-recording client and the OpenFeature
provider.

The client depends on the contracts (`driftswitch.streams.contract`) only, never on the service.
"""

from __future__ import annotations

from driftswitch.streams.client.client import DriftswitchClient

__all__ = ["DriftswitchClient"]
