"""The Python client for model services: record events, follow flags, assign variants.

A model service calls :meth:`DriftswitchClient.variant` on every request and records one
prediction (and later one outcome) per request. Neither may slow the request down or fail it
because driftswitch or Kafka is down, so:

- recording only appends to a bounded in-memory buffer (``O(1)``, never blocks); a background
  thread with its own asyncio loop drains it into the predictions/outcomes topics with aiokafka,
  in batches keyed by ``request_id`` and placed in the request's join partition (CRC-32 of the
  key, as librdkafka's default partitioner places it:
  :mod:`driftswitch.streams.contract.placement`), so a prediction and its outcome sit in the same
  partition and the join stage re-routes nothing of this client's. Records placed otherwise (a
  Java producer's murmur2) are still joined exactly, at the cost of a re-route). While the broker
  is unreachable the buffer holds up to ``buffer_size`` events (those handed to the producer
  included); beyond that new events are dropped and counted (:meth:`DriftswitchClient.stats`).
  An event whose send failed for a passing reason (no connection, no answer within
  ``request_timeout_ms``) goes back to the front of the buffer, in its partition's order, and
  is sent once the broker answers; only what the broker refuses for good counts as failed;
- flag state is read from the compacted flags topic from its beginning up to the high
  watermark of the broker's fetch answers (the embedded Tansu broker never compacts and reports
  the end offset of a partition as its last batch's base offset, so "read up to the end offset"
  would stop short: ``tests/integration/test_tansu_quirks.py``), then followed. During that
  first read only the newest state per flag is kept; they are applied together once it ends
  (then :attr:`DriftswitchClient.bootstrapped`), so the defaults serve until then and no
  historical state is ever served or reported to :meth:`DriftswitchClient.on_change`. A record
  whose version is not newer than the held one is ignored. The cache survives a broker outage:
  the last known state keeps being served. A flags topic that does not exist (a wrong prefix)
  is logged once, then looked for at a growing interval while the defaults serve;
- :meth:`DriftswitchClient.variant` is :class:`~driftswitch.streams.contract.assign.Fractional`
  over the cached state (bit-for-bit flagd ``fractional``), a killed variant is never served,
  an unknown flag gets its configured default, and nothing on that path raises.

Imports stay light (aiokafka, pydantic, cbor2, mmh3, orjson, and for targeting rules the pure
Python json_logic and semver): no numpy or river.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import orjson
from pydantic import JsonValue, ValidationError

from driftswitch.streams.contract.assign import Fractional
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.interleave import team_draft
from driftswitch.streams.contract.placement import key_partitioner
from driftswitch.streams.contract.targeting import evaluate, served_targeting, variant_name
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka.settings import (
    KafkaConnectError,
    KafkaSettings,
    SecurityLike,
    security_of,
)

__all__ = ["ClientStats", "DriftswitchClient", "Resolution"]

log = logging.getLogger(__name__)

_THREAD_NAME = "driftswitch-client"

#: Clients still running, closed (with a bounded wait) when the interpreter exits.
_RUNNING: weakref.WeakSet[DriftswitchClient] = weakref.WeakSet()
_atexit_registered = False


def _close_at_exit() -> None:
    """Send what running clients still hold (each up to its ``exit_timeout_s``), then stop."""
    for client in list(_RUNNING):
        with contextlib.suppress(Exception):
            client._close_at_exit()


def _after_fork_in_child() -> None:
    """A forked process (gunicorn's ``--preload``, multiprocessing's fork) has none of its
    parent's threads: each running client starts afresh on its first use in the child."""
    for client in list(_RUNNING):
        client._reset_after_fork()
    _RUNNING.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ThreadPerCall(concurrent.futures.ThreadPoolExecutor):
    """The executor of a client's loop, which aiokafka uses to resolve the broker's host name:
    a daemon thread per call. concurrent.futures' pools refuse work once the interpreter exits,
    and the flush at exit (:func:`_close_at_exit`) may still have to connect, so a client that
    had not yet connected lost every event it held when its bootstrap was a host name."""

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        future: Future[_T] = Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=call, name=f"{_THREAD_NAME}-call", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # nothing pooled: each call's thread ends with its call


class _QuietKafkaLogs(logging.Filter):
    """Drops aiokafka's own records made on a client's thread: the client reports connection
    trouble itself, once and then at a back-off (:class:`_Trouble`), instead of the same failure
    twice on every retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName == _THREAD_NAME and record.levelno < logging.CRITICAL)


_QUIET = _QuietKafkaLogs()


def _quiet_kafka_logs() -> None:
    """Attach the filter to every aiokafka logger there is (filters do not inherit to child
    loggers); called again once the Kafka clients exist, as aiokafka is imported lazily."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "aiokafka"]
    for name in ["aiokafka", *names]:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


class _Trouble:
    """Logs a broker failure once, then again only at a growing interval (30 s doubling to
    10 min), and the recovery once: a client whose broker is down does not flood the log."""

    FIRST_REPEAT_S = 30.0
    MAX_REPEAT_S = 600.0

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.failures = 0
        self.since: float | None = None
        self.next_log = 0.0
        self.interval = self.FIRST_REPEAT_S

    def failed(self, part: str, why: str) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.since is None:
            self.since = now
            self.next_log = now + self.interval
            log.warning(
                "driftswitch: cannot reach Kafka at %s (%s: %s); serving the last known flag "
                "state or the defaults, buffering events, retrying in the background",
                self.bootstrap,
                part,
                why,
            )
        elif now >= self.next_log:
            self.interval = min(2 * self.interval, self.MAX_REPEAT_S)
            self.next_log = now + self.interval
            log.warning(
                "driftswitch: still cannot reach Kafka at %s after %.0f s (%d attempts; %s: %s)",
                self.bootstrap,
                now - self.since,
                self.failures,
                part,
                why,
            )

    def recovered(self) -> None:
        if self.since is None:
            return
        log.info(
            "driftswitch: reached Kafka at %s after %.0f s of failures",
            self.bootstrap,
            time.monotonic() - self.since,
        )
        self.since = None
        self.failures = 0
        self.interval = self.FIRST_REPEAT_S


_T = TypeVar("_T")

#: Why a variant was served (see :class:`Resolution`).
ResolutionReason = Literal["targeting", "split", "static", "default", "unknown", "error"]


@dataclass(frozen=True, slots=True)
class Resolution:
    """One flag evaluation: the variant, its value, and why.

    ``reason`` is ``targeting`` (the flag's targeting rule named the variant), ``split``
    (assigned by the fractional split of the current state), ``static``
    (the state serves one non-default variant to everyone), ``default`` (the state serves its
    default variant to this key: to everyone, or there is no targeting key),
    ``unknown`` (no state held yet; the configured default, if any) or ``error`` (evaluation
    failed; the configured default, if any). ``variant`` is ``None`` only when no state and no
    default is known.
    """

    variant: str | None
    value: JsonValue
    reason: ResolutionReason
    version: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters of one client, for logs, metrics and health checks.

    Every recorded event is, at any moment, exactly one of: ``buffered`` (waiting), ``in_flight``
    (handed to the producer), ``sent`` (acknowledged by the broker), ``failed`` (the broker
    refused it for good, it could not be encoded, or it was still unsent when the client
    closed) or ``dropped`` (the buffer was full, or it was recorded after ``close()``). An event
    the broker did not answer for goes from ``in_flight`` back to ``buffered``, not to
    ``failed``.
    """

    recorded: int
    buffered: int
    in_flight: int
    sent: int
    failed: int
    dropped: int
    buffer_size: int
    producer_connected: bool
    flags: int
    flag_updates: int
    stale_versions_ignored: int
    bad_flag_records: int
    bootstrapped: bool
    staleness_s: float


@dataclass(frozen=True, slots=True)
class _FlagEntry:
    state: FlagChangeEvent
    split: Fractional
    only: str | None  # the variant everyone gets, if the split has just one
    rule: dict[str, Any] | None  # the served targeting, when the flag has a rule (not pinned)


# A buffered event: (topic role, key, payload); payload is a dict or a model encoded later.
_Pending = tuple[str, bytes, "dict[str, Any] | PredictionEvent | OutcomeEvent"]


@dataclass(slots=True)
class _Delivery:
    """What became of one partition's share of a send: counts, and the records (by index in
    the share taken from the buffer) that go back to the buffer."""

    sent: int = 0
    failed: int = 0
    retry: list[int] = field(default_factory=list)
    trouble: Exception | None = None  # why records went back to the buffer
    broken: Exception | None = None  # the producer is unusable (make a new one)


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first nan or infinite float in ``value`` (``None`` if there is none)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} = {value}"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _payload_bytes(payload: dict[str, Any] | PredictionEvent | OutcomeEvent) -> bytes:
    """The event as JSON; ``ValueError`` for a nan or infinite number.

    orjson writes those as ``null``, which the schema reads as "absent" (a nan score would
    vanish) or as a missing required field (a nan prediction would be dead-lettered as
    "required"): the contract wants every number finite, so such an event is refused here,
    on the client's thread, where it is counted as failed and logged. The scan runs only
    when the JSON holds a ``null``, which the client's own fields never do.
    """
    if isinstance(payload, dict):
        value = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        if b"null" in value:
            where = _non_finite(payload, "")
            if where is not None:
                raise ValueError(f"{where}: every number in an event must be finite")
        return value
    return orjson.dumps(payload.model_dump(mode="json", exclude_none=True))


class DriftswitchClient:
    """Records prediction/outcome events and serves flag variants from the flags topic.

    Parameters
    ----------
    bootstrap
        Kafka ``bootstrap_servers``, e.g. ``"127.0.0.1:9092"``.
    topics
        Topic names (default: ``driftswitch.*.v1``).
    defaults
        Flag → variant served while the flag's state is unknown (before the first read, or a
        flag driftswitch never published).
    buffer_size
        Events held until the broker acknowledges them (waiting, or handed to the producer);
        beyond it new events are dropped and counted. Events whose delivery failed because
        the broker could not be reached go back to the buffer and are sent once it is back.
    follow_flags, record_events
        Turn either half off (a pure recorder, or a pure flag reader; its record calls are
        counted as dropped).
    idle_s
        Length of one poll while reading the flags topic at start; that read ends once every
        partition is read up to the end the broker's fetch answers report.
    poll_s
        Longest wait of one fetch of the flags topic: bounds how late a change is seen.
    linger_s
        How long the sender waits for more events before sending what it has.
    security
        TLS and SASL settings: a :class:`~driftswitch.streams.kafka.KafkaSecurity` (e.g.
        ``KafkaSecurity.from_env(os.environ)`` for the ``DRIFTSWITCH_KAFKA_*`` variables), or a
        mapping with librdkafka's names (``{"security.protocol": "SASL_SSL", ...}``) or the
        Python ones. Default: PLAINTEXT.
    producer_options, consumer_options
        Extra aiokafka settings (client id, timeouts, ...); security goes in ``security``.
    exit_timeout_s
        At interpreter exit a client that was not closed sends what it holds, waiting at most
        this long; what is still unsent then is lost, and the number is logged.

    Use it as a context manager (``with`` or ``async with``: the exit sends what is buffered)
    or call :meth:`start` and :meth:`close`. :meth:`start` does not block: until the flag
    states are read, :meth:`variant` serves the defaults; :meth:`wait_ready` blocks for them.
    Callbacks registered with :meth:`on_change` run on the client's thread.
    """

    #: While the flags topic does not exist, the client looks for it again after 0.2 s, then
    #: at a doubling interval up to 10 s (it says so once in the log).
    MISSING_TOPIC_FIRST_S = 0.2
    MISSING_TOPIC_MAX_S = 10.0
    #: After its timeout, :meth:`close` gives the Kafka clients this long to stop cleanly; a
    #: producer's stop waits for the batches it holds, which a frozen broker (a stopped
    #: process: its connections stay open, nothing answers) never acknowledges, so their
    #: connections are then aborted.
    STOP_GRACE_S = 0.5
    #: A stop's bound otherwise (a reconnect after a failure): the same abort at its end.
    STOP_TIMEOUT_S = 5.0
    #: :meth:`close` returns at most this long after its timeout: the grace above, then the
    #: aborted sockets' release and the loop's end.
    CLOSE_MARGIN_S = 1.0

    def __init__(
        self,
        bootstrap: str,
        *,
        topics: Topics | None = None,
        defaults: Mapping[str, str] | None = None,
        buffer_size: int = 100_000,
        follow_flags: bool = True,
        record_events: bool = True,
        idle_s: float = 0.25,
        poll_s: float = 0.1,
        linger_s: float = 0.005,
        max_batch: int = 10_000,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        security: SecurityLike = None,
        exit_timeout_s: float = 5.0,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.bootstrap = bootstrap
        #: Where Kafka is and how to connect (TLS, SASL); the password is never shown.
        self.kafka = KafkaSettings(bootstrap=bootstrap, security=security_of(security))
        self.topics = topics or Topics()
        self.defaults = dict(defaults or {})
        self.buffer_size = buffer_size
        self.follow_flags = follow_flags
        self.record_events = record_events
        self.idle_s = idle_s
        self.poll_s = poll_s
        self.linger_s = linger_s
        self.max_batch = max_batch
        self._producer_options = dict(producer_options or {})
        self._quiet_logs = True
        self._consumer_options = dict(consumer_options or {})
        self._topic_names = {
            "predictions": self.topics.predictions.name,
            "outcomes": self.topics.outcomes.name,
        }

        self._flags: dict[str, _FlagEntry] = {}
        self._callbacks: list[Callable[[FlagChangeEvent], None]] = []
        self._last_update: float | None = None
        self._flag_updates = 0
        self._stale_ignored = 0
        self._bad_flag_records = 0
        self._closed = False  # close() called and start() not called since: records are refused
        self._closed_warned = False
        #: Evaluations that raised, per (what was done, flag): how often, for the log.
        self._failing_flags: dict[tuple[str, str], int] = {}
        #: How long a stop of the Kafka clients may take in the reconnect loops (close() cuts it
        #: to STOP_GRACE_S; start() sets it back).
        self._stop_timeout_s = self.STOP_TIMEOUT_S
        self.exit_timeout_s = exit_timeout_s
        self._fresh_process_state()
        self._restart = False  # forked while running: start again on first use (in the child)

    def _fresh_process_state(self) -> None:
        """What belongs to this process's run of the client: the locks, the buffer and its
        counts, the background thread and its loop (a forked child starts these afresh)."""
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._bootstrapped = threading.Event()
        self._buffer: collections.deque[_Pending] = collections.deque()
        self._recorded = 0
        self._dropped = 0
        self._in_flight = 0
        self._sent = 0
        self._failed = 0
        self._producer_connected = False
        self._producer_failing = False  # set while the producer cannot connect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._trouble = _Trouble(self.bootstrap)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, wait_s: float | None = 0.0) -> bool:
        """Start the background thread and return at once (or wait up to ``wait_s`` for the
        flag states; ``None`` waits for ever).

        Returns whether the flag states have been read. Until they are, :meth:`variant` serves
        the defaults. Never fails because the broker is unreachable: the client says so in the
        log (once, then at a growing interval) and keeps trying in the background.
        """
        global _atexit_registered
        self._restart = False
        if self._thread is not None:
            return self.wait_ready(wait_s)
        self._closed = False
        self._closed_warned = False
        self._stop_timeout_s = self.STOP_TIMEOUT_S
        if self._quiet_logs:
            _quiet_kafka_logs()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name=_THREAD_NAME, daemon=True
        )
        self._thread.start()
        ready.wait()
        _RUNNING.add(self)
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
        return self.wait_ready(wait_s)

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's thread, loop and Kafka clients are not there. The
        child keeps the flag states read so far (served until it has read the topic itself)
        and starts with an empty buffer and zero counts (what the parent held, the parent
        sends); its client starts again on first use (:meth:`_start_after_fork`). New locks
        too: the parent's thread may have held one at the fork."""
        self._fresh_process_state()
        self._restart = True

    def _start_after_fork(self) -> None:
        with self._lock:
            if not self._restart:
                return
            self._restart = False
        log.info("driftswitch: client started again in forked process %d", os.getpid())
        self.start(wait_s=0)

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until the flags topic has been read to its end once, or ``timeout_s`` passed;
        returns whether it has (always True for a client that does not follow flags)."""
        if not self.follow_flags:
            return True
        if timeout_s is not None and timeout_s <= 0:
            return self._bootstrapped.is_set()
        return self._bootstrapped.wait(timeout_s)

    def wait_bootstrapped(self, timeout_s: float | None = None) -> bool:
        """:meth:`wait_ready` (the older name)."""
        return self.wait_ready(timeout_s)

    def _close_at_exit(self) -> None:
        with self._lock:
            pending = len(self._buffer) + self._in_flight
        if pending:
            log.warning(
                "driftswitch: interpreter exiting with %d unsent event(s); sending them "
                "(up to %.1f s; close the client, or use it as a context manager, to control this)",
                pending,
                self.exit_timeout_s,
            )
        self.close(self.exit_timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is buffered (up to ``timeout_s``), then stop the background thread.

        Returns within ``timeout_s`` plus :attr:`CLOSE_MARGIN_S` (1 s), even when the broker
        has stopped answering, and leaves no connection to it, no thread and no event loop
        behind. What is still unsent then counts as ``failed``, with a warning in the log.
        From here until :meth:`start` is called again, recording returns False and counts the
        event as dropped: nothing would ever send it.
        """
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        end = time.monotonic() + timeout_s + self.CLOSE_MARGIN_S
        # Past the timeout what is in flight counts as lost: the Kafka clients' stops need not
        # wait for it, only get a chance to end cleanly before their connections are aborted.
        self._stop_timeout_s = self.STOP_GRACE_S
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._call(self._shutdown(timeout_s)).result(end - time.monotonic())
        thread.join(max(0.0, end - time.monotonic()))
        if thread.is_alive():  # e.g. an on_change callback that does not return
            log.warning(
                "driftswitch: the client's thread did not end within %.1f s of close; left "
                "running (a daemon thread)",
                timeout_s + self.CLOSE_MARGIN_S,
            )
        self._thread = None
        self._loop = None
        _RUNNING.discard(self)
        with self._lock:  # what could not be sent before the deadline is lost: say so
            lost = len(self._buffer) + self._in_flight
            self._buffer.clear()
            self._failed += lost
            self._in_flight = 0
            sent, failed, dropped = self._sent, self._failed, self._dropped
        if lost:
            log.warning(
                "driftswitch: %d event(s) lost: not sent to Kafka at %s within %.1f s of "
                "close (in all: %d sent, %d failed, %d dropped)",
                lost,
                self.bootstrap,
                timeout_s,
                sent,
                failed,
                dropped,
            )

    async def start_async(self, wait_s: float | None = 0.0) -> bool:
        """:meth:`start` for asyncio callers (the blocking wait runs in a worker thread)."""
        return await asyncio.to_thread(self.start, wait_s)

    async def close_async(self, timeout_s: float = 5.0) -> None:
        """:meth:`close` for asyncio callers."""
        await asyncio.to_thread(self.close, timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close_async()

    # --- flags: the request path ---------------------------------------------------------------

    def variant(
        self,
        flag: str,
        targeting_key: str,
        attributes: Mapping[str, Any] | None = None,
    ) -> str | None:
        """The variant ``targeting_key`` gets for ``flag``; never raises.

        Without a targeting rule the assignment uses only the flag and the targeting key
        (flagd's default bucketing). A flag with a rule evaluates the same expression the flagd
        document carries (:func:`~driftswitch.streams.contract.targeting.served_targeting`)
        over ``targeting_key`` and ``attributes``, so every flagd/OpenFeature client agrees.
        Unknown state gives the configured default (``None`` if there is none).
        """
        if self._restart:
            self._start_after_fork()
        try:
            entry = self._flags.get(flag)
            if entry is None:
                return self.defaults.get(flag)
            if entry.rule is not None:
                return self._targeted(entry, targeting_key, attributes)[0]
            return entry.split.variant(targeting_key)
        except Exception:
            self._evaluation_failed(flag)
            return self._fallback(flag)

    def _evaluation_failed(
        self, flag: str, doing: str = "evaluating", serving: str = "the default"
    ) -> None:
        """Log an evaluation that raised: the first of a flag with its traceback, then at 2, 4,
        8, ... failures a line with the count (a context every request sends, e.g. a value the
        rule cannot compare, must not flood the log)."""
        key = (doing, flag if type(flag) is str else repr(flag))  # never raises: any argument
        n = self._failing_flags[key] = self._failing_flags.get(key, 0) + 1
        if n == 1:
            log.exception("driftswitch: %s flag %r failed; serving %s", doing, flag, serving)
        elif n & (n - 1) == 0:
            log.warning(
                "driftswitch: %s flag %r failed %d times so far; serving %s",
                doing,
                flag,
                n,
                serving,
            )

    @staticmethod
    def _targeted(
        entry: _FlagEntry, targeting_key: str | None, attributes: Mapping[str, Any] | None
    ) -> tuple[str, bool]:
        """The variant the flag's served targeting names (and ``True``), else the default.

        As flagd: a rule that yields nothing, or no variant, serves ``defaultVariant``.
        """
        state = entry.state
        name = variant_name(evaluate(state.flag, entry.rule, targeting_key, attributes))
        if name is not None and name in state.variants:
            return name, True
        return state.default_variant, False

    @staticmethod
    def _split_reason(entry: _FlagEntry, name: str, targeting_key: str | None) -> ResolutionReason:
        if not targeting_key or name == entry.only == entry.state.default_variant:
            return "default"
        if entry.only is not None:
            return "static"
        return "split"

    def _fallback(self, flag: str) -> str | None:
        """The held state's default variant, else the configured default; never raises."""
        try:
            entry = self._flags.get(flag)
            return entry.state.default_variant if entry else self.defaults.get(flag)
        except Exception:  # e.g. an unhashable flag argument
            return None

    def value(
        self,
        flag: str,
        targeting_key: str,
        attributes: Mapping[str, Any] | None = None,
        default: JsonValue = None,
    ) -> JsonValue:
        """The value of the variant :meth:`variant` picks, or ``default`` if it has none."""
        return self.resolve(flag, targeting_key, attributes, default).value

    def resolve(
        self,
        flag: str,
        targeting_key: str | None,
        attributes: Mapping[str, Any] | None = None,
        default: JsonValue = None,
    ) -> Resolution:
        """The variant, its value and the reason (what the OpenFeature provider reports)."""
        if self._restart:
            self._start_after_fork()
        try:
            entry = self._flags.get(flag)
            if entry is None:
                return Resolution(self.defaults.get(flag), default, "unknown")
            state, split = entry.state, entry.split
            reason: ResolutionReason
            if entry.rule is not None:
                name, matched = self._targeted(entry, targeting_key, attributes)
                reason = "targeting" if matched else "default"
            else:
                name = split.variant(targeting_key or "")
                reason = self._split_reason(entry, name, targeting_key)
            variant_state = state.variants.get(name)
            value = variant_state.value if variant_state is not None else default
            return Resolution(name, value, reason, state.version)
        except Exception as exc:
            self._evaluation_failed(flag)
            error = f"{type(exc).__name__}: {exc}"
            return Resolution(self._fallback(flag), default, "error", error=error)

    def flag_state(self, flag: str) -> FlagChangeEvent | None:
        """The latest state held for ``flag`` (``None`` if none yet)."""
        entry = self._flags.get(flag)
        return entry.state if entry else None

    def flag_states(self) -> dict[str, FlagChangeEvent]:
        """Every flag state held, by flag."""
        return {flag: entry.state for flag, entry in list(self._flags.items())}

    def on_change(self, callback: Callable[[FlagChangeEvent], None]) -> Callable[[], None]:
        """Call ``callback(state)`` after every accepted flag change; returns an unsubscriber.

        The first read of the flags topic reports each flag once, with its current state (not
        every version in the topic's history). Callbacks run on the client's background
        thread; an exception in one is logged and does not affect the others.
        """
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    @property
    def bootstrapped(self) -> bool:
        """Whether the flags topic has been read to its end at least once."""
        return self._bootstrapped.is_set()

    def staleness(self) -> float:
        """Seconds since the client last read the flags topic to its end or got a flag record.

        ``inf`` before the first read. It grows while the broker is unreachable, and also while
        nothing changes: a worker that republishes states periodically keeps it low.
        """
        last = self._last_update
        return math.inf if last is None else time.monotonic() - last

    def apply(self, state: FlagChangeEvent) -> bool:
        """Apply one flag state as if read from the topic; returns whether it was newer.

        The follower calls this for every record; tests and embedders may call it directly.
        """
        self._last_update = time.monotonic()
        # One apply at a time (the follower's thread, an embedder's): an older state checked
        # before a newer one was held must not replace it.
        with self._apply_lock:
            held = self._flags.get(state.flag)
            if held is not None and state.version <= held.state.version:
                self._stale_ignored += 1
                return False
            split = Fractional.from_event(state)
            served = {name for name, _ in split.fractions} or {state.default_variant}
            only = next(iter(served)) if len(served) == 1 else None
            targeted = state.targeting is not None or state.segments or state.rollout_gate
            rule = served_targeting(state) if targeted else None
            self._flags[state.flag] = _FlagEntry(state, split, only, rule)
            self._flag_updates += 1
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(state)
            except Exception:
                log.exception("driftswitch: flag change callback %r failed", callback)
        return True

    # --- recording: the request path ----------------------------------------------------------

    def record_prediction(
        self,
        request_id: str,
        flag: str,
        variant: str,
        prediction: bool | int | float | str,
        *,
        ts: float | None = None,
        score: float | None = None,
        latency_ms: float | None = None,
        error: str | None = None,
        served: bool = True,
        subject: str | None = None,
        model_version: str | None = None,
        attributes: Mapping[str, bool | int | float | str] | None = None,
        features: Mapping[str, float] | None = None,
    ) -> bool:
        """Queue one prediction event (schema: :class:`PredictionEvent`); never blocks.

        Returns False if it was dropped: the buffer is full, or the client is closed. Fields
        are not validated here (that would cost the request path); the worker dead-letters a
        bad event with a reason. A nan or infinite number (score, latency, prediction, a
        feature) cannot be written as JSON: the event is not sent, and counts as ``failed``
        with a warning, as any event that cannot be encoded.
        """
        event: dict[str, Any] = {
            "request_id": request_id,
            "flag": flag,
            "variant": variant,
            "ts": time.time() if ts is None else ts,
            "prediction": prediction,
        }
        if score is not None:
            event["score"] = score
        if latency_ms is not None:
            event["latency_ms"] = latency_ms
        if error is not None:
            event["error"] = error
        if not served:
            event["served"] = False
        if subject is not None:
            event["subject"] = subject
        if model_version is not None:
            event["model_version"] = model_version
        if attributes:
            event["attributes"] = dict(attributes)
        if features:
            event["features"] = dict(features)
        return self._enqueue("predictions", request_id, event)

    def record_outcome(
        self,
        request_id: str,
        label: bool | int | float | str,
        *,
        ts: float | None = None,
        flag: str | None = None,
        variant: str | None = None,
    ) -> bool:
        """Queue one outcome event (schema: :class:`OutcomeEvent`); never blocks."""
        event: dict[str, Any] = {
            "request_id": request_id,
            "ts": time.time() if ts is None else ts,
            "label": label,
        }
        if flag is not None:
            event["flag"] = flag
        if variant is not None:
            event["variant"] = variant
        return self._enqueue("outcomes", request_id, event)

    def interleave(
        self,
        flag: str,
        targeting_key: str,
        rankings: Mapping[str, Sequence[str]],
        k: int = 10,
        *,
        request_id: str,
        ts: float | None = None,
        attributes: Mapping[str, bool | int | float | str] | None = None,
    ) -> list[str]:
        """The list to show for one request, interleaving two rankers; records the impression.

        The flag decides who takes part: a user assigned a variant other than the flag's default
        sees the team-draft interleaving (:mod:`~driftswitch.streams.contract.interleave`) of
        that variant's ranking with the default variant's (while the default serves traffic);
        everyone else sees their variant's ranking alone. The assignment is :meth:`variant`'s
        over ``targeting_key`` and ``attributes``, so the flag's targeting and segment kills
        apply. A kill or shift so takes users out of
        the experiment, and a rollout's steps set the share of users in it. The draws are
        seeded from ``flag`` and ``request_id``, so the same call returns the same list. One
        prediction event is queued with each position's team (``ranking``); send the clicks
        with :meth:`record_clicks` under the same ``request_id``. Never raises: without a
        usable ranking it returns the first ranking given, truncated to ``k``.
        """
        try:
            # The attributes too: targeting rules and segment kills decide who takes part.
            assigned = self.variant(flag, targeting_key, attributes)
            default = self._fallback(flag)
            entry = self._flags.get(flag)
            if entry is not None and default is not None:
                served = entry.state.served_weights()
                if not served.get(default):  # e.g. a rollout's last step: the candidate alone
                    default = None
            teams = [t for t in (assigned, default) if t is not None and t in rankings]
            teams = list(dict.fromkeys(teams))[:2] or list(rankings)[:1]
            if not teams:
                return []
            merged = team_draft(
                {t: rankings[t] for t in teams}, max(k, 1), flag=flag, request_id=request_id
            )
            if not merged:
                return []
            event: dict[str, Any] = {
                "request_id": request_id,
                "flag": flag,
                "variant": assigned if assigned in teams else teams[0],
                "ts": time.time() if ts is None else ts,
                "ranking": [{"item": item, "team": team} for item, team in merged],
                "subject": targeting_key,
            }
            if attributes:
                event["attributes"] = dict(attributes)
            self._enqueue("predictions", request_id, event)
            return [item for item, _ in merged]
        except Exception:
            self._evaluation_failed(flag, "interleaving", "a plain ranking")
            try:
                first = next(iter(rankings.values()), [])
                return [str(x) for x in first][: max(k, 0)]
            except Exception:
                return []

    def record_clicks(
        self,
        request_id: str,
        items: Iterable[str] = (),
        *,
        positions: Iterable[int] | None = None,
        ts: float | None = None,
        flag: str | None = None,
    ) -> bool:
        """Queue the outcome of an interleaved impression: the item ids clicked (and/or the
        0-based ``positions``); no clicks at all is a valid outcome (a tie). Never blocks.

        ``items`` is a list (or other iterable) of ids: a bare ``str`` is refused with a
        ``TypeError``, since iterating it would record each of its characters as a click.
        """
        if isinstance(items, str | bytes):
            raise TypeError(
                f"record_clicks takes a list of clicked item ids, got {type(items).__name__} "
                f"{items!r}: pass [{items!r}]"
            )
        event: dict[str, Any] = {
            "request_id": request_id,
            "ts": time.time() if ts is None else ts,
            "clicks": list(items),
        }
        if positions is not None:
            event["clicked_positions"] = list(positions)
        if flag is not None:
            event["flag"] = flag
        return self._enqueue("outcomes", request_id, event)

    def record(self, event: PredictionEvent | OutcomeEvent) -> bool:
        """Queue an already validated event model; never blocks."""
        role = "predictions" if isinstance(event, PredictionEvent) else "outcomes"
        return self._enqueue(role, event.request_id, event)

    async def record_prediction_async(
        self,
        request_id: str,
        flag: str,
        variant: str,
        prediction: bool | int | float | str,
        **fields: Any,
    ) -> bool:
        """:meth:`record_prediction` for coroutines (it never awaits anything slow)."""
        return self.record_prediction(request_id, flag, variant, prediction, **fields)

    async def record_outcome_async(
        self, request_id: str, label: bool | int | float | str, **fields: Any
    ) -> bool:
        """:meth:`record_outcome` for coroutines."""
        return self.record_outcome(request_id, label, **fields)

    async def record_async(self, event: PredictionEvent | OutcomeEvent) -> bool:
        """:meth:`record` for coroutines."""
        return self.record(event)

    def _enqueue(
        self,
        role: str,
        request_id: str,
        payload: dict[str, Any] | PredictionEvent | OutcomeEvent,
    ) -> bool:
        if self._restart:
            self._start_after_fork()
        try:
            key = request_id.encode()
        except Exception:
            key = str(request_id).encode(errors="replace")
        with self._lock:
            self._recorded += 1
            if self._closed:
                self._dropped += 1
                if not self._closed_warned:
                    self._closed_warned = True
                    log.warning(
                        "driftswitch: event recorded after close() dropped (and counted as "
                        "dropped from now on); start() the client again to record"
                    )
                return False
            held = len(self._buffer) + self._in_flight  # in flight may come back (an outage)
            if not self.record_events or held >= self.buffer_size:
                self._dropped += 1
                if self._dropped & (self._dropped - 1) == 0:  # 1, 2, 4, ...: log, not flood
                    log.warning(
                        "driftswitch: event buffer full (%d); %d event(s) dropped so far",
                        self.buffer_size,
                        self._dropped,
                    )
                return False
            self._buffer.append((role, key, payload))
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event recorded so far is sent or has failed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._buffer and not self._in_flight:
                    return True
            time.sleep(0.005)
        return False

    async def flush_async(self, timeout_s: float = 10.0) -> bool:
        """:meth:`flush` for asyncio callers."""
        return await asyncio.to_thread(self.flush, timeout_s)

    def stats(self) -> ClientStats:
        """A consistent snapshot of the counters (drops are also logged, at 1, 2, 4, ... drops)."""
        with self._lock:
            return ClientStats(
                recorded=self._recorded,
                buffered=len(self._buffer),
                in_flight=self._in_flight,
                sent=self._sent,
                failed=self._failed,
                dropped=self._dropped,
                buffer_size=self.buffer_size,
                producer_connected=self._producer_connected,
                flags=len(self._flags),
                flag_updates=self._flag_updates,
                stale_versions_ignored=self._stale_ignored,
                bad_flag_records=self._bad_flag_records,
                bootstrapped=self._bootstrapped.is_set(),
                staleness_s=self.staleness(),
            )

    # --- background thread ---------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the client is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run_loop(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        loop.set_default_executor(_ThreadPerCall())
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._stopping = asyncio.Event()
        self._tasks = []
        if self.follow_flags:
            self._tasks.append(loop.create_task(self._follow_flags()))
        if self.record_events:
            self._tasks.append(loop.create_task(self._send_events()))
        ready.set()
        try:
            loop.run_until_complete(self._stopping.wait())
            for task in self._tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            # aiokafka leaves its own tasks behind when a stop timed out (broker gone).
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _shutdown(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._buffer and not self._in_flight:
                    break
            if not self._producer_connected and self._producer_failing:
                break  # the broker is unreachable: waiting would only delay the exit
            await asyncio.sleep(0.005)
        assert self._stopping is not None
        self._stopping.set()

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; return True if the client is stopping."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _follow_flags(self) -> None:
        from driftswitch.streams.kafka import connect as kafka

        topic = self.topics.flags.name
        backoff = 0.2
        missing_since: float | None = None  # since when the flags topic is known to be missing
        missing_wait = self.MISSING_TOPIC_FIRST_S
        while True:
            consumer = kafka.consumer(
                self.kafka,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=max(1, int(self.poll_s * 1000)),
                **self._consumer_options,
            )
            if self._quiet_logs:
                _quiet_kafka_logs()  # aiokafka's loggers exist now
            try:
                await kafka.start(consumer, self.kafka)
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    # A wrong prefix or a worker never run: say so once, then look again at a
                    # growing interval (the broker is up; only the topic is missing). A new
                    # consumer reads the metadata afresh; this one's cache would not show the
                    # topic before its periodic refresh (metadata_max_age_ms, 5 min).
                    if missing_since is None:
                        missing_since = time.monotonic()
                        log.warning(
                            "driftswitch: the flags topic %r does not exist at %s; serving the "
                            "defaults, and looking for it again at a growing interval (up to "
                            "%.0f s). Check that the client's topic names (Topics, e.g. the "
                            "prefix) are the worker's (DRIFTSWITCH_TOPIC_PREFIX) and that the "
                            "worker has run (`driftswitch run` creates the topics)",
                            topic,
                            self.bootstrap,
                            self.MISSING_TOPIC_MAX_S,
                        )
                    self._trouble.recovered()  # the broker answered
                    if await self._sleep_or_stop(missing_wait):
                        return
                    missing_wait = min(missing_wait * 2, self.MISSING_TOPIC_MAX_S)
                    continue
                if missing_since is not None:
                    log.info(
                        "driftswitch: the flags topic %r appeared after %.0f s",
                        topic,
                        time.monotonic() - missing_since,
                    )
                    missing_since = None
                tps = [kafka.topic_partition(topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                kafka.seek_to_start(consumer, *tps)
                backoff = 0.2
                self._trouble.recovered()
                await self._consume_flags(consumer, tps)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._trouble.failed("reading flags", self._why(exc))
            finally:
                # Bounded, and no connection left open after it (a frozen broker never answers).
                await kafka.stop_quietly(consumer, self._stop_timeout_s)
            if await self._sleep_or_stop(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    def _why(self, exc: Exception) -> str:
        """A connection error as it is (it names the broker), anything else with the broker."""
        if isinstance(exc, KafkaConnectError):
            return str(exc)
        text = str(exc)
        name = type(exc).__name__
        if not text.startswith(name):  # aiokafka's errors name themselves
            text = f"{name}: {text}"
        return f"{self.kafka.describe()}: {text}"

    async def _consume_flags(self, consumer: Any, tps: list[Any]) -> None:
        from driftswitch.streams.kafka import connect as kafka

        assert self._stopping is not None
        # Until the topic is read to its end, only the newest state per flag is kept, and
        # applied once caught up: the history of a flag (a candidate killed, restored, killed
        # again) is never served, and on_change fires once per flag with its current state.
        latest: dict[str, FlagChangeEvent] = {}
        while not self._stopping.is_set():
            timeout = self.poll_s if self._bootstrapped.is_set() else self.idle_s
            batches = await consumer.getmany(timeout_ms=max(1, int(timeout * 1000)))
            for records in batches.values():
                for record in records:
                    state = self._decode_record(record)
                    if state is None:
                        continue
                    if self._bootstrapped.is_set():
                        self.apply(state)
                    else:
                        self._keep_latest(latest, state)
            if not self._bootstrapped.is_set() and await kafka.caught_up(consumer, tps):
                # Every partition read up to the end its last fetch answer reported.
                for state in latest.values():
                    self.apply(state)
                latest.clear()
                self._last_update = time.monotonic()
                self._bootstrapped.set()
                log.info(
                    "driftswitch: %d flag state(s) read from %s", len(self._flags), tps[0].topic
                )

    def _keep_latest(self, latest: dict[str, FlagChangeEvent], state: FlagChangeEvent) -> None:
        """During the first read: keep ``state`` if it is newer than what is held and kept."""
        held = self._flags.get(state.flag)
        kept = latest.get(state.flag)
        newest = max(
            (e.version for e in (held.state if held else None, kept) if e is not None),
            default=None,
        )
        if newest is not None and state.version <= newest:
            self._stale_ignored += 1
            return
        latest[state.flag] = state

    def _decode_record(self, record: Any) -> FlagChangeEvent | None:
        try:
            return FlagChangeEvent.model_validate_json(record.value)
        except (ValidationError, ValueError, TypeError) as exc:
            self._bad_flag_records += 1
            log.warning(
                "driftswitch: bad flag record %s[%s]@%s ignored: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            return None

    async def _send_events(self) -> None:
        from driftswitch.streams.kafka import connect as kafka

        partitioner = key_partitioner
        backoff = 0.2
        while True:
            producer = kafka.producer(
                self.kafka,
                linger_ms=max(0, int(self.linger_s * 1000)),
                **self._producer_options,
            )
            if self._quiet_logs:
                _quiet_kafka_logs()
            try:
                await kafka.start(producer, self.kafka)
                self._producer_connected = True
                self._producer_failing = False
                self._trouble.recovered()
                backoff = 0.2
                partitions: dict[str, list[int]] = {}
                for role, name in self._topic_names.items():
                    partitions[role] = sorted(await producer.partitions_for(name))
                retry_s = 0.2
                while True:
                    if not self._buffer:
                        if await self._sleep_or_stop(self.linger_s):
                            return
                        continue
                    trouble = await self._send_some(producer, partitions, partitioner)
                    if trouble is None:
                        if self._producer_failing:
                            self._producer_connected = True
                            self._producer_failing = False
                            self._trouble.recovered()
                        retry_s = 0.2
                        continue
                    # The broker did not answer: the events are back in the buffer. Say so
                    # (once, then at a growing interval) and try again a little later; aiokafka
                    # reconnects by itself.
                    self._producer_connected = False
                    self._producer_failing = True
                    self._trouble.failed("sending events", self._why(trouble))
                    if await self._sleep_or_stop(retry_s):
                        return
                    retry_s = min(retry_s * 2, 5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._producer_failing = True
                self._trouble.failed("sending events", self._why(exc))
            finally:
                self._producer_connected = False
                # A producer's stop waits for the batches it holds (against a frozen broker, for
                # ever): bounded, and no connection left open after it.
                await kafka.stop_quietly(producer, self._stop_timeout_s)
            if await self._sleep_or_stop(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    async def _send_some(
        self, producer: Any, partitions: Mapping[str, list[int]], partitioner: Any
    ) -> Exception | None:
        """Move up to ``max_batch`` events from the buffer to their partitions and await them.

        Returns the error that made some of them go back to the buffer (``None`` if none did).
        An event whose delivery failed for a reason that passes (no connection, no answer
        within ``request_timeout_ms``, no leader) goes back to the front of the buffer, with the
        events recorded after it in its partition, in their order: an outage costs no events and
        reorders none of a partition's. Only an event the broker refuses for good (too large,
        not authorised) or that cannot be encoded counts as ``failed``.
        """
        with self._lock:
            n = min(len(self._buffer), self.max_batch)
            items = [self._buffer.popleft() for _ in range(n)]
            self._in_flight += n
        slots: dict[tuple[str, int], list[tuple[int, bytes, bytes]]] = {}
        bad = 0
        for index, (role, key, payload) in enumerate(items):
            try:
                value = _payload_bytes(payload)
            except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
                bad += 1
                log.warning("driftswitch: unencodable %s event dropped: %s", role, exc)
                continue
            all_partitions = partitions[role]
            partition = partitioner(key, all_partitions, all_partitions)
            slots.setdefault((role, partition), []).append((index, key, value))
        # Cancelled (the client closes): what is in flight then, close() counts as lost.
        outcomes = await asyncio.gather(
            *(self._send_partition(producer, slot, records) for slot, records in slots.items())
        )
        sent = sum(o.sent for o in outcomes)
        failed = bad + sum(o.failed for o in outcomes)
        retry = sorted(i for o in outcomes for i in o.retry)
        with self._lock:
            self._in_flight -= n
            self._sent += sent
            self._failed += failed
            self._buffer.extendleft(items[i] for i in reversed(retry))
        broken = next((o.broken for o in outcomes if o.broken is not None), None)
        if broken is not None:
            raise broken  # the producer itself is unusable: make a new one
        return next((o.trouble for o in outcomes if o.trouble is not None), None)

    async def _send_partition(
        self, producer: Any, slot: tuple[str, int], records: list[tuple[int, bytes, bytes]]
    ) -> _Delivery:
        """Send one partition's records in order, one batch at a time (aiokafka sends a
        partition's batches one at a time anyway), so that a batch is handed over only once
        the one before it is delivered: when one fails for a passing reason, it and every
        record after it return to the buffer, and none of them overtakes another."""
        from driftswitch.streams.kafka import connect as kafka

        role, partition = slot
        topic = self._topic_names[role]
        outcome = _Delivery()
        position = 0
        while position < len(records):
            batch = producer.create_batch()
            end = position
            while end < len(records):
                _, key, value = records[end]
                if batch.append(key=key, value=value, timestamp=None) is None:
                    break
                end += 1
            if end == position:  # a record larger than an empty batch can hold
                outcome.failed += 1
                log.warning(
                    "driftswitch: %s event of %d bytes too large", role, len(records[end][2])
                )
                position += 1
                continue
            count = end - position
            try:
                future = await producer.send_batch(batch, topic, partition=partition)
                await future
            except Exception as exc:
                failure = kafka.send_failure(exc)
                if failure is kafka.SendFailure.REFUSED:  # for good: the next ones may pass
                    outcome.failed += count
                    log.warning("driftswitch: %d events not delivered: %r", count, exc)
                    position = end
                    continue
                if failure is kafka.SendFailure.BROKEN:
                    outcome.broken = exc
                outcome.trouble = exc
                outcome.retry.extend(index for index, _, _ in records[position:])
                return outcome
            outcome.sent += count
            position = end
        return outcome
