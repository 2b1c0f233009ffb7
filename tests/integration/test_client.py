"""The client, our OpenFeature provider and flagd (file mode) against the embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.flag_evaluation import Reason

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.client.openfeature import DriftswitchProvider
from driftswitch.streams.contract.assign import Fractional
from driftswitch.streams.contract.events import (
    FlagChangeEvent,
    OutcomeEvent,
    decode_outcome,
    decode_prediction,
    encode,
)
from driftswitch.streams.contract.flagd import FlagdFile
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.connect import read_partitions
from driftswitch.streams.kafka.settings import as_settings
from driftswitch.streams.tools.broker import EmbeddedBroker

FLAG = "ranker"
KEYS = [f"user-{i}" for i in range(2_000)]
#: Upper bound for something that should take well under a second; a failure, never a timing.
PATIENCE_S = 30.0


def state(version: int, *, killed: bool = False, candidate_weight: int = 50) -> FlagChangeEvent:
    return FlagChangeEvent.model_validate(
        {
            "flag": FLAG,
            "version": version,
            "variants": {
                "control": {"weight": 100 - candidate_weight, "value": "model-a"},
                "candidate": {"weight": candidate_weight, "killed": killed, "value": "model-b"},
            },
            "default_variant": "control",
            "cause": {
                "kind": "detector" if killed else "config",
                "action": "kill" if killed else "init",
            },
            "ts": 1_767_225_600.0 + version,
            "actor": "driftswitch",
        }
    )


async def _publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Send records one by one; return ``perf_counter()`` when the broker acked the last."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
        return time.perf_counter()
    finally:
        await producer.stop()


def publish(bootstrap: str, topics: Topics, *events: FlagChangeEvent) -> float:
    """Publish flag states in order (what the worker does); returns the time of the last ack."""
    records = [(e.flag.encode(), encode(e)) for e in events]
    return asyncio.run(_publish(bootstrap, topics.flags.name, records))


def wait_until(condition: Callable[[], bool], what: str) -> float:
    """Poll ``condition``; return the seconds it took, fail the test after PATIENCE_S."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > PATIENCE_S:
            pytest.fail(f"{what}: not within {PATIENCE_S} s")
        time.sleep(0.001)
    return time.perf_counter() - start


@pytest.fixture
def client(broker: EmbeddedBroker, topics: Topics) -> Iterator[DriftswitchClient]:
    made = DriftswitchClient(broker.bootstrap, topics=topics, defaults={FLAG: "control"})
    yield made
    made.close(timeout_s=2.0)


def test_a_kill_reaches_the_client_our_provider_and_flagd(
    broker: EmbeddedBroker, topics: Topics, client: DriftswitchClient, tmp_path: Path
) -> None:
    publish(broker.bootstrap, topics, state(1))
    flagd_file = FlagdFile(tmp_path / "flags.json")
    client.on_change(lambda s: flagd_file.update(s))
    client.start()  # returns at once: the defaults serve until the state is read
    assert client.wait_ready(10)
    flagd_file.update(*client.flag_states().values())

    changes: list[EventDetails] = []
    api.set_provider_and_wait(DriftswitchProvider(client), domain="ds")
    api.set_provider_and_wait(
        FlagdProvider(
            resolver_type=ResolverType.FILE, offline_flag_source_path=str(flagd_file.path)
        ),
        domain="flagd",
    )
    try:
        ours, flagd = api.get_client("ds"), api.get_client("flagd")
        ours.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changes.append)

        def served(get: Callable[[str], str | None]) -> dict[str, str | None]:
            return {key: get(key) for key in KEYS}

        def via(of_client: OpenFeatureClient) -> Callable[[str], str | None]:
            return lambda key: (
                of_client.get_string_details(
                    FLAG, "fallback", EvaluationContext(targeting_key=key)
                ).variant
            )

        before = served(lambda key: client.variant(FLAG, key))
        assert before == served(via(ours)) == served(via(flagd))
        assert set(before.values()) == {"control", "candidate"}
        details = ours.get_string_details(FLAG, "x", EvaluationContext(targeting_key="user-1"))
        assert (details.reason, details.flag_metadata) == (Reason.SPLIT, {"version": 1})

        ours_get, flagd_get = via(ours), via(flagd)
        consumers: dict[str, Callable[[str], str | None]] = {
            "client": lambda key: client.variant(FLAG, key),
            "openfeature provider": ours_get,
            "flagd provider (file)": flagd_get,
        }
        sample = KEYS[:100]
        acked = publish(broker.bootstrap, topics, state(2, killed=True))
        times: dict[str, float] = {}
        while len(times) < len(consumers):
            for name, get in consumers.items():
                if name not in times and all(get(k) == "control" for k in sample):
                    times[name] = time.perf_counter() - acked
            if time.perf_counter() - acked > PATIENCE_S:
                pytest.fail(f"still serving the killed variant after {PATIENCE_S} s: {times}")
        print("\nkill propagation, seconds after the broker acknowledged it:", times)

        after = served(lambda key: client.variant(FLAG, key))
        assert after == served(ours_get) == served(flagd_get)
        assert set(after.values()) == {"control"}
        assert [c.flags_changed for c in changes] == [[FLAG]]
    finally:
        api.clear_providers()


def test_versions_not_newer_than_the_held_one_are_ignored(
    broker: EmbeddedBroker, topics: Topics, client: DriftswitchClient
) -> None:
    seen: list[int] = []
    client.on_change(lambda s: seen.append(s.version))
    older_than_held = state(2, candidate_weight=90)
    same_version_other_content = state(3, candidate_weight=10)
    publish(broker.bootstrap, topics, state(1), state(3), older_than_held)
    publish(broker.bootstrap, topics, same_version_other_content)
    asyncio.run(_publish(broker.bootstrap, topics.flags.name, [(FLAG.encode(), b"{not json")]))
    client.start()  # returns at once: the defaults serve until the state is read
    assert client.wait_ready(10)
    held = client.flag_state(FLAG)
    assert held == state(3)
    publish(broker.bootstrap, topics, state(4, candidate_weight=70))
    wait_until(lambda: seen[-1:] == [4], "version 4 applied")
    stats = client.stats()
    assert seen == [3, 4]  # the first read reports the current state only
    assert (stats.stale_versions_ignored, stats.bad_flag_records) == (2, 1)
    expected = Fractional.from_event(state(4, candidate_weight=70))
    assert all(client.variant(FLAG, k) == expected.variant(k) for k in KEYS)


def test_the_first_read_serves_defaults_then_only_each_flags_current_state(
    broker: EmbeddedBroker, topics: Topics, client: DriftswitchClient
) -> None:
    """A flag with a long history (its candidate killed and restored 1,000 times, killed
    last): while the topic is read the defaults serve, never a historical state, and on_change
    fires once per flag, with the state read last."""
    versions = 2_000
    history = [state(v, killed=v % 2 == 0, candidate_weight=100) for v in range(1, versions + 1)]
    other = [
        state(v).model_copy(update={"flag": "other"}) for v in range(1, 11)
    ]  # a second flag, interleaved with the first
    records = [(e.flag.encode(), encode(e)) for e in history[:1_000] + other + history[1_000:]]

    async def publish_all() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        try:
            sent = [await producer.send(topics.flags.name, v, key=k) for k, v in records]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(publish_all())
    seen: list[tuple[str, int]] = []
    client.on_change(lambda s: seen.append((s.flag, s.version)))
    client.start()
    served: set[str | None] = set()
    while not client.bootstrapped:
        served.add(client.variant(FLAG, "user-1"))
        assert client.flag_state(FLAG) is None
        if client.wait_ready(0.001):
            break
    assert served <= {"control"}
    assert sorted(seen) == [("other", 10), (FLAG, versions)]
    assert client.variant(FLAG, "user-1") == "control"  # the last state killed the candidate
    assert client.stats().flag_updates == 2


def test_events_are_recorded_keyed_and_co_partitioned(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    n = 3_000
    with DriftswitchClient(broker.bootstrap, topics=topics, follow_flags=False) as client:
        for i in range(n):
            assert client.record_prediction(f"r{i}", FLAG, "control", i % 2, score=0.25, ts=1e9 + i)

        async def outcomes() -> None:
            for i in range(n - 1):
                assert await client.record_outcome_async(f"r{i}", 1, ts=2e9)
            assert await client.record_async(OutcomeEvent(request_id=f"r{n - 1}", ts=2e9, label=0))
            assert await client.flush_async()

        asyncio.run(outcomes())
        stats = client.stats()
    assert (stats.recorded, stats.sent, stats.dropped, stats.failed) == (2 * n, 2 * n, 0, 0)

    async def read(topic: str) -> dict[str, tuple[int, bytes]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        got: dict[str, tuple[int, bytes]] = {}
        try:
            while len(got) < n:
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    for record in records:
                        got[record.key.decode()] = (tp.partition, record.value)
        finally:
            await consumer.stop()
        return got

    predictions = asyncio.run(read(topics.predictions.name))
    outcomes_read = asyncio.run(read(topics.outcomes.name))
    assert predictions.keys() == outcomes_read.keys() == {f"r{i}" for i in range(n)}
    assert all(predictions[k][0] == outcomes_read[k][0] for k in predictions)
    assert len({p for p, _ in predictions.values()}) == topics.predictions.partitions
    first = decode_prediction(predictions["r7"][1])
    assert (first.flag, first.variant, first.prediction, first.score, first.ts) == (
        FLAG,
        "control",
        1,
        0.25,
        1e9 + 7,
    )
    assert decode_outcome(outcomes_read[f"r{n - 1}"][1]).label == 0


def test_the_client_keeps_serving_and_buffering_when_the_broker_is_gone() -> None:
    local = EmbeddedBroker(stop_timeout=0.5).start()  # stopped below: a crash, not a drain
    topics = Topics.with_prefix("gone", partitions=2)
    try:
        asyncio.run(ensure_topics(local.bootstrap, topics))
        publish(local.bootstrap, topics, state(1, candidate_weight=30))
        client = DriftswitchClient(
            local.bootstrap,
            topics=topics,
            defaults={FLAG: "control"},
            buffer_size=1_000,
            max_batch=100,
            producer_options={"request_timeout_ms": 2_000},
        )
        client.start()  # returns at once: the defaults serve until the state is read
        assert client.wait_ready(10)
        known = {k: client.variant(FLAG, k) for k in KEYS}
        assert client.flush()
    finally:
        local.stop()
    dead_address = local.bootstrap
    try:
        assert {k: client.variant(FLAG, k) for k in KEYS} == known
        recorded = [client.record_prediction(f"d{i}", FLAG, "control", 1) for i in range(5_000)]
        stats = client.stats()
        assert stats.recorded == 5_000 == sum(recorded) + stats.dropped
        assert stats.dropped >= 5_000 - stats.buffer_size - 2 * client.max_batch
        assert stats.buffered + stats.in_flight + stats.sent + stats.failed == sum(recorded)
    finally:
        client.close(timeout_s=1.0)
    closed = client.stats()
    assert (closed.buffered, closed.in_flight, closed.sent) == (0, 0, 0)
    assert closed.failed + closed.dropped == 5_000

    # A client that never reached a broker serves defaults and buffers up to its bound.
    cold = DriftswitchClient(
        dead_address, topics=topics, defaults={FLAG: "control"}, buffer_size=100
    )
    try:
        assert cold.start(wait_s=1.0) is False
        assert {cold.variant(FLAG, k) for k in KEYS} == {"control"}
        assert cold.variant("never-published", "user-1") is None
        assert cold.resolve(FLAG, "user-1").reason == "unknown"
        accepted = [cold.record_outcome(f"o{i}", True) for i in range(250)]
        stats = cold.stats()
        assert (sum(accepted), stats.buffered, stats.dropped, stats.sent) == (100, 100, 150, 0)
        assert stats.staleness_s == float("inf")
    finally:
        cold.close(timeout_s=0.5)


def test_events_recorded_during_an_outage_wait_in_the_buffer_and_arrive_once_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker is gone for longer than the producer's request timeout, then back on the same
    port: what was recorded meanwhile, and what was handed to the producer when it went, is
    delivered once, in each partition's order, and the outage is logged once."""
    caplog.set_level(logging.INFO, logger="driftswitch.streams.client.client")
    first = EmbeddedBroker(stop_timeout=0.5).start()  # stopped below: a crash, not a drain
    port = first.port
    # Four partitions: a topic the producer auto-creates on the new broker has as many.
    topics = Topics.with_prefix("outage", partitions=4)
    second: EmbeddedBroker | None = None
    client = DriftswitchClient(
        first.bootstrap,
        topics=topics,
        follow_flags=False,
        max_batch=50,
        producer_options={"request_timeout_ms": 1_000},
    )
    try:
        asyncio.run(ensure_topics(first.bootstrap, topics))
        client.start()
        assert client.record_prediction("warm", FLAG, "control", 1)
        assert client.flush()
        first.stop()
        names = [f"r{i:04d}" for i in range(400)]
        for name in names[:200]:
            assert client.record_prediction(name, FLAG, "control", 1)
        # Wait until the producer gave up on a batch (its request timeout passed): the batch
        # then either failed (counted) or went back to the buffer (the client says it is not
        # connected).
        wait_until(
            lambda: client.stats().failed > 0 or not client.stats().producer_connected,
            "a batch given up",
        )
        for name in names[200:]:
            assert client.record_prediction(name, FLAG, "control", 1)
        during = client.stats()
        assert (during.failed, during.dropped) == (0, 0)
        second = EmbeddedBroker(port=port, stop_timeout=0.5).start()
        asyncio.run(ensure_topics(second.bootstrap, topics))
        assert client.flush(PATIENCE_S)
        stats = client.stats()
        read = asyncio.run(read_partitions(as_settings(second.bootstrap), topics.predictions.name))
    finally:
        client.close(timeout_s=2.0)
        first.stop()
        if second is not None:
            second.stop()
    assert (stats.sent, stats.failed, stats.dropped, stats.buffered) == (401, 0, 0, 0)
    by_partition = [[r.key.decode() for r in records] for records in read.records.values()]
    arrived = [key for keys in by_partition for key in keys]
    assert sorted(arrived) == names  # every one, once ("warm" went to the first broker)
    assert all(keys == sorted(keys) for keys in by_partition)  # in the order recorded
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach Kafka" in m for m in messages) == 1
    assert not [m for m in messages if "not delivered" in m or "still cannot" in m]
    assert sum("reached Kafka" in m and "after" in m for m in messages) == 1


def sockets_to(port: int) -> list[int]:
    """The file descriptors of this process that are TCP sockets connected to ``port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()  # sl, local address, remote address, st, ..., inode (10th)
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:[") and target[len("socket:[") : -1] in inodes:
                found.append(int(fd))
    return found


def test_close_against_a_frozen_broker_leaves_no_socket_thread_or_loop_and_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker's process is stopped (SIGSTOP: its connections stay open, nothing answers)
    while the producer holds unacknowledged events: close() returns within its timeout plus
    CLOSE_MARGIN_S, counts those events as lost and says so, and leaves no socket to the
    broker, no thread and no open event loop. aiokafka's producer stop waits for its batches
    before it closes its connections; given up at a timeout, it left its socket open."""
    caplog.set_level(logging.WARNING, logger="driftswitch.streams.client.client")
    # A broker of its own: its port tells this client's sockets from any other's.
    local = EmbeddedBroker(stop_timeout=2.0).start()
    topics = Topics.with_prefix("frozen", partitions=2)
    timeout_s = 2.0
    try:
        asyncio.run(ensure_topics(local.bootstrap, topics))
        publish(local.bootstrap, topics, state(1))
        client = DriftswitchClient(local.bootstrap, topics=topics, defaults={FLAG: "control"})
        client.start()
        assert client.wait_ready(PATIENCE_S)  # the flags consumer is connected and following
        assert client.record_prediction("before", FLAG, "control", 1)
        assert client.flush(PATIENCE_S)  # and so is the producer
        assert len(sockets_to(local.port)) >= 2
        loop = client._loop
        assert loop is not None
        os.kill(local.pid, signal.SIGSTOP)
        try:
            for i in range(100):
                assert client.record_prediction(f"frozen-{i}", FLAG, "control", 1)
            wait_until(lambda: client.stats().in_flight == 100, "events handed to the producer")
            started = time.monotonic()
            client.close(timeout_s=timeout_s)
            took = time.monotonic() - started
            left = sockets_to(local.port)
        finally:
            os.kill(local.pid, signal.SIGCONT)
    finally:
        local.stop()
    assert left == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("driftswitch-client")] == []
    assert loop.is_closed()
    assert took <= timeout_s + DriftswitchClient.CLOSE_MARGIN_S
    stats = client.stats()
    assert (stats.sent, stats.failed, stats.buffered, stats.in_flight) == (1, 100, 0, 0)
    assert sum("100 event(s) lost" in r.getMessage() for r in caplog.records) == 1


def test_a_missing_flags_topic_is_logged_once_and_looked_for_less_and_less_often(
    broker: EmbeddedBroker,
    topics: Topics,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client whose flags topic does not exist (a wrong prefix) says so once, naming the
    topic, serves the defaults, polls the broker's metadata at a growing interval, and picks
    the topic up once it exists."""
    caplog.set_level(logging.INFO, logger="driftswitch.streams.client.client")
    # A look at the broker's metadata: a consumer's start, or its topics() (a metadata request).
    polls: list[float] = []
    start, topics_of = AIOKafkaConsumer.start, AIOKafkaConsumer.topics

    async def counted_start(consumer: AIOKafkaConsumer) -> None:
        polls.append(time.monotonic())
        await start(consumer)

    async def counted_topics(consumer: AIOKafkaConsumer) -> set[str]:
        polls.append(time.monotonic())
        return await topics_of(consumer)

    monkeypatch.setattr(AIOKafkaConsumer, "start", counted_start)
    monkeypatch.setattr(AIOKafkaConsumer, "topics", counted_topics)
    wrong = Topics.with_prefix(f"{topics.flags.name}-wrong", partitions=1)
    client = DriftswitchClient(
        broker.bootstrap, topics=wrong, defaults={FLAG: "control"}, record_events=False
    )
    client.start()
    try:
        wait_until(lambda: len(polls) >= 5, "five looks for the topic")
        assert client.variant(FLAG, "user-1") == "control"
        assert not client.bootstrapped
        gaps = [b - a for a, b in itertools.pairwise(polls)]
        # The waits between looks double from 0.2 s: 0.2, 0.4, 0.8, then 1.6 s at least.
        assert gaps[3] >= 1.6
        asyncio.run(ensure_topics(broker.bootstrap, wrong))
        publish(broker.bootstrap, wrong, state(1, killed=True))
        assert client.wait_ready(PATIENCE_S)
        assert client.flag_state(FLAG) == state(1, killed=True)
    finally:
        client.close(timeout_s=2.0)
    messages = [r.getMessage() for r in caplog.records]
    missing = [m for m in messages if "does not exist" in m]
    assert len(missing) == 1
    assert repr(wrong.flags.name) in missing[0]
    assert "prefix" in missing[0]
    assert sum("appeared after" in m for m in messages) == 1


def test_events_with_a_nan_or_infinite_number_are_not_sent_and_count_as_failed(
    broker: EmbeddedBroker, topics: Topics, read_json: Callable[[str], list[Any]]
) -> None:
    """JSON has no nan: written as null, a nan score would arrive as "no score" and a nan
    prediction as "prediction missing". The contract wants every number finite, so the client
    refuses such events as it refuses any it cannot encode: not sent, counted as failed."""
    nan, inf = float("nan"), float("inf")
    with DriftswitchClient(broker.bootstrap, topics=topics, follow_flags=False) as client:
        assert client.record_prediction("nan-score", FLAG, "control", 1, score=nan)
        assert client.record_prediction("inf-latency", FLAG, "control", 1, latency_ms=inf)
        assert client.record_prediction("nan-feature", FLAG, "control", 1, features={"x": nan})
        assert client.record_prediction("nan-prediction", FLAG, "control", nan)
        assert client.record_outcome("nan-label", -inf)
        assert client.record_prediction("fine", FLAG, "control", 0.5, score=0.5)
        assert client.record_outcome("fine", 1)
        assert client.flush()
        stats = client.stats()
    assert (stats.sent, stats.failed, stats.dropped) == (2, 5, 0)
    sent = read_json(topics.predictions.name) + read_json(topics.outcomes.name)
    assert sorted(str(e["request_id"]) for e in sent) == ["fine", "fine"]


def test_callbacks_and_provider_events_run_for_each_accepted_change(
    broker: EmbeddedBroker, topics: Topics, client: DriftswitchClient
) -> None:
    provider = DriftswitchProvider(client, manage_client=True)
    emitted: list[tuple[ProviderEvent, list[str] | None]] = []
    done = threading.Event()

    def on_emit(_: object, event: ProviderEvent, details: object) -> None:
        emitted.append((event, getattr(details, "flags_changed", None)))
        done.set()

    def broken(_: FlagChangeEvent) -> None:
        raise RuntimeError("a consumer's bug")

    client.on_change(broken)
    provider.attach(on_emit)
    provider.initialize(EvaluationContext())
    try:
        assert client.bootstrapped
        publish(broker.bootstrap, topics, state(1))
        wait_until(done.is_set, "configuration changed emitted")
        assert emitted == [(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, [FLAG])]
        details = provider.resolve_string_details(
            FLAG, "x", EvaluationContext(targeting_key="user-3")
        )
        assert details.variant == Fractional.from_event(state(1)).variant("user-3")
        assert details.reason == Reason.SPLIT
        mismatch = provider.resolve_boolean_details(FLAG, False, EvaluationContext("user-3"))
        assert (mismatch.value, mismatch.reason, mismatch.error_code) == (
            False,
            Reason.ERROR,
            "TYPE_MISMATCH",
        )
        missing = provider.resolve_string_details("nope", "x", EvaluationContext("user-3"))
        assert (missing.value, missing.error_code) == ("x", "FLAG_NOT_FOUND")
    finally:
        provider.shutdown()


def _in_forked_child(client: DriftswitchClient, out: Any) -> None:
    """Runs in a child forked from a process whose client was running (gunicorn --preload)."""
    started = client.stats()  # the parent's buffer and counts are the parent's
    served = client.variant(FLAG, "user-1")  # the first use starts the client here
    ready = client.wait_ready(PATIENCE_S)
    recorded = [client.record_prediction(f"child-{i}", FLAG, "control", i) for i in range(5)]
    flushed = client.flush(PATIENCE_S)
    stats = client.stats()
    client.close(timeout_s=2.0)
    out.put((started.recorded, started.buffered, served, ready, recorded, flushed, stats.sent))


def test_a_client_forked_while_running_starts_again_in_the_child(
    broker: EmbeddedBroker, topics: Topics, read_json: Callable[[str], list[Any]]
) -> None:
    import multiprocessing

    publish(broker.bootstrap, topics, state(1), state(2, killed=True))
    fork = multiprocessing.get_context("fork")
    out = fork.Queue()
    with DriftswitchClient(broker.bootstrap, topics=topics, defaults={FLAG: "control"}) as client:
        assert client.wait_ready(PATIENCE_S)
        assert client.record_prediction("parent-0", FLAG, "control", 0)
        child = fork.Process(target=_in_forked_child, args=(client, out))
        child.start()
        started, buffered, served, ready, recorded, flushed, sent = out.get(timeout=2 * PATIENCE_S)
        child.join(PATIENCE_S)
        assert client.flush(PATIENCE_S)
    assert child.exitcode == 0
    assert (started, buffered) == (0, 0)  # nothing of the parent's sent twice
    assert served == "control"  # the killed candidate: the states read before the fork serve
    assert ready  # and the child read the flags topic itself
    assert recorded == [True] * 5
    assert (flushed, sent) == (True, 5)
    ids = sorted(str(e["request_id"]) for e in read_json(topics.predictions.name))
    assert ids == ["child-0", "child-1", "child-2", "child-3", "child-4", "parent-0"]
