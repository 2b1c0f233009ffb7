"""The Kafka topics driftswitch reads and writes: names, partitions and configs.

Creating them is :func:`driftswitch.streams.kafka.ensure_topics`.

Names follow ``<prefix>.<entity>.v<major>`` (the major version is the event
contract's, :data:`driftswitch.streams.contract.events.SCHEMA_VERSION`). Configuration, in
increasing
precedence:

- defaults: prefix ``driftswitch``, 4 partitions for predictions, outcomes, repartition and
  observations, 1 for the others;
- :meth:`Topics.with_prefix` / the constructor (one :class:`TopicSpec` per role), or the
  environment through :meth:`Topics.from_env`:

  ``DRIFTSWITCH_TOPIC_PREFIX``
      replaces ``driftswitch`` in every name (``acme.ds`` → ``acme.ds.predictions.v1``);
  ``DRIFTSWITCH_TOPIC_PARTITIONS``
      partitions of the predictions, outcomes and repartition topics (always equal: the join
      is co-partitioned by ``request_id``);
  ``DRIFTSWITCH_TOPIC_OBSERVATIONS_PARTITIONS``
      partitions of the observations topic (keyed by flag: up to this many processes share
      the decide stage);
  ``DRIFTSWITCH_TOPIC_REPLICATION_FACTOR``
      replication factor of every topic (1 suits the embedded broker; use 3 on real Kafka);
  ``DRIFTSWITCH_TOPIC_PREDICTIONS`` … ``DRIFTSWITCH_TOPIC_REPARTITION``
      the full name of one topic (one variable per role of :data:`ROLES`), overriding the
      prefix for it.

The join stage reads partition ``p`` of predictions, outcomes and repartition together: a
record found outside the partition its ``request_id`` belongs in (producers' default
partitioners differ: librdkafka's hashes keys with CRC-32, the Java client's and aiokafka's
with murmur2) is re-sent to that partition of the repartition topic. The join stage's output,
compact scored observations keyed by flag, goes to the observations topic, which the decide
stage reads.

The flags topic is compacted (``cleanup.policy=compact``, key = flag) so its latest record per
flag is the flag's state. The embedded Tansu broker accepts and reports that setting but never
compacts (see :mod:`driftswitch.streams.tools.broker`): readers must keep the last value per key and
never assume one record per flag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.contract.events import SCHEMA_VERSION

__all__ = [
    "DEFAULT_OBSERVATION_PARTITIONS",
    "DEFAULT_PARTITIONS",
    "DEFAULT_PREFIX",
    "ROLES",
    "TopicError",
    "TopicSpec",
    "Topics",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "driftswitch"
#: Partitions of the keyed event topics: up to this many workers share the join.
DEFAULT_PARTITIONS = 4
#: Partitions of the observations topic: up to this many workers share the decisions.
DEFAULT_OBSERVATION_PARTITIONS = 4
#: The topic roles, in the order :meth:`Topics.specs` lists them.
ROLES = (
    "predictions",
    "outcomes",
    "flags",
    "control",
    "deadletter",
    "observations",
    "repartition",
)
#: Kafka's legal topic names: ASCII letters, digits, '.', '_', '-'; at most 249 characters.
_TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"
_COMPACT = {"cleanup.policy": "compact"}


class TopicError(DriftswitchError):
    """Topics could not be created or checked, or the topic settings are invalid."""


class TopicSpec(BaseModel):
    """One topic as driftswitch creates it: name, partition count, replication and configs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_TOPIC_NAME, description="Kafka topic name.")
    partitions: int = Field(ge=1, description="Number of partitions when created.")
    replication_factor: int = Field(default=1, ge=1, description="Replicas of each partition.")
    config: dict[str, str] = Field(
        default_factory=dict, description="Topic configs, e.g. cleanup.policy."
    )

    @property
    def compacted(self) -> bool:
        """Whether the topic keeps the latest record per key (``cleanup.policy`` has compact)."""
        return "compact" in self.config.get("cleanup.policy", "").split(",")


def _name(prefix: str, role: str) -> str:
    return f"{prefix}.{role}.v{SCHEMA_VERSION}"


def _default(role: str) -> TopicSpec:
    return _defaults(DEFAULT_PREFIX, DEFAULT_PARTITIONS, DEFAULT_OBSERVATION_PARTITIONS)[role]


def _defaults(prefix: str, partitions: int, observation_partitions: int) -> dict[str, TopicSpec]:
    def spec(role: str, n: int, config: Mapping[str, str] | None = None) -> TopicSpec:
        return TopicSpec(name=_name(prefix, role), partitions=n, config=dict(config or {}))

    return {
        # Keyed by request_id: equal partition counts put a prediction and its outcome together.
        "predictions": spec("predictions", partitions),
        "outcomes": spec("outcomes", partitions),
        # Keyed by flag; the latest record per flag is its state, so compaction keeps it forever.
        "flags": spec("flags", 1, _COMPACT),
        # Low volume and order matters (manual kill, then restore): one partition.
        "control": spec("control", 1),
        "deadletter": spec("deadletter", 1),
        # The join stage's output, keyed by flag: the decide stage's unit of work.
        "observations": spec("observations", observation_partitions),
        # Input records re-sent to the partition their request_id belongs in: co-partitioned
        # with predictions and outcomes.
        "repartition": spec("repartition", partitions),
    }


class Topics(BaseModel):
    """The topics of one driftswitch deployment, one per role of :data:`ROLES` (frozen; build
    it, never mutate it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    predictions: TopicSpec = Field(
        default_factory=lambda: _default("predictions"),
        description="Prediction events, keyed by request_id.",
    )
    outcomes: TopicSpec = Field(
        default_factory=lambda: _default("outcomes"),
        description="Outcome (label) events, keyed by request_id.",
    )
    flags: TopicSpec = Field(
        default_factory=lambda: _default("flags"),
        description="Flag changes, keyed by flag; compacted; the audit log of every decision.",
    )
    control: TopicSpec = Field(
        default_factory=lambda: _default("control"),
        description="Manual commands (kill, restore, hold) for the evaluation stage.",
    )
    deadletter: TopicSpec = Field(
        default_factory=lambda: _default("deadletter"),
        description="Rejected input records with the reason they were rejected.",
    )
    observations: TopicSpec = Field(
        default_factory=lambda: _default("observations"),
        description="Scored observations from the join stage to the decide stage, keyed by flag.",
    )
    repartition: TopicSpec = Field(
        default_factory=lambda: _default("repartition"),
        description=(
            "Input records re-sent, keyed by request_id, to the partition their key belongs in; "
            "as many partitions as predictions and outcomes."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [spec.name for spec in self.specs()]
        if len(set(names)) != len(names):
            raise ValueError(f"topic names must be distinct, got {names}")
        if self.predictions.partitions != self.outcomes.partitions:
            raise ValueError(
                "predictions and outcomes need the same number of partitions (the join is "
                f"co-partitioned by request_id), got {self.predictions.partitions} and "
                f"{self.outcomes.partitions}"
            )
        if self.repartition.partitions != self.predictions.partitions:
            raise ValueError(
                "the repartition topic needs as many partitions as predictions and outcomes "
                f"(the join reads partition p of each together), got {self.repartition.partitions}"
                f" and {self.predictions.partitions}"
            )
        if not self.flags.compacted:
            raise ValueError("the flags topic must have cleanup.policy=compact")
        return self

    @classmethod
    def with_prefix(
        cls,
        prefix: str = DEFAULT_PREFIX,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        observation_partitions: int = DEFAULT_OBSERVATION_PARTITIONS,
        replication_factor: int = 1,
        names: Mapping[str, str] | None = None,
    ) -> Self:
        """Topics named ``<prefix>.<role>.v1``; ``names`` overrides single roles' full names.

        ``partitions`` is the count of predictions, outcomes and repartition,
        ``observation_partitions`` that of observations.
        """
        unknown = sorted(set(names or {}) - set(ROLES))
        if unknown:
            raise TopicError(f"unknown topic role {unknown[0]!r}; known roles: {', '.join(ROLES)}")
        try:
            specs = {
                role: spec.model_dump()
                for role, spec in _defaults(prefix, partitions, observation_partitions).items()
            }
            for role, spec in specs.items():
                spec["replication_factor"] = replication_factor
                spec["name"] = (names or {}).get(role, spec["name"])
            return cls.model_validate(specs)
        except ValidationError as err:
            raise TopicError(f"invalid topic settings: {err}") from err

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """Topics from ``DRIFTSWITCH_TOPIC_*`` variables (see the module docstring).

        Pass ``os.environ`` explicitly: reading the environment is the caller's decision.
        """
        prefix = environ.get("DRIFTSWITCH_TOPIC_PREFIX", DEFAULT_PREFIX)
        partitions = _env_int(environ, "DRIFTSWITCH_TOPIC_PARTITIONS", DEFAULT_PARTITIONS)
        observation_partitions = _env_int(
            environ, "DRIFTSWITCH_TOPIC_OBSERVATIONS_PARTITIONS", DEFAULT_OBSERVATION_PARTITIONS
        )
        replication = _env_int(environ, "DRIFTSWITCH_TOPIC_REPLICATION_FACTOR", 1)
        names = {
            role: environ[var]
            for role in ROLES
            if (var := f"DRIFTSWITCH_TOPIC_{role.upper()}") in environ
        }
        return cls.with_prefix(
            prefix,
            partitions=partitions,
            observation_partitions=observation_partitions,
            replication_factor=replication,
            names=names,
        )

    def specs(self) -> tuple[TopicSpec, ...]:
        """Every topic, in :data:`ROLES` order."""
        return tuple(getattr(self, role) for role in ROLES)


def _env_int(environ: Mapping[str, str], var: str, default: int) -> int:
    raw = environ.get(var)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TopicError(f"{var}={raw!r}: expected a positive integer") from None
    if value < 1:
        raise TopicError(f"{var}={raw!r}: expected a positive integer")
    return value
