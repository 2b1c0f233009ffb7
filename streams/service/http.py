"""The worker's HTTP API (aiohttp), bound to loopback by default.

- ``GET /healthz``: 200 with the worker's role and progress while it is starting, standby or
  active; 503 once it has stopped, or while it holds input it is not processing (``unhealthy``
  says why: active without the lease, or records waiting and no batch processed).
- ``GET /api/v1/flags``: the latest state of every flag, as published on the flags topic.
- ``GET /api/v1/flags/{flag}``: one flag's state, plus the engine's statistics and guardrail
  states for it when this worker is the active one, each guardrail with its ``budget``: the
  false-alarm budget in time at the observed rate (:mod:`driftswitch.streams.config.budget`);
  404 for an unknown flag.
- ``GET /flagd/flags.json``: the flagd flag-definition document of the published states
  (:mod:`driftswitch.streams.contract.flagd`), for flagd's HTTP sync; 503 until the worker knows
  them.
- ``GET /metrics``: Prometheus text format (:mod:`driftswitch.streams.service.metrics`), when the
  worker has metrics.
- The admin API (:mod:`driftswitch.streams.service.admin`): manual commands, ``GET
  /api/v1/flags/{flag}/history`` and ``POST /api/v1/config/reload``.
- The status page (:mod:`driftswitch.streams.service.page`): ``GET /`` and the
  ``GET /api/v1/status`` JSON it polls.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from driftswitch.streams.config.model import Config
from driftswitch.streams.service.auth import AdminAuth
from driftswitch.streams.service.worker import Worker

__all__ = ["add_budgets", "make_app", "serve"]

_WORKER: web.AppKey[Worker] = web.AppKey("worker", Worker)


def _json(data: Any, status: int = 200) -> web.Response:
    import orjson

    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json"
    )


async def _healthz(request: web.Request) -> web.Response:
    worker = request.app[_WORKER]
    status = worker.status()
    unhealthy = worker.role == "stopped" or status.get("unhealthy") is not None
    return _json(status, 503 if unhealthy else 200)


async def _flags(request: web.Request) -> web.Response:
    worker = request.app[_WORKER]
    return _json(
        {name: event.model_dump(mode="json") for name, event in sorted(worker.flags.items())}
    )


async def _flag(request: web.Request) -> web.Response:
    worker = request.app[_WORKER]
    name = request.match_info["flag"]
    event = worker.flags.get(name)
    if event is None:
        return _json({"error": "unknown_flag", "flag": name}, 404)
    body: dict[str, Any] = {"state": event.model_dump(mode="json")}
    if worker.role == "active":
        engine = worker.engine_snapshot()
        flags = engine.get("flags", engine) if isinstance(engine, dict) else {}
        body["evaluation"] = flags.get(name) if isinstance(flags, dict) else None
        add_budgets(worker.config, name, body["evaluation"])
    return _json(body)


def add_budgets(config: Config, name: str, evaluation: Any) -> None:
    """Each guardrail of ``evaluation`` (flag ``name``'s engine statistics) gains ``budget``: its
    false-alarm budget in time at the rate its variant's samples arrived (event time), or at its
    ``expected_rate`` before that. Used by ``GET /api/v1/flags/{flag}`` and the status page."""
    from driftswitch.streams.config import budget
    from driftswitch.streams.config.model import detector_spec

    flag = config.flags.get(name)
    if flag is None or not isinstance(evaluation, dict):
        return
    guardrails = evaluation.get("guardrails") or {}
    variants = evaluation.get("variants") or {}
    for g in flag.guardrails:
        entry = guardrails.get(g.name)
        if not isinstance(entry, dict):
            continue
        stats = variants.get(g.variant) or {}
        samples = (entry.get("samples") or {}).get(g.variant) or 0
        rate = budget.observed_rate(int(samples), stats.get("first_ts"), stats.get("last_ts"))
        source = "observed"
        if rate is None and g.expected_rate is not None:
            rate, source = g.expected_rate, "expected_rate"
        entry["budget"] = budget.explain(detector_spec(g, flag), rate=rate, rate_source=source)


async def _flagd(request: web.Request) -> web.Response:
    from driftswitch.streams.contract.flagd import document, dumps

    worker = request.app[_WORKER]
    if not worker.flags:
        return _json({"error": "no_state", "detail": f"worker is {worker.role}"}, 503)
    return web.Response(body=dumps(document(worker.flags)), content_type="application/json")


def make_app(
    worker: Worker, auth: AdminAuth | None = None, *, command_wait_s: float = 10.0
) -> web.Application:
    """The aiohttp application serving ``worker``.

    ``auth`` holds the admin token; without one the mutating admin endpoints answer 503.
    ``command_wait_s`` bounds how long a command request waits for the worker to apply it.
    """
    from driftswitch.streams.service.admin import routes

    app = web.Application()
    app[_WORKER] = worker
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/v1/flags", _flags)
    app.router.add_get("/api/v1/flags/{flag}", _flag)
    app.router.add_get("/flagd/flags.json", _flagd)
    app.add_routes(routes(worker, auth or AdminAuth(None), wait_s=command_wait_s))
    from driftswitch.streams.service import page

    app.add_routes(page.routes(worker))
    if worker.metrics is not None:
        from driftswitch.streams.service.metrics import metrics_handler

        app.router.add_get(
            "/metrics", metrics_handler(worker.metrics, before_scrape=worker.refresh_metrics)
        )
    return app


async def serve(
    worker: Worker, host: str, port: int, auth: AdminAuth | None = None
) -> web.AppRunner:
    """Start serving on ``host:port``; the caller cleans up with ``await runner.cleanup()``."""
    runner = web.AppRunner(make_app(worker, auth), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
