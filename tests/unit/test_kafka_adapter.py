"""The Kafka adapter without a broker: who may import aiokafka, the security settings, the factory.

What crosses Kafka (TLS, refused credentials) is tested against the embedded broker in
tests/integration/test_kafka_tls.py; here: the settings' parsing and errors, that they reach
the aiokafka objects every caller gets, and that no secret leaks into a repr or a message.
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.options import security_from_options
from driftswitch.streams.kafka.settings import (
    ENV,
    PROPERTIES,
    KafkaSecurity,
    KafkaSettings,
    KafkaSettingsError,
    as_settings,
)
from driftswitch.streams.tools.cli import main
from driftswitch.streams.tools.simulate import Scenario, config_yaml

ROOT = Path(__file__).resolve().parents[2]
STREAMS = ROOT / "streams"
PASSWORD = "pa55-w0rd-that-must-not-leak"


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (top level, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_the_adapter_imports_aiokafka() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in STREAMS.rglob("*.py")
        if (STREAMS / "kafka") not in path.parents
        and any(m == "aiokafka" or m.startswith("aiokafka.") for m in imports_of(path))
    )
    assert offenders == []
    # The walk sees the adapter's own imports, so it would see anyone else's.
    assert any("aiokafka" in m for m in imports_of(STREAMS / "kafka" / "connect.py")), (
        "the AST walk found no aiokafka import in the adapter"
    )


def test_no_private_aiokafka_attribute_is_used() -> None:
    for path in STREAMS.rglob("*.py"):
        assert "._client." not in path.read_text(), path


# -- settings ------------------------------------------------------------------------------------


def test_plaintext_by_default() -> None:
    security = KafkaSecurity()
    assert security.security_protocol == "PLAINTEXT"
    assert not security.tls
    assert not security.sasl
    assert kafka.client_options(KafkaSettings(bootstrap="h:9092")) == {
        "bootstrap_servers": "h:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "DRIFTSWITCH_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "DRIFTSWITCH_KAFKA_SASL_USERNAME": "svc",
        "DRIFTSWITCH_KAFKA_SASL_PASSWORD": PASSWORD,
        "DRIFTSWITCH_KAFKA_SSL_CAFILE": str(ca),
    }
    security = KafkaSecurity.from_env(env)
    assert security.security_protocol == "SASL_SSL"
    assert security.sasl_mechanism == "SCRAM-SHA-512"
    assert security.sasl_username == "svc"
    assert security.sasl_password is not None
    assert security.sasl_password.get_secret_value() == PASSWORD
    assert security.ssl_cafile == ca


def test_librdkafka_property_names_are_accepted(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_text("x")
    key.write_text("x")
    security = KafkaSecurity.from_properties(
        {
            "security.protocol": "SSL",
            "ssl.certificate.location": str(cert),
            "ssl.key.location": str(key),
            "ssl.key.password": PASSWORD,
        }
    )
    assert (security.ssl_certfile, security.ssl_keyfile) == (cert, key)
    assert security.properties() == {
        "security.protocol": "SSL",
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": "**********",
    }
    assert set(PROPERTIES) == set(ENV)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"security.protocol": "SASL_SSL", "sasl.password": "x"},
            "sasl.mechanism (DRIFTSWITCH_KAFKA_SASL_MECHANISM): SASL_SSL needs a SASL mechanism",
        ),
        (
            {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.password": "x"},
            "sasl.username (DRIFTSWITCH_KAFKA_SASL_USERNAME): SASL_SSL needs a username",
        ),
        (
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "u",
            },
            "sasl.password (DRIFTSWITCH_KAFKA_SASL_PASSWORD): SASL_PLAINTEXT needs a password",
        ),
        (
            {"security.protocol": "SSL", "ssl.ca.location": "/nowhere/ca.pem"},
            "ssl.ca.location (DRIFTSWITCH_KAFKA_SSL_CAFILE): file '/nowhere/ca.pem' not found",
        ),
        (
            {"sasl.username": "u"},
            "sasl.username (DRIFTSWITCH_KAFKA_SASL_USERNAME): set, but security.protocol "
            "PLAINTEXT does not use SASL",
        ),
        (
            {
                "security.protocol": "SASL_PLAINTEXT",
                "ssl.ca.location": "/x",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "u",
                "sasl.password": "p",
            },
            "ssl.ca.location (DRIFTSWITCH_KAFKA_SSL_CAFILE): set, but security.protocol "
            "SASL_PLAINTEXT does not use TLS",
        ),
        (
            {"security.protocol": "SSL", "sasl.mechanism": "GSSAPI"},
            "sasl.mechanism (DRIFTSWITCH_KAFKA_SASL_MECHANISM): Input should be 'PLAIN', "
            "'SCRAM-SHA-256' or 'SCRAM-SHA-512'",
        ),
        (
            {"security.protocol": "TLS"},
            "security.protocol (DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL): Input should be "
            "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'",
        ),
        ({"bootstrap.servers": "h:1"}, "bootstrap.servers: Extra inputs are not permitted"),
    ],
)
def test_settings_that_do_not_fit_are_clear_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(KafkaSettingsError) as err:
        KafkaSecurity.parse(values)
    assert message in str(err.value)


def test_a_client_key_needs_its_certificate(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(KafkaSettingsError, match=r"a client key needs its certificate"):
        KafkaSecurity.parse({"security.protocol": "SSL", "ssl.key.location": str(key)})


def test_options_override_the_environment() -> None:
    env = {
        "DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DRIFTSWITCH_KAFKA_SASL_MECHANISM": "PLAIN",
        "DRIFTSWITCH_KAFKA_SASL_USERNAME": "from-env",
        "DRIFTSWITCH_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    security = security_from_options(
        {"kafka_sasl_username": "from-option", "kafka_sasl_mechanism": None, "config_path": "x"},
        env,
    )
    assert security.sasl_username == "from-option"
    assert security.sasl_mechanism == "PLAIN"


def test_secrets_are_masked_everywhere() -> None:
    security = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=SecretStr(PASSWORD),
    )
    settings = KafkaSettings(bootstrap="b:9092", security=security)
    for text in (
        repr(security),
        str(security),
        repr(settings),
        security.describe(),
        settings.describe(),
        str(security.properties()),
        security.model_dump_json(),
    ):
        assert PASSWORD not in text
    assert settings.describe() == "b:9092 (SASL_SSL, SASL PLAIN as 'svc')"


def test_a_failure_message_never_carries_the_password() -> None:
    security = KafkaSecurity(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=SecretStr(PASSWORD),
    )
    settings = KafkaSettings(bootstrap="b:9092", security=security)
    # Even an error whose own text holds the password (a broker echoing it) is masked.
    message = kafka.explain_failure(settings, RuntimeError(f"bad credentials {PASSWORD}"))
    assert PASSWORD not in message
    assert message.startswith("cannot reach Kafka at b:9092 (SASL_PLAINTEXT, SASL SCRAM-SHA-256")
    assert "authentication as 'svc' failed" in kafka.explain_failure(settings, KeyError("v"))


def test_run_help_lists_the_options_and_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV.values():
        monkeypatch.setenv(var, PASSWORD)
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for field, var in ENV.items():
        assert "--kafka-" + field.replace("_", "-") in result.output
        assert var in result.output
    assert PASSWORD not in result.output


def test_run_refuses_settings_that_do_not_fit_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(Scenario(requests=10, change_at=5)))
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--config",
            str(config),
            "--broker",
            "h:1",
            "--kafka-security-protocol",
            "SASL_SSL",
        ],
        env=dict.fromkeys(ENV.values()),
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("driftswitch run: Kafka settings: sasl.mechanism")


# -- the factory ---------------------------------------------------------------------------------


def self_signed(tmp_path: Path, name: str, key_password: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate (usable as a CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(key_password.encode())
        if key_password
        else serialization.NoEncryption()
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert_path, key_path


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    return self_signed(tmp_path, "driftswitch-test-ca")[0]


def test_a_wrong_key_password_is_a_clear_error(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "client", key_password="right")
    security = KafkaSecurity(
        security_protocol="SSL",
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_key_password=SecretStr("wrong-" + PASSWORD),
    )
    with pytest.raises(KafkaSettingsError) as err:
        kafka.client_options(KafkaSettings(bootstrap="h:1", security=security))
    assert str(err.value).startswith(
        f"ssl.certificate.location / ssl.key.location: cannot load the client certificate '{cert}'"
    )
    assert PASSWORD not in str(err.value)
    right = security.model_copy(update={"ssl_key_password": SecretStr("right")})
    assert kafka.ssl_context(right) is not None


def test_every_client_gets_the_same_tls_and_sasl_settings(ca: Path) -> None:
    security = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SecretStr(PASSWORD),
        ssl_cafile=ca,
    )
    settings = KafkaSettings(bootstrap="b1:9093,b2:9093", security=security)
    options = kafka.client_options(settings)
    assert options["bootstrap_servers"] == "b1:9093,b2:9093"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "driftswitch-test-ca"),),)
    ]

    async def build() -> list[Any]:
        made = [
            kafka.consumer(settings, group_id=None),
            kafka.producer(settings, linger_ms=1),
            kafka.admin(settings),
        ]
        return [made[0]._client, made[1].client, made[2]._client]

    # The aiokafka connection objects each hold the settings (read from their clients).
    for client in asyncio.run(build()):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "svc"
        assert client._sasl_plain_password == PASSWORD
        assert client._ssl_context is not None


def test_security_keys_in_extra_options_are_refused() -> None:
    with pytest.raises(KafkaSettingsError, match="security_protocol: set by driftswitch"):
        kafka.producer(KafkaSettings(bootstrap="h:1"), security_protocol="SSL")


def test_as_settings() -> None:
    assert as_settings("h:1") == KafkaSettings(bootstrap="h:1")
    given = KafkaSettings(bootstrap="h:1")
    assert as_settings(given) is given
    assert as_settings("h:1", {"security.protocol": "SSL"}).security.tls


def test_the_readme_table_lists_every_setting() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Connecting to your Kafka", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `DRIFTSWITCH_KAFKA_")]
    assert len(rows) == len(ENV)
    for row, (field, var) in zip(rows, ENV.items(), strict=True):
        assert row.startswith(f"| `{var}` | `--kafka-{field.replace('_', '-')}` | ")
        assert f"| `{PROPERTIES[field]}` |" in row


def test_a_failed_produce_is_classified_for_the_records_it_carried() -> None:
    from aiokafka.errors import (
        KafkaTimeoutError,
        MessageSizeTooLargeError,
        NotLeaderForPartitionError,
        ProducerClosed,
        TopicAuthorizationFailedError,
    )

    passing, refused, broken = (
        kafka.SendFailure.PASSING,
        kafka.SendFailure.REFUSED,
        kafka.SendFailure.BROKEN,
    )
    assert kafka.send_failure(KafkaTimeoutError()) is passing  # no answer in request_timeout_ms
    assert kafka.send_failure(NotLeaderForPartitionError()) is passing  # retriable
    assert kafka.send_failure(ConnectionResetError()) is passing
    assert kafka.send_failure(MessageSizeTooLargeError()) is refused
    assert kafka.send_failure(TopicAuthorizationFailedError()) is refused
    assert kafka.send_failure(ProducerClosed()) is broken
    assert kafka.send_failure(RuntimeError("the producer's task died")) is broken


def test_abort_connections_leaves_alone_what_holds_no_connection() -> None:
    # Anything but an aiokafka client, and one that never connected: nothing to abort, no error
    # (stop_quietly calls it in a finally, after every stop).
    async def check() -> None:
        assert kafka.abort_connections(object()) == []
        producer = kafka.producer(KafkaSettings(bootstrap="127.0.0.1:1"))
        assert kafka.abort_connections(producer) == []

    asyncio.run(check())
