"""driftswitch's exceptions: one root, with subclasses that say what went wrong."""

from __future__ import annotations


class DriftswitchError(Exception):
    """Root of every error driftswitch raises on purpose."""


class ConfigError(DriftswitchError):
    """A configuration file is unreadable or invalid; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class EventError(DriftswitchError):
    """An event could not be decoded or failed validation; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
