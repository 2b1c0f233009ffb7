"""The client's lifecycle against the real broker: a client that is never closed still delivers
what it recorded when the interpreter exits, and wait_ready returns once the state is read."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from driftswitch.streams.client import DriftswitchClient
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.tools.broker import EmbeddedBroker


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_an_unclosed_client_delivers_its_events_at_interpreter_exit(
    broker: EmbeddedBroker, topics: Topics, read_json: Callable[[str], list[Any]], host: str
) -> None:
    # With a host name, the client has to resolve it at exit if it has not connected yet, after
    # the interpreter's thread pools refuse work (every event was lost: "cannot reach Kafka").
    prefix = topics.predictions.name.rsplit(".predictions", 1)[0]
    bootstrap = broker.bootstrap.replace("127.0.0.1", host)
    code = f"""
        import logging
        logging.basicConfig(level=logging.INFO)
        from driftswitch.streams.client import DriftswitchClient
        from driftswitch.streams.contract.topics import Topics

        topics = Topics.with_prefix({prefix!r}, partitions=4)
        client = DriftswitchClient({bootstrap!r}, topics=topics)
        client.start()
        for i in range(10):
            client.record_prediction(f"exit-{{i}}", "ranker", "control", 1)
        # the script ends here: no close(), no flush()
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "lost" not in result.stderr
    sent = read_json(topics.predictions.name)
    assert sorted(str(p["request_id"]) for p in sent) == [f"exit-{i}" for i in range(10)]


def test_start_returns_at_once_and_wait_ready_waits_for_the_state(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    client = DriftswitchClient(broker.bootstrap, topics=topics, defaults={"ranker": "control"})
    with client:
        assert client.variant("ranker", "user-1") == "control"  # served before any state
        assert client.wait_ready(30)
        assert client.bootstrapped
        assert client.start() is True  # already started: reports readiness
    assert client.stats().buffered == 0
