"""``/healthz`` fails (503) while a worker holds input it is not processing: an active worker
whose lease rebalance never settled answered 200 ``active`` for 60 s while doing nothing."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient, TestServer

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.http import make_app
from driftswitch.streams.service.worker import Worker, WorkerSettings

CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control: {weight: 100, value: v1}
"""


def _status(worker: Worker) -> tuple[int, dict[str, object]]:
    async def get() -> tuple[int, dict[str, object]]:
        async with TestClient(TestServer(make_app(worker))) as client:
            response = await client.get("/healthz")
            return response.status, await response.json()

    return asyncio.run(get())


def test_an_active_worker_without_its_lease_is_unhealthy() -> None:
    worker = Worker(
        parse_config(CONFIG),
        WorkerSettings(
            bootstrap="127.0.0.1:1", topics=Topics.with_prefix("t"), session_timeout_ms=6000
        ),
    )
    worker.role = "active"
    status, body = _status(worker)
    assert (status, body["unhealthy"]) == (200, None)
    # The lease was revoked by a rebalance 40 s ago and never came back.
    worker._lease_missing_since = time.monotonic() - 40
    status, body = _status(worker)
    assert status == 503
    assert "without the lease" in str(body["unhealthy"])
    worker.role = "standby"  # a standby is expected to hold nothing
    assert _status(worker)[0] == 200
