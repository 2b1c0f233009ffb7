"""End to end: the control plane of `driftswitch run` on the embedded broker.

Each test runs the real worker command as a subprocess on its own topics and drives it as an
operator or an automation would: HTTP requests with and without the admin token, commands
produced to the control topic with confluent-kafka (librdkafka), config reloads by HTTP and
SIGHUP. What is checked is what users see: the flags topic (the audit log), the Python client's
assignments, the dead-letter topic and the HTTP answers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.contract.events import Action, CauseKind
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.ingest import HEADER_REASON
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.testing import WorkerProcess, flag_changes, read_topic, wait_until

TOKEN = "s3cret-token-for-tests"
CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 70, value: ranker-v1}
      candidate: {weight: 30, value: ranker-v2}
"""
SUBJECTS = [f"user-{i}" for i in range(400)]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "driftswitch.yaml"
    path.write_text(CONFIG)
    return path


def start(
    start_worker: Callable[..., WorkerProcess], config: Path, log: Path, token: str | None
) -> WorkerProcess:
    """An active worker whose admin token is ``token`` (``None``: the admin API is disabled)."""
    worker: WorkerProcess = start_worker(config, log, env={"DRIFTSWITCH_ADMIN_TOKEN": token})
    worker.wait_active()
    return worker


def version(client: DriftswitchClient) -> int | None:
    state = client.flag_state("ranker")
    return None if state is None else state.version


def served(client: DriftswitchClient) -> set[str | None]:
    return {client.variant("ranker", s) for s in SUBJECTS}


def test_manual_kill_over_http_reaches_the_flags_topic_and_the_client(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start(start_worker, config_path, tmp_path / "worker.log", TOKEN)
    kill = {"variant": "candidate", "reason": "users report bad rankings"}
    path = "/api/v1/flags/ranker/kill"
    with DriftswitchClient(broker.bootstrap, topics=topics, record_events=False) as client:
        wait_until("client has v1", lambda: client.flag_state("ranker") is not None)
        assert served(client) == {"control", "candidate"}

        # No token, a wrong token, another scheme: refused, and nothing is published.
        status, headers, body = worker.request("POST", path, kill)
        assert (status, body["error"]) == (401, "unauthenticated")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        status, _, body = worker.request("POST", path, kill, token=TOKEN + "x")
        assert (status, body["error"]) == (403, "forbidden")
        status, _, body = worker.request(
            "POST", path, kill, headers={"Authorization": f"Basic {TOKEN}"}
        )
        assert status == 401
        status, _, body = worker.request("POST", "/api/v1/config/reload", token="wrong")
        assert status == 403
        time.sleep(1.0)  # time for a wrongly accepted command to show up
        assert [c.version for c in flag_changes(broker.bootstrap, topics)] == [1]
        assert served(client) == {"control", "candidate"}

        # Bad input: clear 4xx answers, nothing published.
        status, _, body = worker.request("POST", "/api/v1/flags/search/kill", kill, token=TOKEN)
        assert (status, body["error"]) == (404, "unknown_flag")
        status, _, body = worker.request(
            "POST", path, {"variant": "nope", "reason": "x"}, token=TOKEN
        )
        assert (status, body["error"]) == (400, "unknown_variant")
        status, _, body = worker.request(
            "PUT", "/api/v1/flags/ranker/weights", {"weights": {"control": 60}}, token=TOKEN
        )
        assert (status, body["error"]) == (400, "invalid_command")
        assert "add up to 100" in body["message"]
        status, _, body = worker.request("POST", path, {"variant": "control"}, token=TOKEN)
        assert (status, body["error"]) == (400, "invalid_command")
        assert [c.version for c in flag_changes(broker.bootstrap, topics)] == [1]

        # The kill: answered with the change, on the topic, and obeyed by the client.
        status, _, body = worker.request(
            "POST", path, kill, token=TOKEN, headers={"X-Driftswitch-Actor": "alice"}
        )
        assert status == 200, body
        change = body["change"]
        assert change["version"] == 2
        assert change["actor"] == "alice"
        assert change["cause"]["kind"] == "manual"
        assert change["cause"]["action"] == "kill"
        assert change["cause"]["reason"] == "users report bad rankings"
        assert change["variants"]["candidate"] == {
            "weight": 0,
            "killed": True,
            "value": "ranker-v2",
        }
        assert change["variants"]["control"]["weight"] == 100
        published = flag_changes(broker.bootstrap, topics)
        assert [c.version for c in published] == [1, 2]
        assert published[1].model_dump(mode="json", exclude_none=True) == change
        wait_until("client sees the kill", lambda: version(client) == 2)
        assert served(client) == {"control"}

        # Killing it again changes nothing: 409, nothing published.
        status, _, body = worker.request("POST", path, kill, token=TOKEN)
        assert (status, body["error"]) == (409, "no_change")

        # Restore (actor from the body), then pause: each one change, in order.
        status, _, body = worker.request(
            "POST",
            "/api/v1/flags/ranker/restore",
            {"variant": "candidate", "weight": 10, "reason": "fixed", "actor": "bob"},
            token=TOKEN,
        )
        assert status == 200, body
        assert body["change"]["variants"]["candidate"]["weight"] == 10
        status, _, body = worker.request(
            "POST", "/api/v1/flags/ranker/pause", {"reason": "freeze"}, token=TOKEN
        )
        assert status == 200
        assert body["change"]["paused"] is True
        wait_until("client sees the restore", lambda: version(client) == 4)
        assert served(client) == {"control", "candidate"}

    # The history is the audit log: every change with its actor and reason, oldest first.
    status, _, body = worker.request("GET", "/api/v1/flags/ranker/history")
    assert status == 200
    assert [
        (c["version"], c["actor"], c["cause"]["action"], c["cause"].get("reason"))
        for c in body["changes"]
    ] == [
        (1, "driftswitch", "init", "initial state from config"),
        (2, "alice", "kill", "users report bad rankings"),
        (3, "bob", "restore", "fixed"),
        (4, "admin", "pause", "freeze"),
    ]
    status, _, body = worker.request("GET", "/api/v1/flags/ranker/history?limit=2")
    assert [c["version"] for c in body["changes"]] == [3, 4]
    assert worker.request("GET", "/api/v1/flags/ranker/history?limit=0")[0] == 400
    assert worker.request("GET", "/api/v1/flags/search/history")[0] == 404
    assert TOKEN not in worker.log.read_text()


def test_commands_from_the_control_topic(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
) -> None:
    """Automation's path (confluent-kafka to the control topic); bad commands are dead-lettered;
    without a configured token the HTTP admin API is disabled; a restart re-applies nothing."""
    worker = start(start_worker, config_path, tmp_path / "worker.log", None)
    status, _, body = worker.request(
        "POST", "/api/v1/flags/ranker/kill", {"variant": "candidate"}, token=TOKEN
    )
    assert (status, body["error"]) == (503, "admin_disabled")

    control = topics.control.name
    kill = orjson.dumps(
        {"action": "kill", "flag": "ranker", "variant": "candidate", "actor": "ci-bot",
         "reason": "canary failed", "id": "job-17", "ts": 1767225600.0}
    )  # fmt: skip
    produce(
        [
            (control, b"ranker", b"{not json"),
            (
                control,
                b"ranker",
                orjson.dumps({"action": "kill", "flag": "ranker", "variant": "nope"}),
            ),
            (control, b"ranker", kill),
            (control, b"ranker", kill),  # a no-op: not dead-lettered, not published
            (
                control,
                b"ranker",
                orjson.dumps({"action": "pin", "flag": "ranker", "variant": "control"}),
            ),
        ]
    )
    wait_until("pin published", lambda: len(flag_changes(broker.bootstrap, topics)) == 3)
    _, v2, v3 = flag_changes(broker.bootstrap, topics)
    assert (v2.version, v2.actor, v2.cause.kind, v2.cause.action) == (
        2,
        "ci-bot",
        CauseKind.MANUAL,
        Action.KILL,
    )
    assert v2.cause.evidence["command_id"] == "job-17"
    assert v2.ts == 1767225600.0
    assert v3.cause.action is Action.PIN
    assert v3.pinned is not None
    assert v3.served_weights() == {"control": 100, "candidate": 0}
    wait_until(
        "bad commands dead-lettered",
        lambda: len(read_topic(broker.bootstrap, topics.deadletter.name)) == 2,
    )
    reasons = [
        dict(r.headers)[HEADER_REASON] for r in read_topic(broker.bootstrap, topics.deadletter.name)
    ]
    assert reasons == [b"malformed_json", b"unknown_variant"]

    # A command produced while the worker is down is applied when it is back (the snapshot has
    # the control offset); the ones before it are neither applied nor published again.
    worker.stop()
    produce([(control, b"ranker", orjson.dumps({"action": "unpin", "flag": "ranker"}))])
    worker = start(start_worker, config_path, tmp_path / "worker2.log", None)
    wait_until("unpin published", lambda: len(flag_changes(broker.bootstrap, topics)) == 4)
    time.sleep(0.5)
    changes = flag_changes(broker.bootstrap, topics)
    assert [(c.version, c.cause.action) for c in changes] == [
        (1, Action.INIT),
        (2, Action.KILL),
        (3, Action.PIN),
        (4, Action.UNPIN),
    ]
    # Unpinned: the weights before the pin, with the killed candidate's share at the default.
    assert changes[3].served_weights() == {"control": 100, "candidate": 0}
    assert changes[3].variants["candidate"].killed


def test_config_reload(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start(start_worker, config_path, tmp_path / "worker.log", TOKEN)
    status, _, body = worker.request(
        "PUT",
        "/api/v1/flags/ranker/weights",
        {"weights": {"control": 50, "candidate": 50}, "reason": "ramp"},
        token=TOKEN,
    )
    assert status == 200, body

    # A bad config: rejected with every problem, nothing changes.
    config_path.write_text(CONFIG.replace("weight: 30", "weight: 40") + "  broken: {}\n")
    status, _, body = worker.request("POST", "/api/v1/config/reload", token=TOKEN)
    assert status == 400
    assert body["error"] == "invalid_config"
    problems = body["problems"]
    assert any("must add up to 100, got 110" in p for p in problems), problems
    assert any("flags.broken" in p for p in problems), problems
    assert "config reload rejected" in worker.log.read_text()
    assert [c.version for c in flag_changes(broker.bootstrap, topics)] == [1, 2]
    assert worker.request("GET", "/api/v1/flags/search")[0] == 404

    # A good one: a new flag (published at version 1), a new variant for the old flag (at weight
    # 0: the live 50/50 is kept although the file says 60/40), and unauthenticated reload refused.
    config_path.write_text(
        CONFIG.replace("weight: 70", "weight: 60").replace("weight: 30", "weight: 40")
        + "      shadow: {weight: 0, value: ranker-v3, shadow: true}\n"
        + "  search:\n    default: a\n    variants:\n      a: {weight: 100, value: a}\n"
    )
    assert worker.request("POST", "/api/v1/config/reload")[0] == 401
    status, _, body = worker.request("POST", "/api/v1/config/reload", token=TOKEN)
    assert status == 200, body
    assert body["flags"] == ["ranker", "search"]
    changes = flag_changes(broker.bootstrap, topics)
    by_flag = [(c.flag, c.version, c.cause.action) for c in changes]
    assert by_flag == [
        ("ranker", 1, Action.INIT),
        ("ranker", 2, Action.SET_WEIGHTS),
        ("ranker", 3, Action.RECONFIGURE),
        ("search", 1, Action.INIT),
    ]
    assert changes[2].served_weights() == {"control": 50, "candidate": 50, "shadow": 0}
    status, _, body = worker.request("GET", "/api/v1/flags/search")
    assert status == 200
    assert body["state"]["version"] == 1

    # SIGHUP re-reads the file too; a command on the new flag works.
    config_path.write_text(
        CONFIG + "  search:\n    default: a\n    variants:\n      a: {weight: 100, value: a}\n"
        "  third:\n    default: x\n    variants:\n      x: {weight: 100, value: 1}\n"
    )
    worker.proc.send_signal(signal.SIGHUP)
    wait_until(
        "third flag published",
        lambda: any(c.flag == "third" for c in flag_changes(broker.bootstrap, topics)),
    )
    status, _, body = worker.request(
        "POST", "/api/v1/flags/search/pause", {"reason": "new flag works"}, token=TOKEN
    )
    assert status == 200, body
    assert body["change"]["version"] == 2
