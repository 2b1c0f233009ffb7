"""driftswitch.streams: events, configuration, flag state, the streaming worker, HTTP and CLI."""

from __future__ import annotations
