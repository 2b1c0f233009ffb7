"""Command-line options for the Kafka security settings, shared by every command that connects.

Each option matches one ``DRIFTSWITCH_KAFKA_*`` variable (``--kafka-sasl-username`` ↔
``DRIFTSWITCH_KAFKA_SASL_USERNAME``); an option given on the command line wins over the
variable. ``--help`` shows the variable's name, never its value. Prefer the variable for the
passwords: a command line is visible to every user of the machine (``ps``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from driftswitch.streams.kafka.settings import ENV, PROPERTIES, KafkaSecurity

__all__ = ["OPTION_FIELDS", "security_from_options", "security_options"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: Option parameter name → KafkaSecurity field.
OPTION_FIELDS = {f"kafka_{field}": field for field in ENV}

_HELP = {
    "security_protocol": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    "sasl_mechanism": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    "sasl_username": "SASL user name",
    "sasl_password": "SASL password (prefer the environment variable)",
    "ssl_cafile": "CA certificate(s) that sign the broker's certificate (PEM)",
    "ssl_certfile": "client certificate for mutual TLS (PEM)",
    "ssl_keyfile": "client key for mutual TLS (PEM)",
    "ssl_key_password": "password of the client key (prefer the environment variable)",
}


def security_options(command: _F) -> _F:
    """Add ``--kafka-security-protocol`` ... ``--kafka-ssl-key-password`` to ``command``."""
    for field in reversed(list(ENV)):
        flag = "--kafka-" + field.replace("_", "-")
        command = click.option(
            flag,
            f"kafka_{field}",
            default=None,
            show_default=False,
            metavar="TEXT" if not field.startswith("ssl_") or "password" in field else "PATH",
            help=f"{_HELP[field]}; librdkafka {PROPERTIES[field]} [env {ENV[field]}].",
        )(command)
    return command


def security_from_options(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> KafkaSecurity:
    """The security settings from the environment, overridden by the options given.

    ``options`` holds the command's parameters (others are ignored). Raises
    :class:`~driftswitch.streams.kafka.settings.KafkaSettingsError` when they do not fit.
    """
    overrides = {field: options.get(name) for name, field in OPTION_FIELDS.items()}
    return KafkaSecurity.from_env(os.environ if environ is None else environ, overrides)
