"""How driftswitch connects to Kafka: the bootstrap address and the security settings.

One :class:`KafkaSecurity` value describes TLS and SASL for every connection the project makes
(the worker's consumers and producers, its lease, snapshots and admin reads, the client, and the
CLI commands). It reads from

- the environment (:meth:`KafkaSecurity.from_env`): ``DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL``,
  ``DRIFTSWITCH_KAFKA_SASL_MECHANISM``, ``DRIFTSWITCH_KAFKA_SASL_USERNAME``,
  ``DRIFTSWITCH_KAFKA_SASL_PASSWORD``, ``DRIFTSWITCH_KAFKA_SSL_CAFILE``,
  ``DRIFTSWITCH_KAFKA_SSL_CERTFILE``, ``DRIFTSWITCH_KAFKA_SSL_KEYFILE`` and
  ``DRIFTSWITCH_KAFKA_SSL_KEY_PASSWORD``;
- librdkafka's property names (:meth:`KafkaSecurity.from_properties`, or a mapping passed where
  a :class:`KafkaSecurity` is expected): ``security.protocol``, ``sasl.mechanism``,
  ``sasl.username``, ``sasl.password``, ``ssl.ca.location``, ``ssl.certificate.location``,
  ``ssl.key.location`` and ``ssl.key.password``, so settings copy over from other Kafka tools;
- keyword arguments with the Python names (``security_protocol="SASL_SSL"``, ...).

Passwords are :class:`pydantic.SecretStr`: their ``repr`` and ``str`` are masked, and no error
message or log line of driftswitch includes them. This module builds no connection; the
factory in :mod:`driftswitch.streams.kafka.connect` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from driftswitch.streams.contract.errors import DriftswitchError

__all__ = [
    "ENV",
    "PROPERTIES",
    "KafkaConnectError",
    "KafkaSecurity",
    "KafkaSettings",
    "KafkaSettingsError",
    "SecurityLike",
    "as_settings",
]

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: Field → environment variable.
ENV: dict[str, str] = {
    "security_protocol": "DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "DRIFTSWITCH_KAFKA_SASL_MECHANISM",
    "sasl_username": "DRIFTSWITCH_KAFKA_SASL_USERNAME",
    "sasl_password": "DRIFTSWITCH_KAFKA_SASL_PASSWORD",
    "ssl_cafile": "DRIFTSWITCH_KAFKA_SSL_CAFILE",
    "ssl_certfile": "DRIFTSWITCH_KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "DRIFTSWITCH_KAFKA_SSL_KEYFILE",
    "ssl_key_password": "DRIFTSWITCH_KAFKA_SSL_KEY_PASSWORD",
}

#: Field → librdkafka property name.
PROPERTIES: dict[str, str] = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
}

#: Field or librdkafka name → field.
_FIELD_OF = {**{f: f for f in PROPERTIES}, **{p: f for f, p in PROPERTIES.items()}}
_SASL_FIELDS = ("sasl_mechanism", "sasl_username", "sasl_password")
_SSL_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")


class KafkaSettingsError(DriftswitchError):
    """The Kafka security settings are incomplete or contradict each other."""


class KafkaConnectError(DriftswitchError):
    """Kafka could not be reached, or refused the TLS handshake or the SASL credentials."""


def _name(field: str) -> str:
    """``sasl.username (DRIFTSWITCH_KAFKA_SASL_USERNAME)``: how a message names a setting."""
    return f"{PROPERTIES[field]} ({ENV[field]})"


def _alias(field: str) -> Any:
    return AliasChoices(field, PROPERTIES[field])


class KafkaSecurity(BaseModel):
    """TLS and SASL settings for every Kafka connection (default: ``PLAINTEXT``).

    - ``SSL``: TLS; the broker's certificate is checked against ``ssl_cafile`` (default: the
      system's trusted CAs). ``ssl_certfile`` (+ ``ssl_keyfile``, ``ssl_key_password``) adds a
      client certificate (mutual TLS).
    - ``SASL_SSL``: TLS as above plus SASL ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``
      with ``sasl_username`` and ``sasl_password``.
    - ``SASL_PLAINTEXT``: SASL without TLS (the password crosses the network in clear with
      ``PLAIN``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    security_protocol: Protocol = Field("PLAINTEXT", validation_alias=_alias("security_protocol"))
    sasl_mechanism: Mechanism | None = Field(None, validation_alias=_alias("sasl_mechanism"))
    sasl_username: str | None = Field(None, validation_alias=_alias("sasl_username"))
    sasl_password: SecretStr | None = Field(None, validation_alias=_alias("sasl_password"))
    ssl_cafile: Path | None = Field(None, validation_alias=_alias("ssl_cafile"))
    ssl_certfile: Path | None = Field(None, validation_alias=_alias("ssl_certfile"))
    ssl_keyfile: Path | None = Field(None, validation_alias=_alias("ssl_keyfile"))
    ssl_key_password: SecretStr | None = Field(None, validation_alias=_alias("ssl_key_password"))

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("sasl_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        problems: list[str] = []
        protocol = self.security_protocol
        if self.sasl:
            if self.sasl_mechanism is None:
                problems.append(
                    f"{_name('sasl_mechanism')}: {protocol} needs a SASL mechanism "
                    "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                )
            if self.sasl_username is None:
                problems.append(f"{_name('sasl_username')}: {protocol} needs a username")
            if self.sasl_password is None:
                problems.append(f"{_name('sasl_password')}: {protocol} needs a password")
        else:
            problems += [
                f"{_name(f)}: set, but security.protocol {protocol} does not use SASL"
                for f in _SASL_FIELDS
                if getattr(self, f) is not None
            ]
        if self.tls:
            for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, field)
                if path is not None and not path.is_file():
                    problems.append(f"{_name(field)}: file {str(path)!r} not found")
            if self.ssl_keyfile is not None and self.ssl_certfile is None:
                problems.append(
                    f"{_name('ssl_keyfile')}: a client key needs its certificate "
                    f"({_name('ssl_certfile')})"
                )
            if self.ssl_key_password is not None and self.ssl_certfile is None:
                problems.append(
                    f"{_name('ssl_key_password')}: set, but no client certificate is "
                    f"({_name('ssl_certfile')})"
                )
        else:
            problems += [
                f"{_name(f)}: set, but security.protocol {protocol} does not use TLS "
                "(SSL or SASL_SSL does)"
                for f in _SSL_FIELDS
                if getattr(self, f) is not None
            ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tls(self) -> bool:
        """True when connections are encrypted (``SSL`` or ``SASL_SSL``)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        """True when connections authenticate with SASL."""
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """The protocol, and the mechanism and user with SASL (never a password)."""
        if not self.sasl:
            return self.security_protocol
        return f"{self.security_protocol}, SASL {self.sasl_mechanism} as {self.sasl_username!r}"

    def properties(self) -> dict[str, str]:
        """The settings as librdkafka properties, passwords masked (for display)."""
        out: dict[str, str] = {}
        for field, prop in PROPERTIES.items():
            value = getattr(self, field)
            if value is not None:
                out[prop] = "**********" if isinstance(value, SecretStr) else str(value)
        return out

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def parse(cls, values: Mapping[str, Any], *, source: str = "Kafka settings") -> KafkaSecurity:
        """Validate ``values`` (Python or librdkafka names); raise :class:`KafkaSettingsError`."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise KafkaSettingsError(f"{source}: {_message(err)}") from None

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any]) -> KafkaSecurity:
        """From librdkafka property names (``security.protocol``, ``sasl.username``, ...)."""
        return cls.parse(properties, source="Kafka properties")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
    ) -> KafkaSecurity:
        """From the ``DRIFTSWITCH_KAFKA_*`` variables; ``overrides`` (by field) win over them.

        Empty variables count as unset; unset overrides (``None``) leave the variable's value.
        """
        values: dict[str, Any] = {}
        for field, var in ENV.items():
            raw = environ.get(var)
            if raw is not None and raw.strip():
                values[field] = raw if field.endswith("password") else raw.strip()
        for field, value in (overrides or {}).items():
            if field not in ENV:
                raise KafkaSettingsError(f"unknown Kafka setting {field!r}")
            if value is not None:
                values[field] = value
        return cls.parse(values, source="Kafka settings")


def _message(err: ValidationError) -> str:
    parts: list[str] = []
    for problem in err.errors(include_url=False, include_input=False):
        loc = [str(x) for x in problem.get("loc", ())]
        msg = str(problem.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        field = _FIELD_OF.get(loc[0]) if loc else None
        if field is not None:
            parts.append(f"{_name(field)}: {msg}")
        elif loc:
            parts.append(f"{'.'.join(loc)}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)


#: What callers may pass as security settings: a model, a mapping of settings, or nothing.
SecurityLike = KafkaSecurity | Mapping[str, Any] | None


class KafkaSettings(BaseModel):
    """Where Kafka is (``bootstrap``: ``host:port[,host:port...]``) and how to connect to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str = Field(min_length=1)
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)

    def describe(self) -> str:
        """``host:port (SASL_SSL, SASL PLAIN as 'user')``: for messages; never a password."""
        return f"{self.bootstrap} ({self.security.describe()})"


def security_of(security: SecurityLike) -> KafkaSecurity:
    """``security`` as a :class:`KafkaSecurity` (a mapping is validated; None is PLAINTEXT)."""
    if security is None:
        return KafkaSecurity()
    if isinstance(security, KafkaSecurity):
        return security
    return KafkaSecurity.parse(security)


def as_settings(kafka: str | KafkaSettings, security: SecurityLike = None) -> KafkaSettings:
    """A bootstrap address (with ``security``), or settings as they are."""
    if isinstance(kafka, KafkaSettings):
        if security is not None:
            raise TypeError("pass security settings inside KafkaSettings, not beside them")
        return kafka
    return KafkaSettings(bootstrap=kafka, security=security_of(security))
