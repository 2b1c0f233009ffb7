"""Creating driftswitch's topics on Kafka.

Their names, partitions and configs are :mod:`driftswitch.streams.contract.topics`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from driftswitch.streams.contract.topics import TopicError, Topics, TopicSpec
from driftswitch.streams.kafka.connect import open_admin, stop_quietly
from driftswitch.streams.kafka.settings import KafkaConnectError, KafkaSettings, as_settings

__all__ = ["ensure_topics"]

log = logging.getLogger(__name__)

#: Kafka's error code for "topic already exists" (created meanwhile by someone else: fine).
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    kafka: str | KafkaSettings,
    topics: Topics | Iterable[TopicSpec],
    *,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet and wait until every one has a leader.

    Idempotent: existing topics are left as they are (a different partition count or topic
    config is logged as a warning, never changed). ``kafka`` is a bootstrap address
    (plaintext) or :class:`KafkaSettings` with the security settings. Returns the names created.
    Raises :class:`TopicError` when Kafka cannot be reached, refuses a topic, or a topic has no
    leader in time.
    """
    from aiokafka.admin import NewTopic

    settings = as_settings(kafka)
    specs = list(topics.specs() if isinstance(topics, Topics) else topics)
    wanted = {spec.name: spec for spec in specs}
    try:
        admin = await open_admin(settings)
    except KafkaConnectError as err:
        raise TopicError(str(err)) from None
    try:
        existing = set(await admin.list_topics())
        missing = [spec for name, spec in wanted.items() if name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
                    for s in missing
                ],
                timeout_ms=int(timeout_s * 1000),
            )
            created = _created(response.topic_errors)
            log.info("created topics %s on %s", ", ".join(created) or "(none)", settings.bootstrap)
        await _wait_for_leaders(admin, wanted, timeout_s)
        await _warn_on_drift(admin, [wanted[n] for n in wanted if n not in created])
    finally:
        await stop_quietly(admin)
    return created


def _created(topic_errors: Iterable[tuple[Any, ...]]) -> list[str]:
    """Names the CreateTopics response reports as created; raise on any error but 'exists'."""
    from aiokafka.errors import for_code

    created: list[str] = []
    problems: list[str] = []
    for entry in topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code == 0:
            created.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:  # created meanwhile by someone else: fine
            problems.append(f"{name}: {for_code(code).__name__} ({code}) {message or ''}".strip())
    if problems:
        raise TopicError("the broker refused to create topics: " + "; ".join(problems))
    return created


async def _wait_for_leaders(admin: Any, wanted: Mapping[str, TopicSpec], timeout_s: float) -> None:
    """Poll metadata until every wanted topic has all its partitions with a leader."""
    deadline = time.monotonic() + timeout_s
    pending: list[str] = list(wanted)
    while True:
        described = await admin.describe_topics(list(wanted))
        pending = [
            t["topic"]
            for t in described
            if t["error_code"] != 0
            or not t["partitions"]
            or any(p["leader"] < 0 for p in t["partitions"])
        ]
        pending += [name for name in wanted if name not in {t["topic"] for t in described}]
        if not pending:
            for t in described:
                spec = wanted[t["topic"]]
                if len(t["partitions"]) != spec.partitions:
                    log.warning(
                        "topic %s has %d partitions, driftswitch's setting is %d; left unchanged",
                        spec.name,
                        len(t["partitions"]),
                        spec.partitions,
                    )
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics without a leader after {timeout_s:g} s: {sorted(pending)}")
        await asyncio.sleep(0.1)


async def _warn_on_drift(admin: Any, existing: list[TopicSpec]) -> None:
    """Log existing topics whose configs differ from ours (e.g. a flags topic not compacted)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    checked = [spec for spec in existing if spec.config]
    if not checked:
        return
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, spec.name) for spec in checked]
    )
    actual: dict[str, dict[str, str | None]] = {}
    for response in responses:
        for resource in response.resources:
            actual[resource[3]] = {entry[0]: entry[1] for entry in resource[4]}
    for spec in checked:
        for key, value in spec.config.items():
            have = actual.get(spec.name, {}).get(key)
            if have != value:
                log.warning(
                    "topic %s has %s=%s, driftswitch's setting is %s; left unchanged",
                    spec.name,
                    key,
                    have,
                    value,
                )
