"""The status page: ``GET /`` on the worker's web port, and the JSON it polls.

- ``GET /`` serves ``status.html`` (package data beside this module): one self-contained page,
  its script, styles and SVG charts written here, with no request to any other host.
- ``GET /api/v1/status?traces=a,b``: every flag's published state, its lifecycle fields from the
  config (owner, description, tags, expiry, temporary) and findings
  (:mod:`driftswitch.streams.pipeline.lifecycle`), and — on the active worker — the engine's
  statistics, each guardrail with its ``budget`` (its false-alarm budget in time at the observed
  traffic, as ``GET /api/v1/flags/{flag}`` gives it); ``traces`` names the flags whose guardrail
  traces (the recent ``(event time, statistic, threshold)`` points) to include, so a page showing
  200 flags polls only the charts it displays.

The page polls once a second. Its actions (kill, restore, pause, resume, set weights) call the
admin API (:mod:`driftswitch.streams.service.admin`) with the token the operator typed, so the
same rules apply: without a token the page is read-only, a refused or failed action shows the
API's reason. The token stays in the page's memory; it is never stored or sent elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.lifecycle import findings
from driftswitch.streams.service.http import add_budgets
from driftswitch.streams.service.worker import Worker

__all__ = ["build_status", "page_html", "routes", "status_document"]

#: Most flags whose traces one request may ask for.
MAX_TRACES = 50


@cache
def page_html() -> bytes:
    """The page (read once from the package)."""
    return resources.files("driftswitch.streams.service").joinpath("status.html").read_bytes()


def _traffic(evaluation: dict[str, Any] | None) -> float | None:
    """The newest prediction's event time of a flag, from its engine statistics."""
    if not evaluation:
        return None
    times: list[float] = [
        float(v["last_ts"])
        for v in (evaluation.get("variants") or {}).values()
        if isinstance(v, dict) and isinstance(v.get("last_ts"), int | float)
    ]
    return max(times) if times else None


def status_document(worker: Worker, traces: set[str], now: float | None = None) -> dict[str, Any]:
    """The ``/api/v1/status`` body for ``worker`` (traces only for the flags in ``traces``)."""
    active = worker.role == "active"
    return build_status(
        worker.config,
        worker.flags,
        worker.engine if active else None,
        worker.role,
        traces,
        time.time() if now is None else now,
    )


def build_status(
    config: Config,
    states: Mapping[str, FlagChangeEvent],
    engine: Engine | None,
    role: str,
    traces: set[str],
    now: float,
) -> dict[str, Any]:
    """The status document from its parts; ``engine`` is None on a worker that is not active."""
    snapshot: dict[str, Any] = engine.snapshot() if engine is not None else {}
    evaluations: dict[str, Any] = snapshot.get("flags", {})
    all_traces = engine.traces() if engine is not None and traces else {}
    traffic = {name: _traffic(evaluations.get(name)) for name in config.flags}
    found: dict[str, list[dict[str, Any]]] = {}
    for f in findings(
        config,
        {name: [state] for name, state in states.items()},
        traffic if engine is not None else None,
        now,
    ):
        found.setdefault(f.flag, []).append(f.to_json())
    flags: dict[str, Any] = {}
    for name in sorted(set(config.flags) | set(states)):
        add_budgets(config, name, evaluations.get(name))
        fc = config.flags.get(name)
        state = states.get(name)
        flags[name] = {
            "state": state.model_dump(mode="json") if state is not None else None,
            "meta": (
                {
                    "owner": fc.owner,
                    "description": fc.description,
                    "tags": fc.tags,
                    "expires": fc.expires.isoformat() if fc.expires else None,
                    "temporary": fc.temporary,
                    "guardrails": [g.name for g in fc.guardrails],
                }
                if fc is not None
                else None
            ),
            "findings": found.get(name, []),
            "evaluation": evaluations.get(name),
            "traces": all_traces.get(name) if name in traces else None,
        }
    return {
        "now": now,
        "worker": {"role": role, "watermark": snapshot.get("watermark")},
        "flags": flags,
    }


def routes(worker: Worker) -> list[web.RouteDef]:
    """``GET /`` and ``GET /api/v1/status`` for ``worker``."""

    async def index(_request: web.Request) -> web.Response:
        return web.Response(
            body=page_html(),
            content_type="text/html",
            charset="utf-8",
            headers={
                # Belt and braces for "no request outside the worker".
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; img-src 'self' data:",
                "Cache-Control": "no-store",
            },
        )

    async def status(request: web.Request) -> web.Response:
        wanted = {t for t in request.query.get("traces", "").split(",") if t}
        if len(wanted) > MAX_TRACES:
            return web.Response(
                body=orjson.dumps(
                    {"error": "invalid_request", "message": f"traces: at most {MAX_TRACES} flags"}
                ),
                status=400,
                content_type="application/json",
            )
        body = orjson.dumps(status_document(worker, wanted), default=str)
        return web.Response(body=body, content_type="application/json")

    return [web.get("/", index), web.get("/api/v1/status", status)]
