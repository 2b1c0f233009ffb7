"""The admin API's HTTP answers, against a stand-in worker (no broker): auth before anything,
status codes for every outcome, nothing submitted or reloaded when a request is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.commands import Command, CommandResult
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.service.admin import routes
from driftswitch.streams.service.auth import AdminAuth
from driftswitch.streams.service.worker import NotActiveError

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 70, value: v1}
      candidate: {weight: 30, value: v2}
"""


class StandIn:
    """What the admin routes use of a Worker: config, submit_command, reload_config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.flags = {s.flag: s for s in Engine(config).states()}
        self.engine = Engine(config)
        self.submitted: list[Command] = []
        self.reloads = 0
        self.answer: Callable[[Command], CommandResult] | Exception = lambda c: self._apply(c)
        self.reload_error: ConfigError | None = None

    def _apply(self, command: Command) -> CommandResult:
        event = self.engine.apply_command(command, command.ts or 0.0)
        return CommandResult("noop") if event is None else CommandResult("applied", event)

    async def submit_command(self, command: Command, wait_s: float) -> CommandResult:
        self.submitted.append(command)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(command)

    async def reload_config(self) -> list[Any]:
        self.reloads += 1
        if self.reload_error is not None:
            raise self.reload_error
        return []


Call = Callable[..., Awaitable[tuple[int, dict[str, str], Any]]]


def run(worker: StandIn, auth: AdminAuth, body: Callable[[Call], Awaitable[None]]) -> None:
    async def main() -> None:
        app = web.Application()
        app.add_routes(routes(cast(Any, worker), auth, wait_s=0.5))
        async with TestClient(TestServer(app)) as client:

            async def call(
                method: str, path: str, json: Any = None, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], Any]:
                resp = await client.request(method, path, json=json, headers=headers or {})
                return resp.status, dict(resp.headers), await resp.json()

            await body(call)

    asyncio.run(main())


@pytest.fixture
def worker() -> StandIn:
    return StandIn(parse_config(CONFIG))


ENABLED = AdminAuth(SecretStr(TOKEN))
KILL = {"variant": "candidate", "reason": "bad"}


def test_refused_requests_submit_nothing(worker: StandIn) -> None:
    async def body(call: Call) -> None:
        status, headers, out = await call("POST", "/api/v1/flags/ranker/kill", KILL)
        assert (status, out["error"]) == (401, "unauthenticated")
        assert headers["WWW-Authenticate"] == 'Bearer realm="driftswitch"'
        wrong = {"Authorization": "Bearer nope"}
        status, _, out = await call("POST", "/api/v1/flags/ranker/kill", KILL, wrong)
        assert (status, out["error"]) == (403, "forbidden")
        status, _, _ = await call("POST", "/api/v1/config/reload", None, wrong)
        assert status == 403

    run(worker, ENABLED, body)
    assert worker.submitted == []
    assert worker.reloads == 0


def test_without_a_token_mutations_are_disabled(worker: StandIn) -> None:
    async def body(call: Call) -> None:
        status, _, out = await call("POST", "/api/v1/flags/ranker/pause", {}, AUTH)
        assert (status, out["error"]) == (503, "admin_disabled")
        assert "DRIFTSWITCH_ADMIN_TOKEN" in out["message"]
        status, _, _ = await call("POST", "/api/v1/config/reload", None, AUTH)
        assert status == 503

    run(worker, AdminAuth(None), body)
    assert worker.submitted == []
    assert worker.reloads == 0


def test_answers_for_each_outcome(worker: StandIn) -> None:
    async def body(call: Call) -> None:
        kill = "/api/v1/flags/ranker/kill"
        actor = {**AUTH, "X-Driftswitch-Actor": "alice"}
        status, _, out = await call("POST", kill, {**KILL, "actor": "bob"}, actor)
        assert status == 200
        assert out["status"] == "applied"
        assert (out["change"]["version"], out["change"]["actor"]) == (2, "alice")
        status, _, out = await call("POST", kill, KILL, AUTH)
        assert (status, out["error"]) == (409, "no_change")
        status, _, out = await call("POST", "/api/v1/flags/ranker/pin", {"variant": "x"}, AUTH)
        assert (status, out["error"]) == (400, "unknown_variant")
        status, _, out = await call("POST", "/api/v1/flags/nope/pause", {}, AUTH)
        assert (status, out["error"]) == (404, "unknown_flag")
        status, _, out = await call("POST", kill, {"variant": "candidate", "color": 1}, AUTH)
        assert (status, out["error"]) == (400, "invalid_request")
        # A refused body says what the command takes.
        weights = "/api/v1/flags/ranker/weights"
        status, _, out = await call("PUT", weights, {"control": 90, "candidate": 10}, AUTH)
        assert (status, out["error"]) == (400, "invalid_request")
        assert out["message"] == (
            "control: Extra inputs are not permitted; candidate: Extra inputs are not permitted; "
            'expected a JSON object with "weights" (required: {VARIANT: percent, ...}), '
            '"reason", and optionally "actor" (docs/control.md)'
        )
        status, _, out = await call("POST", "/api/v1/flags/ranker/pause", {"weight": 3}, AUTH)
        assert (status, out["error"]) == (400, "invalid_command")
        worker.answer = lambda c: CommandResult("rejected", code="conflict", message="unpin first")
        status, _, out = await call("POST", "/api/v1/flags/ranker/resume", {}, AUTH)
        assert (status, out["error"], out["message"]) == (409, "conflict", "unpin first")
        worker.answer = TimeoutError()
        status, _, out = await call("POST", "/api/v1/flags/ranker/unpin", {}, AUTH)
        assert (status, out["error"]) == (504, "timeout")
        worker.answer = NotActiveError("this worker is standby")
        status, _, out = await call("POST", "/api/v1/flags/ranker/unpin", {}, AUTH)
        assert (status, out["error"]) == (503, "not_active")

    run(worker, ENABLED, body)
    # Bad input never reached the worker: the kill, the repeated kill, resume, unpin twice.
    assert [c.action.value for c in worker.submitted] == [
        "kill",
        "kill",
        "resume",
        "unpin",
        "unpin",
    ]
    assert worker.submitted[0].actor == "alice"
    assert worker.submitted[0].reason == "bad"


def test_reload_answers(worker: StandIn) -> None:
    async def body(call: Call) -> None:
        worker.reload_error = ConfigError(["cfg.yaml:3: flags.ranker.variants: add up to 100"])
        status, _, out = await call("POST", "/api/v1/config/reload", None, AUTH)
        assert status == 400
        assert out["error"] == "invalid_config"
        assert out["problems"] == ["cfg.yaml:3: flags.ranker.variants: add up to 100"]
        worker.reload_error = None
        status, _, out = await call("POST", "/api/v1/config/reload", None, AUTH)
        assert status == 200
        assert (out["status"], out["flags"], out["changes"]) == ("reloaded", ["ranker"], [])

    run(worker, ENABLED, body)
    assert worker.reloads == 2
