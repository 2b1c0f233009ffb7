"""Logging setup: readable text for people, or one JSON object per line for log pipelines.

``driftswitch run --log-format json`` (or ``DRIFTSWITCH_LOG_FORMAT=json``) switches to JSON.
Context travels in ``extra=``: every decision log line carries ``flag``, ``variant``,
``guardrail``, ``action`` and ``version`` (:func:`decision_context`); dead-letter lines carry
``topic``/``partition``/``offset``/``reason``; hook lines carry ``hook``. The JSON formatter
emits every such field as a top-level key; the text formatter appends them as ``key=value``.

Hygiene. Log lines carry text from outside (a command's ``reason`` or ``actor``, a record's
detail), so a value cannot forge a line: the text formatter escapes control characters (CR, LF,
ESC, ...) in the message and the context as ``\r``, ``\n``, ``\x1b`` (the JSON formatter's
string escaping already does). Every line also goes through :func:`redact`, which replaces
credentials (``Authorization`` values, bearer tokens) with ``***``: aiohttp's errors quote
request bytes, for example the start of an oversized ``Authorization`` header.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from driftswitch.streams.contract.events import Action, AlertEvent, FlagChangeEvent

__all__ = [
    "ENV_LOG_FORMAT",
    "ENV_LOG_LEVEL",
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "decision_context",
    "decision_level",
    "escape_controls",
    "log_format_from_env",
    "redact",
]

ENV_LOG_FORMAT = "DRIFTSWITCH_LOG_FORMAT"
ENV_LOG_LEVEL = "DRIFTSWITCH_LOG_LEVEL"
LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


_CONTROLS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: An Authorization header's value, or a bearer token wherever it appears; also the value of a
#: header quoted by aiohttp with the name cut off, which starts with the scheme.
_CREDENTIALS = re.compile(
    r"(?i)(authorization\b[\s'\"]*[:=]\s*['\"]?(?:(?:bearer|basic|token)\s+)?|\b(?:bearer|basic)\s+)"
    r"[^\s'\",;]+"
)


def escape_controls(text: str) -> str:
    """``text`` with control characters and line separators escaped, so it stays one line."""
    return _CONTROLS.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


def redact(text: str) -> str:
    """``text`` with credentials (Authorization header values, bearer tokens) as ``***``."""
    return _CREDENTIALS.sub(lambda m: m[1] + "***", text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``message``,
    the ``extra=`` fields, and ``exc_info`` as text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return redact(json.dumps(out, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` with the ``extra=`` fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            head, sep, tail = text.partition("\n")  # keep a traceback below the context
            context = " ".join(escape_controls(f"{k}={v}") for k, v in extras.items())
            text = f"{head} [{context}]{sep}{tail}"
        return redact(text)


def log_format_from_env(environ: Mapping[str, str]) -> LogFormat:
    """``DRIFTSWITCH_LOG_FORMAT`` (``text`` or ``json``), ``text`` if unset."""
    value = environ.get(ENV_LOG_FORMAT, "text").strip().lower() or "text"
    if value == "json":
        return "json"
    if value == "text":
        return "text"
    raise ValueError(f"{ENV_LOG_FORMAT}={value!r}: expected one of {', '.join(LOG_FORMATS)}")


def configure_logging(
    fmt: LogFormat = "text", level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) in ``fmt``; returns the handler.

    Replaces handlers this function installed before, so calling it twice does not double
    every line.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("driftswitch")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "driftswitch"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


#: Actions that protect users from a bad variant: logged as WARNING. Everything else (the
#: initial state, rollout advances, operators' weights, pauses, reloads) is routine: INFO.
PROTECTIVE_ACTIONS = frozenset(
    {Action.WARN, Action.HOLD, Action.SHIFT, Action.KILL, Action.ROLLBACK}
)


def decision_level(event: FlagChangeEvent | AlertEvent) -> int:
    """WARNING for an alert or a protective change (kill, shift, hold, rollback), else INFO."""
    if isinstance(event, AlertEvent) or event.cause.action in PROTECTIVE_ACTIONS:
        return logging.WARNING
    return logging.INFO


def decision_context(event: FlagChangeEvent | AlertEvent) -> dict[str, Any]:
    """The ``extra=`` of a decision log line: flag, variant, guardrail, action, version (those
    that apply: an ``init`` has no variant or guardrail, and says nothing about them)."""
    cause = event.cause
    context: dict[str, Any]
    if isinstance(event, AlertEvent):
        context = {
            "flag": event.flag,
            "variant": event.variant,
            "guardrail": event.guardrail,
            "action": cause.action.value,
            "version": event.flag_version,
        }
    else:
        context = {
            "flag": event.flag,
            "variant": cause.variant,
            "guardrail": cause.guardrail,
            "action": cause.action.value,
            "version": event.version,
        }
    return {k: v for k, v in context.items() if v is not None}
