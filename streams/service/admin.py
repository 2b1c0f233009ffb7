"""The HTTP admin API: manual commands, flag history and config reload (mounted by ``web.py``).

Mutating endpoints (each needs ``Authorization: Bearer <DRIFTSWITCH_ADMIN_TOKEN>``):

- ``POST /api/v1/flags/{flag}/kill`` ``{"variant": ..., "reason": ...}``
- ``POST /api/v1/flags/{flag}/restore`` ``{"variant": ..., "weight": ..., "reason": ...}``
  (kill and restore also take ``"segment": {"region": "jp"}``: that segment only)
- ``PUT /api/v1/flags/{flag}/weights`` ``{"weights": {...}, "reason": ...}``
- ``POST /api/v1/flags/{flag}/pause`` / ``.../resume`` ``{"reason": ...}``
- ``POST /api/v1/flags/{flag}/pin`` ``{"variant": ..., "reason": ...}`` / ``.../unpin``
- ``POST /api/v1/config/reload``

A command is checked against the config, published to the control topic and applied by the
worker's loop like one produced by any other client (:mod:`driftswitch.streams.pipeline.control`);
the
handler waits, bounded, for the outcome: 200 with the flag change, 409 when it changes nothing
or the flag's state refuses it, 400/404 for bad input, 503 on a standby worker, 504 when not
applied in time. The actor is the ``X-Driftswitch-Actor`` header, else the body's ``actor``,
else ``admin``. Authentication failures change nothing: 401 (with ``WWW-Authenticate``) without
a token, 403 with a wrong one, 503 when no token is configured. The token is never logged.

Read-only: ``GET /api/v1/flags/{flag}/history?limit=N``, the flag's changes as read from the
flags topic (every change is the audit record), oldest first, at most ``limit`` (the newest).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from driftswitch.streams.contract.commands import Command, CommandAction, CommandError
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.contract.events import FlagChangeEvent, Name, validation_message
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.settings import KafkaSettings, as_settings
from driftswitch.streams.pipeline.control import validate
from driftswitch.streams.service.auth import AdminAuth
from driftswitch.streams.service.worker import NotActiveError, Worker

__all__ = ["ACTOR_HEADER", "DEFAULT_HISTORY", "MAX_HISTORY", "read_history", "routes"]

log = logging.getLogger(__name__)

ACTOR_HEADER = "X-Driftswitch-Actor"
DEFAULT_HISTORY = 100
MAX_HISTORY = 1000
#: Largest request body accepted by a mutating endpoint.
MAX_BODY_BYTES = 64 * 1024
_STATUS = {"unknown_flag": 404, "conflict": 409}


class CommandBody(BaseModel):
    """The JSON body of a command request (the flag and the action come from the URL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Name | None = Field(None, description="For kill, restore and pin.")
    weight: StrictInt | None = Field(None, description="For restore: the weight to give back.")
    weights: dict[str, StrictInt] | None = Field(None, description="For set weights.")
    segment: dict[str, str] | None = Field(
        None, description='For kill and restore: that segment only, e.g. {"region": "jp"}.'
    )
    reason: str | None = Field(None, description="Why: recorded in the flag change.")
    actor: str | None = Field(None, description="Who (the X-Driftswitch-Actor header wins).")


#: The body each command takes, for the message refusing a body that does not fit.
_EXPECTED_BODY = {
    CommandAction.KILL: '"variant" (required), "segment" ({"region": "jp"}), "reason"',
    CommandAction.RESTORE: '"variant" (required), "weight", "segment", "reason"',
    CommandAction.SET_WEIGHTS: '"weights" (required: {VARIANT: percent, ...}), "reason"',
    CommandAction.PAUSE: '"reason"',
    CommandAction.RESUME: '"reason"',
    CommandAction.PIN: '"variant" (required), "reason"',
    CommandAction.UNPIN: '"reason"',
}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _json({"error": code, "message": message, **extra}, status)


def _change(event: FlagChangeEvent) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude_none=True)


def _refused(auth: AdminAuth, request: web.Request) -> web.Response | None:
    """The response refusing an unauthorised request, or None when it may proceed."""
    failure = auth.check(request.headers.get("Authorization"))
    if failure is None:
        return None
    log.warning(
        "admin request %s %s refused: %s", request.method, request.path, failure.code
    )  # the header itself is never logged
    headers = None
    if failure.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="driftswitch"'}
    return _json({"error": failure.code, "message": failure.message}, failure.status, headers)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    if len(raw) > MAX_BODY_BYTES:
        raise ValueError(f"body larger than {MAX_BODY_BYTES} bytes")
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def routes(worker: Worker, auth: AdminAuth, *, wait_s: float = 10.0) -> list[web.RouteDef]:
    """The admin API's routes for ``worker``; ``wait_s`` bounds the wait for a command."""

    def command_handler(action: CommandAction) -> Any:
        async def handle(request: web.Request) -> web.Response:
            refused = _refused(auth, request)
            if refused is not None:
                return refused
            flag = request.match_info["flag"]
            try:
                body = CommandBody.model_validate(await _body(request))
            except (ValueError, orjson.JSONDecodeError) as err:
                message = validation_message(err) if isinstance(err, ValidationError) else str(err)
                message += (
                    f"; expected a JSON object with {_EXPECTED_BODY[action]}, and optionally "
                    '"actor" (docs/control.md)'
                )
                return _error(400, "invalid_request", message)
            actor = request.headers.get(ACTOR_HEADER) or body.actor or "admin"
            fields = body.model_dump(exclude_none=True, exclude={"actor"})
            try:
                command = Command(action=action, flag=flag, actor=actor, ts=time.time(), **fields)
            except ValidationError as err:
                return _error(400, "invalid_command", validation_message(err))
            try:
                validate(command, worker.config)
            except CommandError as err:
                return _error(_STATUS.get(err.code, 400), err.code, err.message)
            try:
                outcome = await worker.submit_command(command, wait_s)
            except NotActiveError as err:
                return _error(503, "not_active", str(err))
            except TimeoutError:
                return _error(
                    504,
                    "timeout",
                    f"the command was published but not applied within {wait_s:g} s; "
                    "check the flag's history before retrying",
                )
            if outcome.status == "applied" and outcome.event is not None:
                return _json({"status": "applied", "change": _change(outcome.event)})
            if outcome.status == "noop":
                return _error(
                    409, "no_change", f"{action.value} changes nothing in the flag's current state"
                )
            code = outcome.code or "invalid_command"
            return _error(_STATUS.get(code, 400), code, outcome.message or code)

        return handle

    async def history(request: web.Request) -> web.Response:
        flag = request.match_info["flag"]
        if flag not in worker.flags and flag not in worker.config.flags:
            return _error(404, "unknown_flag", f"flag {flag!r} is not known")
        raw = request.query.get("limit", str(DEFAULT_HISTORY))
        try:
            limit = int(raw)
            if not 1 <= limit <= MAX_HISTORY:
                raise ValueError
        except ValueError:
            return _error(400, "invalid_request", f"limit: an integer from 1 to {MAX_HISTORY}")
        changes = await read_history(worker.settings.kafka, worker.topics.flags.name, flag, limit)
        return _json({"flag": flag, "changes": [_change(c) for c in changes]})

    async def reload(request: web.Request) -> web.Response:
        refused = _refused(auth, request)
        if refused is not None:
            return refused
        try:
            changes = await worker.reload_config()
        except ConfigError as err:
            return _error(
                400,
                "invalid_config",
                "the new config was rejected; the old one stays in force",
                problems=err.problems,
            )
        return _json(
            {
                "status": "reloaded",
                "flags": list(worker.config.flags),
                "changes": [_change(c) for c in changes],
            }
        )

    flag_path = "/api/v1/flags/{flag}"
    return [
        web.post(f"{flag_path}/kill", command_handler(CommandAction.KILL)),
        web.post(f"{flag_path}/restore", command_handler(CommandAction.RESTORE)),
        web.put(f"{flag_path}/weights", command_handler(CommandAction.SET_WEIGHTS)),
        web.post(f"{flag_path}/pause", command_handler(CommandAction.PAUSE)),
        web.post(f"{flag_path}/resume", command_handler(CommandAction.RESUME)),
        web.post(f"{flag_path}/pin", command_handler(CommandAction.PIN)),
        web.post(f"{flag_path}/unpin", command_handler(CommandAction.UNPIN)),
        web.get(f"{flag_path}/history", history),
        web.post("/api/v1/config/reload", reload),
    ]


async def read_history(
    bootstrap: str | KafkaSettings, topic: str, flag: str, limit: int
) -> list[FlagChangeEvent]:
    """The last ``limit`` changes of ``flag`` on the flags topic, oldest first.

    Reads the topic from the beginning (the embedded broker never compacts it; on a Kafka that
    does, history is what compaction kept). Undecodable records are skipped.
    """
    records = (await kafka.read_partitions(as_settings(bootstrap), topic, idle_ms=150)).records
    kept: collections.deque[FlagChangeEvent] = collections.deque(maxlen=limit)
    key = flag.encode()
    for recs in records.values():
        for rec in recs:
            if rec.key != key:
                continue
            try:
                kept.append(FlagChangeEvent.model_validate_json(rec.value))
            except ValueError:
                continue
    return list(kept)
