"""Helpers for end-to-end tests of a deployment: a ``driftswitch run`` child process, topic reads.

Integration tests and benchmarks drive the real worker command, not an in-process object, so
they see what an operator sees: :class:`WorkerProcess` starts ``driftswitch run --broker ...``
on a :class:`~driftswitch.streams.contract.topics.Topics` set (its prefix and partitions passed
through ``DRIFTSWITCH_TOPIC_*``), with its HTTP port and a log file, and polls ``/healthz``.
:func:`read_topic` and :func:`flag_changes` read a one-partition topic to its end (the flags
topic is the audit log of every decision); :func:`event_records` turns events into the keyed
records a model service produces; :func:`wait_until` polls any condition; :func:`load_file`
loads a Python file that is not part of a package (a benchmark script); :func:`machine_speed`
is the yardstick the benchmarks print beside their figures.

Failures raise :class:`AssertionError` with the worker's log tail, so a test framework reports
them as test failures with the reason in view.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import orjson

from driftswitch.streams.contract.events import (
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
    encode,
)
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka.connect import read_partitions
from driftswitch.streams.kafka.settings import KafkaSettings, as_settings
from driftswitch.streams.tools.broker import free_port
from driftswitch.streams.tools.demo import DEMO_GUARDRAILS

__all__ = [
    "KILL_ON_ACCURACY",
    "WorkerProcess",
    "caught_up",
    "event_records",
    "flag_changes",
    "read_topic",
    "wait_until",
]

_LOG_TAIL = 4000

#: The guardrail most end-to-end tests give :func:`~driftswitch.streams.tools.simulate.config_yaml`,
#: the demo's: kill the candidate once its accuracy drifts from 0.90 towards 0.80 (Bernoulli
#: CUSUM, a false alarm every 100,000 observations on average, no decision before 200 samples).
KILL_ON_ACCURACY = DEMO_GUARDRAILS

#: Guardrails for a flag ``ranker`` whose candidate loses accuracy: a CUSUM kill and a
#: sequential comparison against control that warns (the stage and merge tests).
ACCURACY_GUARDRAILS = """\
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 10000}
        min_samples: 100
        action: kill
      - name: candidate-vs-control
        variant: candidate
        compare_to: control
        metric: accuracy
        detector: {kind: sequential, alpha: 0.05}
        action: warn
"""
#: The same plus a latency hold on the candidate and an error-rate kill on a shadow variant
#: (the engine tests: several guardrails of several kinds decide on one stream).
ENGINE_GUARDRAILS = (
    ACCURACY_GUARDRAILS
    + """\
      - name: candidate-latency
        variant: candidate
        metric: latency_ms
        detector: {kind: cusum_mean, shift: 1.0, warmup: 50, arl0: 1000}
        action: hold
      - name: shadow-errors
        variant: shadow
        metric: error_rate
        detector: {kind: glr, min_drop: 0.05, baseline: 0.98, arl0: 1000}
        action: kill
"""
)


class WorkerProcess:
    """``driftswitch run --broker ...`` as a child process, with its HTTP port and log file.

    Parameters
    ----------
    bootstrap
        The broker's ``host:port``.
    topics
        The topics the worker uses; their prefix names the consumer group (``<prefix>-workers``).
    config
        The worker's YAML config file.
    log
        Where the child's stdout and stderr go (appended: a restarted worker can share it).
    env
        Extra environment variables; a ``None`` value removes the variable.
    args
        Extra command-line arguments, e.g. ``["--snapshot-interval", "0.5"]``.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        config: Path,
        log: Path,
        *,
        env: Mapping[str, str | None] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.log = log
        self.topics = topics
        prefix = topics.flags.name.removesuffix(".flags.v1")
        child_env = {
            **os.environ,
            "DRIFTSWITCH_TOPIC_PREFIX": prefix,
            "DRIFTSWITCH_TOPIC_PARTITIONS": str(topics.predictions.partitions),
        }
        for name, value in (env or {}).items():
            if value is None:
                child_env.pop(name, None)
            else:
                child_env[name] = value
        argv = [
            str(Path(sys.executable).with_name("driftswitch")),
            "run",
            "--config",
            str(config),
            "--broker",
            bootstrap,
            "--web-port",
            str(self.port),
            "--group",
            f"{prefix}-workers",
            *args,
        ]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=child_env, stdout=out, stderr=subprocess.STDOUT)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The worker's HTTP API root."""
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any] | None:
        """``GET /healthz``'s body, or ``None`` while the worker does not answer 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                body: dict[str, Any] = orjson.loads(r.read())
                return body
        except OSError:  # refused, reset, timed out, or an HTTP error status (URLError)
            return None

    def get(self, path: str) -> Any:
        """The JSON body of ``GET path``; an HTTP error raises."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as r:
            return orjson.loads(r.read())

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """``(status, headers, JSON body)`` of one request; HTTP errors are answers too."""
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), orjson.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), orjson.loads(err.read())

    def wait_for(self, what: str, cond: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        """Poll ``/healthz`` until ``cond`` holds; fail early if the worker exits."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}):\n{self.log.read_text()}"
                )
            status = self.health()
            if status is not None and cond(status):
                return
            time.sleep(0.2)
        raise AssertionError(
            f"worker: {what} not reached in {timeout} s; last /healthz: {status}\n"
            f"{self.log.read_text()[-_LOG_TAIL:]}"
        )

    def wait_caught_up(self, total: int, timeout: float) -> None:
        """Wait until the worker has read ``total`` input records and decided on all of them
        (:func:`caught_up`)."""
        self.wait_for(
            f"all {total} input records read and decided",
            lambda s: caught_up(s, self.topics, total),
            timeout,
        )

    def wait_active(self, timeout: float = 60) -> None:
        """Wait until this worker holds the lease (``role`` is ``active``)."""
        self.wait_for("active", lambda s: s.get("role") == "active", timeout)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; a no-op once the child has exited."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(
    what: str,
    cond: Callable[[], bool],
    timeout: float = 30,
    *,
    interval: float = 0.1,
    log: Path | None = None,
) -> None:
    """Poll ``cond`` until it holds; after ``timeout`` seconds fail, with ``log``'s tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    tail = "" if log is None else f":\n{log.read_text()[-_LOG_TAIL:]}"
    raise AssertionError(f"{what}: not reached in {timeout} s{tail}")


async def until(what: str, cond: Callable[[], bool], limit_s: float = 60) -> None:
    """:func:`wait_until` inside an event loop (for a stage running in it): poll ``cond()``
    every 0.1 s until it holds; AssertionError after ``limit_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, f"{what}: not reached in {limit_s} s"
        await asyncio.sleep(0.1)


def caught_up(status: Mapping[str, Any], topics: Topics, total: int) -> bool:
    """Whether the process whose ``/healthz`` body is ``status`` has read all ``total`` records
    of the input topics (predictions and outcomes, from offset 0) and decided on everything
    they hold, so that its flag changes are published and its counts final.

    - ``--stage single``: its count of input records is ``total`` (it decides as it reads).
    - ``--stage all`` (the default): the join stage's read positions on the input topics add up
      to ``total`` (its count of observations then covers them: it is counted before the
      batch is sent); every observations partition's merge has heard every join partition say
      it is idle, with nothing buffered (``all_idle``: a batch that read new input is never
      idle, so each partition's last observations arrived before); and the decide stage has
      decided as many observations as the join stage sent (its count grows only once a
      batch's flag changes are published).

    Re-routed records (a producer whose partitioner is not librdkafka's) are joined in the
    partition they are re-routed to, after the read positions already cover them; ``all_idle``
    covers them too, since a join partition is idle only once the others' re-routing horizons
    are. Observations dropped as duplicates (a join partition replayed after a restart) are
    never decided: this does not hold after such a restart.
    """
    if status.get("role") != "active":
        return False
    join = status.get("join_stage")
    if join is None:
        if status.get("stage") != "single":
            raise ValueError(f"caught_up: a {status.get('stage')!r} process has no input count")
        return bool(status["records"] == total)
    inputs = (topics.predictions.name, topics.outcomes.name)
    read = sum(
        o for positions in join["read"].values() for t, o in positions.items() if t in inputs
    )
    merge = status["merge"]
    return bool(
        read == total
        and merge["partitions"]
        and all(p["all_idle"] for p in merge["partitions"].values())
        and merge["buffered"] == 0
        and status["observations"] >= join["observations"]
    )


def read_topic(bootstrap: str | KafkaSettings, topic: str, partition: int = 0) -> list[Any]:
    """Every record of one partition of ``topic``, from the beginning to the end.

    "The end" as :func:`~driftswitch.streams.kafka.connect.read_to_end` reads it (the high
    watermark of the broker's fetch answers, since Tansu under-reports end offsets).
    """

    async def read() -> list[Any]:
        found = await read_partitions(as_settings(bootstrap), topic, [partition])
        return next(iter(found.records.values()))

    return asyncio.run(read())


def flag_changes(bootstrap: str, topics: Topics) -> list[FlagChangeEvent]:
    """Every flag change published on the (one-partition) flags topic, oldest first."""
    return [
        FlagChangeEvent.model_validate_json(r.value)
        for r in read_topic(bootstrap, topics.flags.name)
    ]


def event_records(
    topics: Topics, events: Iterable[PredictionEvent | OutcomeEvent]
) -> list[tuple[str, bytes, bytes]]:
    """``(topic, key, value)`` per event, as a model service produces it: keyed by request id."""
    return [
        (
            topics.predictions.name if isinstance(e, PredictionEvent) else topics.outcomes.name,
            e.request_id.encode(),
            encode(e),
        )
        for e in events
    ]


#: Join settings for tests of the staged deployment: a topic read to its end stops holding the
#: watermark back only after 5 s (not 2), so a loaded test machine that starves a producer for a
#: moment does not make observations late.
STAGE_TEST_JOIN = "join:\n  idle_after: 5\n"


def produce_in_event_order(
    bootstrap: str, topics: Topics, events: Iterable[Any], *, outcomes_by: str = "murmur2"
) -> None:
    """Write ``events`` in the given order, as model services write them while things happen:
    predictions with confluent-kafka's default partitioner (CRC-32 of the key: their join
    partition), outcomes where a Java or aiokafka producer would put them (murmur2 of the key),
    so that a share of them sits outside its join partition and is re-routed; with
    ``outcomes_by="crc32"`` outcomes too go to their join partition (nothing is re-routed)."""
    from confluent_kafka import Producer

    from driftswitch.streams.contract.events import PredictionEvent, encode
    from driftswitch.streams.kafka.groups import partition_for

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    n = topics.outcomes.partitions
    for ev in events:
        key = ev.request_id.encode()
        while True:
            try:
                if isinstance(ev, PredictionEvent):
                    producer.produce(topics.predictions.name, encode(ev), key)
                elif outcomes_by == "crc32":
                    producer.produce(topics.outcomes.name, encode(ev), key)
                else:
                    where = partition_for(key, n)
                    producer.produce(topics.outcomes.name, encode(ev), key, partition=where)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60) != 0:
        raise RuntimeError("records still unacknowledged after 60 s")


async def recreate_inputs(bootstrap: str, topics: Topics) -> None:
    """Delete the input topics (predictions, outcomes) and create them again, empty: what a
    broker that lost its data looks like to a worker."""
    from driftswitch.streams.kafka import connect as kafka
    from driftswitch.streams.kafka import ensure_topics
    from driftswitch.streams.kafka.settings import as_settings

    admin = await kafka.open_admin(as_settings(bootstrap))
    try:
        await admin.delete_topics([topics.predictions.name, topics.outcomes.name])
    finally:
        await admin.close()
    for _ in range(50):  # deletion settles asynchronously on some brokers
        try:
            await ensure_topics(bootstrap, topics)
            return
        except Exception:
            await asyncio.sleep(0.2)
    await ensure_topics(bootstrap, topics)


def machine_speed(rounds: int = 5) -> float:
    """Operations per CPU-second of a fixed pure-Python workload shaped like the join's hot path
    (200,000 string keys into and out of an ``OrderedDict``, a tuple per entry), best of
    ``rounds``.

    The benchmarks print it beside their figures: the development machine's speed moves by up
    to 2.5 times between days (docs/performance.md), and a figure is comparable with another
    day's only together with this. It moves within minutes too (one evening: 2.3-2.7M and
    3.7-3.8M from one call to the next, in two levels), so it says roughly what state the
    machine was in near a figure; it is not a factor to correct figures by. A yardstick, not a
    target.
    """
    keys = [f"req-{i:07d}" for i in range(200_000)]
    best = 0.0
    for _ in range(rounds):
        pending: OrderedDict[str, tuple[float, str, str]] = OrderedDict()
        start = time.process_time()
        for i, key in enumerate(keys):
            pending[key] = (float(i), "flag/variant", key)
        for key in keys:
            del pending[key]
        elapsed = time.process_time() - start
        if elapsed > 0:
            best = max(best, 2 * len(keys) / elapsed)
    return best


def load_file(path: Path, name: str) -> ModuleType:
    """The Python file at ``path`` (a benchmark script, a module as it was at another revision)
    loaded as a module named ``name``, registered in ``sys.modules`` (dataclasses look their
    module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
