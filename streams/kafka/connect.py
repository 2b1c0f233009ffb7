"""The one factory for aiokafka consumers, producers and admin clients, and the reads built on it.

Every Kafka connection driftswitch makes is built here from one :class:`KafkaSettings`, so the
TLS and SASL settings reach all of them the same way (:func:`client_options`). Starting a client
goes through :func:`start`: a broker that cannot be reached, a certificate that is not trusted or
credentials the broker refuses become one :class:`KafkaConnectError` naming the broker, the
protocol and the SASL mechanism and user (never a password), in place of aiokafka's
"Unable to bootstrap" and the log lines before it.

Also here: reading partitions "to the end" (:func:`read_to_end`, :func:`read_partitions`), which
the worker's restore, the admin API's history and the test helpers share; where a read starts
(:func:`seek_to_start`: offset 0, never the start a broker names); the partitions of a
topic from fresh metadata (:func:`partitions_of`); and the few aiokafka classes the worker's
lease needs (:func:`lease_assignor`, :func:`rebalance_listener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftswitch.streams.kafka.settings import (
    KafkaConnectError,
    KafkaSecurity,
    KafkaSettings,
    KafkaSettingsError,
)

__all__ = [
    "Membership",
    "SendFailure",
    "TopicRead",
    "abort_connections",
    "caught_up",
    "check_membership",
    "client_options",
    "consumer",
    "describe_cluster",
    "explain_failure",
    "lease_assignor",
    "open_admin",
    "open_consumer",
    "open_producer",
    "partitioner",
    "partitions_of",
    "producer",
    "read_partitions",
    "read_to_end",
    "rebalance_listener",
    "seek_to_start",
    "send_failure",
    "ssl_context",
    "start",
    "stop_quietly",
    "topic_partition",
]

log = logging.getLogger(__name__)


# -- building clients --------------------------------------------------------------------------


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context for ``security`` (None without TLS): CA file, optional client cert."""
    if not security.tls:
        return None
    cafile = str(security.ssl_cafile) if security.ssl_cafile is not None else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (ssl.SSLError, OSError) as err:
        raise KafkaSettingsError(
            f"ssl.ca.location (DRIFTSWITCH_KAFKA_SSL_CAFILE): cannot load {cafile!r}: {err}"
        ) from None
    if security.ssl_certfile is not None:
        password = security.ssl_key_password
        try:
            context.load_cert_chain(
                str(security.ssl_certfile),
                str(security.ssl_keyfile) if security.ssl_keyfile is not None else None,
                password=password.get_secret_value() if password is not None else None,
            )
        except (ssl.SSLError, OSError) as err:
            raise KafkaSettingsError(
                "ssl.certificate.location / ssl.key.location: cannot load the client "
                f"certificate {str(security.ssl_certfile)!r}: {_ssl_reason(err)} (a wrong "
                "ssl.key.password, or a key that does not match the certificate?)"
            ) from None
    return context


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The aiokafka keyword arguments every client gets: bootstrap, TLS and SASL settings."""
    security = kafka.security
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": security.security_protocol,
    }
    context = ssl_context(security)
    if context is not None:
        options["ssl_context"] = context
    if security.sasl:
        assert security.sasl_password is not None  # checked by KafkaSecurity
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.sasl_username
        options["sasl_plain_password"] = security.sasl_password.get_secret_value()
    return options


def _merged(kafka: KafkaSettings, options: Mapping[str, Any]) -> dict[str, Any]:
    base = client_options(kafka)
    clash = sorted(set(base) & set(options))
    if clash:
        raise KafkaSettingsError(
            f"{', '.join(clash)}: set by driftswitch's Kafka settings; pass them there"
        )
    return {**base, **options}


def consumer(kafka: KafkaSettings, *topics: str, **options: Any) -> Any:
    """An aiokafka consumer (not started) with ``kafka``'s connection settings."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(*topics, **_merged(kafka, options))


def producer(kafka: KafkaSettings, **options: Any) -> Any:
    """An aiokafka producer (not started) with ``kafka``'s connection settings."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**_merged(kafka, options))


def admin(kafka: KafkaSettings, **options: Any) -> Any:
    """An aiokafka admin client (not started) with ``kafka``'s connection settings."""
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(**_merged(kafka, options))


# -- starting them, with one clear error -------------------------------------------------------


class _Capture(logging.Filter):
    """Holds back aiokafka's per-address connection errors while a client starts."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg.startswith("Unable connect to") or record.msg.startswith(
            "Unable to request metadata"
        ):
            args = record.args if isinstance(record.args, tuple) else ()
            err = args[-1] if args else None
            if isinstance(err, BaseException):
                self.errors.append(err)
                return False
        return True


#: How long :func:`stop_quietly` waits for the sockets it aborted to be released: the loop's
#: next iteration does it; the bound only guards against a loop too busy to get there.
ABORT_WAIT_S = 0.25


async def stop_quietly(client: Any, timeout_s: float = 5.0) -> None:
    """Stop (or close, for an admin client) ``client``, ignoring errors and bounded in time;
    then no connection of it is left open, even when the stop was given up or cancelled.

    aiokafka's stops close their connections last: a producer's first waits for the batches
    it holds to be acknowledged, which a frozen broker (a stopped process: the connection
    stays open, nothing answers) never does. Cut off at ``timeout_s``, such a stop never reaches
    the close, and its socket would stay open for as long as the client object lives (for ever
    once its event loop is closed). So whatever connection the client still holds then is
    aborted (:func:`abort_connections`). Takes at most ``timeout_s`` plus one loop iteration,
    or up to :data:`ABORT_WAIT_S` more when connections had to be aborted.
    """
    closer = getattr(client, "stop", None) or client.close
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closer(), timeout_s)
    finally:
        # Also when cancelled: the abort itself does not wait, the loop releases the sockets on
        # its next iteration.
        closing = abort_connections(client)
    if closing:
        await asyncio.wait(closing, timeout=ABORT_WAIT_S)


def abort_connections(client: Any) -> list[asyncio.Future[None]]:
    """Close every connection ``client`` (an aiokafka consumer, producer or admin client) still
    holds at once, dropping what is unsent; returns futures done once their sockets are closed.

    An abort, not a close: a close waits until the socket's send buffer is written, and a frozen
    broker reads nothing. Requests waiting on those connections fail (``KafkaConnectionError``).
    A client that stopped normally holds no open connection: nothing to do. Reaches into
    aiokafka's internals (a client's ``_conns``, a connection's ``_writer``: the same from 0.11
    to 0.14), as aiokafka offers no way to give up a stop (aio-libs/aiokafka#1013, #1101).
    """
    from aiokafka.client import AIOKafkaClient
    from aiokafka.conn import CloseReason

    # A consumer's and an admin client's is ``_client``; a producer's, ``client``.
    kafka_client = getattr(client, "_client", None)
    if not isinstance(kafka_client, AIOKafkaClient):
        kafka_client = getattr(client, "client", None)
    if not isinstance(kafka_client, AIOKafkaClient):
        return []
    # Read with getattr, as the group code reads the coordinator (streams/kafka/groups.py): an
    # aiokafka without these attributes leaves the connections to the garbage collector, as
    # before, rather than failing the stop.
    conns = getattr(kafka_client, "_conns", None)
    if not isinstance(conns, dict):
        return []
    closing: list[asyncio.Future[None]] = []
    for conn in list(conns.values()):
        writer = getattr(conn, "_writer", None)
        if writer is None:  # closed already
            continue
        try:
            writer.transport.abort()
            # Fails the requests still waiting for an answer and stops the connection's reader;
            # its future is done once the transport has released the socket.
            closed = conn.close(reason=CloseReason.SHUTDOWN)
        except Exception:  # a stop must go on: the next connection, then the caller
            log.debug("aborting a Kafka connection failed", exc_info=True)
            continue
        if closed is not None:
            closing.append(closed)
    return closing


class SendFailure(enum.Enum):
    """What a failed produce means for the records it carried (:func:`send_failure`)."""

    #: No connection, no answer within ``request_timeout_ms``, no leader: send them again later.
    PASSING = "passing"
    #: The broker refused them for good (too large, not authorised): the next ones may pass.
    REFUSED = "refused"
    #: The producer itself is unusable (closed, or an error not Kafka's): make a new one.
    BROKEN = "broken"


def send_failure(exc: BaseException) -> SendFailure:
    """Classify the exception a produce (``send_batch`` or its delivery) raised."""
    from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerClosed

    if isinstance(exc, KafkaTimeoutError | ConnectionError | TimeoutError):
        return SendFailure.PASSING
    if getattr(exc, "retriable", False):  # aiokafka's errors that pass (no leader, ...)
        return SendFailure.PASSING
    if isinstance(exc, KafkaError) and not isinstance(exc, ProducerClosed):
        return SendFailure.REFUSED
    return SendFailure.BROKEN


async def start(client: Any, kafka: KafkaSettings) -> Any:
    """Start ``client``; on failure stop it and raise :class:`KafkaConnectError`."""
    capture = _Capture()
    # aiokafka logs through "aiokafka" or "aiokafka.client" depending on the version; a filter
    # applies only to records logged on its own logger.
    loggers = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.client")]
    for logger in loggers:
        logger.addFilter(capture)
    try:
        await client.start()
    except asyncio.CancelledError:
        await stop_quietly(client)
        raise
    except Exception as err:
        await stop_quietly(client)
        raise KafkaConnectError(explain_failure(kafka, err, capture.errors)) from None
    finally:
        for logger in loggers:
            logger.removeFilter(capture)
    return client


def _ssl_reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return str(err.verify_message or err.reason or err)
    if isinstance(err, ssl.SSLError):
        return str(err.reason or err)
    return str(err) or type(err).__name__


def explain_failure(
    kafka: KafkaSettings, err: BaseException, causes: Sequence[BaseException] = ()
) -> str:
    """One line saying why a client could not connect (secrets never included)."""
    from aiokafka.errors import AuthenticationFailedError, UnsupportedSaslMechanismError

    security = kafka.security
    reasons: list[str] = []
    for cause in [*causes, err]:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = (
                f"the broker's TLS certificate was refused ({_ssl_reason(cause)}); "
                "check ssl.ca.location (DRIFTSWITCH_KAFKA_SSL_CAFILE)"
            )
        elif isinstance(cause, ssl.SSLError):
            reason = f"the TLS handshake failed ({_ssl_reason(cause)})"
        elif isinstance(cause, UnsupportedSaslMechanismError):
            reason = f"the broker does not offer SASL {security.sasl_mechanism}: {cause}"
        elif isinstance(cause, AuthenticationFailedError) or (
            # aiokafka's SCRAM client fails with KeyError on a server answer without a proof.
            security.sasl and isinstance(cause, KeyError)
        ):
            reason = (
                f"SASL {security.sasl_mechanism} authentication as {security.sasl_username!r} "
                "failed: wrong username or password"
            )
        elif isinstance(cause, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(cause, OSError | TimeoutError):
            reason = str(cause) or type(cause).__name__
        else:
            text = str(cause)
            if "Unable to bootstrap" in text:
                continue
            if "closed" in text and security.sasl and not security.tls:
                reason = (
                    f"the broker closed the connection (does it offer SASL "
                    f"{security.sasl_mechanism}? a TLS listener? security.protocol is "
                    f"{security.security_protocol})"
                )
            elif "closed" in text and not security.tls:
                reason = (
                    "the broker closed the connection (a TLS or SASL listener? "
                    f"security.protocol is {security.security_protocol})"
                )
            elif "closed" in text:
                reason = (
                    "the broker closed the connection after the TLS handshake (does it require "
                    "a client certificate, ssl.certificate.location, or SASL? security.protocol "
                    f"is {security.security_protocol})"
                )
            elif text.startswith(type(cause).__name__):  # aiokafka's errors name themselves
                reason = text
            else:
                reason = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
        if reason not in reasons:
            reasons.append(reason)
    secret = security.sasl_password.get_secret_value() if security.sasl_password else None
    message = f"cannot reach Kafka at {kafka.describe()}: " + (
        "; ".join(reasons) or "no broker answered"
    )
    if secret:
        message = message.replace(secret, "**********")
    return message


async def open_consumer(kafka: KafkaSettings, *topics: str, **options: Any) -> Any:
    """A started consumer (see :func:`consumer`, :func:`start`)."""
    return await start(consumer(kafka, *topics, **options), kafka)


async def open_producer(kafka: KafkaSettings, **options: Any) -> Any:
    """A started producer (see :func:`producer`, :func:`start`)."""
    return await start(producer(kafka, **options), kafka)


async def open_admin(kafka: KafkaSettings, **options: Any) -> Any:
    """A started admin client (see :func:`admin`, :func:`start`)."""
    return await start(admin(kafka, **options), kafka)


@contextlib.asynccontextmanager
async def consuming(kafka: KafkaSettings, **options: Any) -> AsyncIterator[Any]:
    """A started consumer for the block, stopped after it."""
    client = await open_consumer(kafka, **options)
    try:
        yield client
    finally:
        await stop_quietly(client)


# -- reading -----------------------------------------------------------------------------------


def topic_partition(topic: str, partition: int) -> Any:
    """aiokafka's ``TopicPartition(topic, partition)``."""
    from aiokafka.structs import TopicPartition

    return TopicPartition(topic, partition)


async def partitions_of(kafka: KafkaSettings, topic: str) -> list[int]:
    """The partitions of ``topic`` from fresh metadata ([] when it does not exist)."""
    client = await open_admin(kafka)
    try:
        described = await client.describe_topics([topic])
    finally:
        await stop_quietly(client)
    return sorted(
        p["partition"]
        for t in described
        if t["topic"] == topic and t["error_code"] == 0
        for p in t["partitions"]
    )


async def caught_up(consumer: Any, partitions: Iterable[Any]) -> bool:
    """Whether ``consumer`` has read every one of ``partitions`` up to the high watermark of the
    last fetch answer for it (False before the first answer)."""
    for tp in partitions:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


async def read_to_end(
    consumer: Any,
    partitions: Sequence[Any],
    *,
    idle_ms: int = 300,
    limit_s: float = 120.0,
    ends: Mapping[Any, int] | None = None,
) -> dict[Any, list[Any]]:
    """Read assigned ``partitions`` from their current position to the end; return the records.

    "The end" is the high watermark carried by the broker's fetch answers, not the end offset
    that ListOffsets reports (Tansu reports the base offset of the last batch there). An empty
    poll of ``idle_ms`` proves nothing, since the broker may just be slow: the read goes on until
    every partition's position has reached the high watermark of a fetch answer, or the offset
    ``ends`` gives it (records from there on are left out).
    ``TimeoutError`` if that takes more than ``limit_s`` seconds.
    """
    out: dict[Any, list[Any]] = {tp: [] for tp in partitions}
    stop = dict(ends or {})
    pending = set(partitions)
    deadline = time.monotonic() + limit_s
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=idle_ms, max_records=10_000)
        for tp, recs in batch.items():
            end = stop.get(tp)
            out[tp].extend(recs if end is None else [r for r in recs if r.offset < end])
        pending -= {
            tp
            for tp in pending
            if (tp in stop and await consumer.position(tp) >= stop[tp])
            or await caught_up(consumer, [tp])
        }
        if pending and time.monotonic() > deadline:
            raise TimeoutError(
                f"reading {sorted(f'{tp.topic}[{tp.partition}]' for tp in pending)} to the end "
                f"took over {limit_s:.0f} s"
            )
    return out


def seek_to_start(consumer: Any, *partitions: Any) -> None:
    """Read each of the assigned ``partitions`` from its first record next.

    From offset 0, not from the offset the broker names as the partition's start
    (``seek_to_beginning``, a ListOffsets request): the embedded broker once answered 6,955 for a
    partition that held records from offset 0 (two producer processes had written its first
    batches at the same moment), and kept answering so, and a join stage skipped those 6,955
    records without a word (tests/integration/test_wrong_start.py puts a broker that names a
    wrong start in front of the readers that start at the beginning). Where offset 0 is gone
    (retention on Kafka), the fetch finds it out of range and the consumer starts at the first
    offset the broker holds: ``consumer`` must be built with ``auto_offset_reset="earliest"``
    (aiokafka's default, ``latest``, would skip to the end instead).
    """
    for tp in partitions:
        consumer.seek(tp, 0)


@dataclass(frozen=True)
class TopicRead:
    """What :func:`read_partitions` read: records per partition, and where each one ends."""

    #: ``{TopicPartition: [ConsumerRecord, ...]}`` in offset order.
    records: dict[Any, list[Any]]
    #: ``{TopicPartition: offset after the last record}`` (the start offset when empty).
    next_offsets: dict[Any, int]


async def read_partitions(
    kafka: KafkaSettings,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    idle_ms: int = 300,
    **options: Any,
) -> TopicRead:
    """Open a consumer, assign ``partitions`` of ``topic`` (default: all), read them to the end.

    Reads from the beginning of each partition (:func:`seek_to_start`; see :func:`read_to_end`
    for "the end"). ``options`` go to the consumer (e.g. ``max_partition_fetch_bytes``).
    """
    options = {"enable_auto_commit": False, "auto_offset_reset": "earliest", **options}
    client = await open_consumer(kafka, **options)
    try:
        if partitions is None:
            known = client.partitions_for_topic(topic)
            parts = sorted(known) if known else (await partitions_of(kafka, topic) or [0])
        else:
            parts = sorted(partitions)
        tps = [topic_partition(topic, p) for p in parts]
        client.assign(tps)
        seek_to_start(client, *tps)
        records = await read_to_end(client, tps, idle_ms=idle_ms)
        # An empty partition ends where the read stands: 0, or the broker's first offset where
        # offset 0 was out of range.
        next_offsets = {
            tp: recs[-1].offset + 1 if recs else await client.position(tp)
            for tp, recs in records.items()
        }
    finally:
        await stop_quietly(client)
    return TopicRead(records, next_offsets)


async def read_ranges(
    kafka: KafkaSettings,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    *,
    idle_ms: int = 300,
    limit_s: float = 120.0,
    **options: Any,
) -> dict[int, list[Any]]:
    """The records of ``topic`` with ``first <= offset < end`` per partition (``ranges``:
    ``{partition: (first, end)}``), in offset order: fewer where the broker no longer has them
    (a partition ends at the high watermark of the broker's answers, as :func:`read_to_end`).
    ``TimeoutError`` after ``limit_s`` seconds. ``options`` go to the consumer."""
    out: dict[int, list[Any]] = {p: [] for p in ranges}
    wanted = {p: r for p, r in ranges.items() if r[1] > r[0]}
    if not wanted:
        return out
    # A range that starts where retention deleted records reads on from the broker's first
    # offset (``earliest``), not from its end.
    options = {"enable_auto_commit": False, "auto_offset_reset": "earliest", **options}
    client = await open_consumer(kafka, **options)
    try:
        tps = {topic_partition(topic, p): p for p in wanted}
        client.assign(list(tps))
        for tp, p in tps.items():
            client.seek(tp, wanted[p][0])
        ends = {tp: wanted[p][1] for tp, p in tps.items()}
        read = await read_to_end(client, list(tps), idle_ms=idle_ms, limit_s=limit_s, ends=ends)
    finally:
        await stop_quietly(client)
    for tp, recs in read.items():
        first = wanted[tps[tp]][0]
        out[tps[tp]] = [r for r in recs if r.offset >= first]
    return out


# -- the worker's lease ------------------------------------------------------------------------


def lease_assignor(holds: Callable[[], bool], holder: bytes) -> type:
    """A sticky group assignor for a lease: the member that holds it keeps it.

    With aiokafka's default (round-robin over sorted member ids) a standby joining the group
    would take the lease from the active worker half of the time, forcing a needless failover.
    Each member says in its join metadata (``holder`` when ``holds()``) whether it is the
    active worker; the assignment gives every partition of the lease topic to that member, or
    to the first member by id when none is (start-up, or the holder died).
    """
    from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
    from aiokafka.coordinator.protocol import (
        ConsumerProtocolMemberAssignment,
        ConsumerProtocolMemberMetadata,
    )

    def assign(cls: Any, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
        holders = sorted(m for m, meta in members.items() if meta.user_data == holder)
        owner = holders[0] if holders else min(members)
        out: dict[str, Any] = {}
        for member, meta in members.items():
            parts = []
            if member == owner:
                for topic in sorted(meta.subscription):
                    parts.append((topic, sorted(cluster.partitions_for_topic(topic) or ())))
            out[member] = ConsumerProtocolMemberAssignment(0, parts, b"")
        return out

    def metadata(cls: Any, topics: Iterable[str]) -> Any:
        return ConsumerProtocolMemberMetadata(0, sorted(topics), holder if holds() else b"")

    def on_assignment(cls: Any, assignment: Any) -> None:
        return None

    # Built with type(): aiokafka is untyped, and a class statement cannot subclass Any.
    return type(
        "LeaseAssignor",
        (AbstractPartitionAssignor,),
        {
            "name": "driftswitch-lease",
            "version": 0,
            "assign": classmethod(assign),
            "metadata": classmethod(metadata),
            "on_assignment": classmethod(on_assignment),
        },
    )


def rebalance_listener(
    revoked: Callable[[Any, Any], Awaitable[None]],
    assigned: Callable[[Any, Any], Awaitable[None]],
) -> Any:
    """An aiokafka rebalance listener calling ``revoked(self, partitions)`` and ``assigned``."""
    from aiokafka.abc import ConsumerRebalanceListener

    # Built with type(): aiokafka is untyped, and a class statement cannot subclass Any.
    cls = type(
        "RebalanceListener",
        (ConsumerRebalanceListener,),
        {"on_partitions_revoked": revoked, "on_partitions_assigned": assigned},
    )
    return cls()


class Membership(enum.Enum):
    """What the group coordinator said about a member (:func:`check_membership`)."""

    #: The member is in the group's current generation: what it was assigned is still its own.
    CURRENT = "current"
    #: The coordinator expelled it (session expired, e.g. a process frozen past its session
    #: timeout): what it was assigned may belong to another member now.
    EXPELLED = "expelled"
    #: A rebalance is under way; ask again once the assignment is settled.
    REBALANCING = "rebalancing"


async def check_membership(consumer: Any, tp: Any) -> Membership:
    """Ask the group coordinator whether ``consumer`` still belongs to its group's current
    generation, by committing an offset for ``tp`` (one of its assigned partitions).

    The coordinator refuses a commit from a member it no longer knows (``UNKNOWN_MEMBER_ID``) or
    from an older generation (``ILLEGAL_GENERATION``), whatever the member believes it holds:
    this is the fencing check of a lease held through a consumer group.
    """
    from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

    try:
        await consumer.commit({tp: (0, "driftswitch lease check")})
    except CommitFailedError as exc:
        if isinstance(exc.__cause__, RebalanceInProgressError):
            return Membership.REBALANCING
        return Membership.EXPELLED
    except IllegalStateError:  # not assigned right now: a rebalance revoked it
        return Membership.REBALANCING
    return Membership.CURRENT


def partitioner() -> Any:
    """Kafka's default key partitioner (murmur2), as producers use it: ``p(key, all, avail)``."""
    from aiokafka.partitioner import DefaultPartitioner

    return DefaultPartitioner()


async def describe_cluster(kafka: KafkaSettings, request_timeout_s: float) -> dict[str, Any]:
    """The cluster id and the brokers (``host``, ``port``) the cluster advertises."""
    client = await open_admin(kafka, request_timeout_ms=max(1, int(request_timeout_s * 1000)))
    try:
        cluster: dict[str, Any] = await client.describe_cluster()
    finally:
        await stop_quietly(client)
    return cluster
