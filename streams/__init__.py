"""driftswitch.streams, in layers with one-way imports (docs/architecture.md "Layout"):

contract <- config <- pipeline <- service; client uses the contract only; tools sit on top.
"""

from __future__ import annotations
