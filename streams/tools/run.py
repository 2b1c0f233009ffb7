"""``driftswitch run``: a worker with its HTTP API, on a given broker or an embedded one.

With neither ``--broker`` nor ``$DRIFTSWITCH_BROKER`` set, an embedded Tansu broker is started
first (memory storage: everything is lost when the command stops) and the topics are created;
the log says where everything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.kafka.options import security_options
from driftswitch.streams.service.runner import (
    DEFAULT_STAGE,
    DEFAULT_WEB_PORT,
    STAGES,
    StartupError,
    check_port,
    serve_worker,
    tune_gc,
    tune_malloc,
)

if TYPE_CHECKING:  # imported where used: `driftswitch --help` stays fast
    from driftswitch.streams.contract.topics import Topics

__all__ = ["BROKER_ENV", "deployment_options", "embedded_or_given", "probe_broker", "run_command"]

log = logging.getLogger(__name__)

BROKER_ENV = "DRIFTSWITCH_BROKER"

_F = TypeVar("_F", bound=Callable[..., Any])


def deployment_options(group_help: str) -> Callable[[_F], _F]:
    """Add ``--config``, ``--broker`` and ``--group``, the options that name a deployment, to a
    command (``run`` and ``flags report``)."""

    def add(command: _F) -> _F:
        for option in reversed(
            (
                click.option(
                    "--config",
                    "config_path",
                    required=True,
                    type=click.Path(dir_okay=False),
                    help="Config file.",
                ),
                click.option(
                    "--broker",
                    "bootstrap",
                    default=None,
                    help=f"Kafka bootstrap [env {BROKER_ENV}].",
                ),
                click.option("--group", default="driftswitch", show_default=True, help=group_help),
            )
        ):
            command = option(command)
        return command

    return add


#: Seconds a broker address gets to accept a connection and answer a Kafka request.
PROBE_TIMEOUT_S = 3.0


def _api_versions_request(correlation_id: int) -> bytes:
    """A Kafka ApiVersions v0 request: every Kafka broker answers it, before any SASL step."""
    client_id = b"driftswitch-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(body)) + body


async def _probe_one(host: str, port: int, plaintext: bool, timeout_s: float) -> str | None:
    """None if ``host:port`` looks like a Kafka listener, else what went wrong."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return f"no connection within {timeout_s:.0f} s"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    try:
        if not plaintext:  # TLS: the Kafka client does the handshake; a connection is enough
            return None
        writer.write(_api_versions_request(0x44535701))
        try:
            await asyncio.wait_for(writer.drain(), timeout_s)
            head = await asyncio.wait_for(reader.read(64), timeout_s)
            if 0 < len(head) < 8:  # a Kafka answer split after a few bytes
                head += await asyncio.wait_for(reader.read(64), timeout_s)
        except TimeoutError:
            return f"connected, but no answer to a Kafka request within {timeout_s:.0f} s"
        except OSError:
            return None  # closed on us, as a TLS or SASL listener does: the Kafka client says so
        if not head or (len(head) >= 2 and head[0] in (0x15, 0x16) and head[1] == 0x03):
            return None  # closed, or a TLS record (alert): a TLS listener, the client says so
        if len(head) >= 8:
            size, correlation = struct.unpack(">ii", head[:8])
            if 4 <= size <= 1 << 20 and correlation == 0x44535701:
                return None
        text = head.decode("ascii", "replace").strip()
        first = text.splitlines()[0] if text else ""
        shown = first if first.isprintable() and first else head[:16].hex()
        return f"connected, but it answered a Kafka request with {shown!r}..."
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def probe_broker(
    bootstrap: str,
    security_protocol: str = "PLAINTEXT",
    timeout_s: float = PROBE_TIMEOUT_S,
) -> None:
    """Raise :class:`StartupError` within seconds unless some bootstrap address is Kafka.

    Each ``host:port`` gets ``timeout_s`` to accept a connection and, on a plaintext listener,
    to answer a Kafka ApiVersions request (the Kafka client would otherwise retry for its
    request timeout, 40 s, in silence). A listener that closes the connection or answers with
    TLS is left to the Kafka client, whose error names the likely mismatch. Over TLS
    (``security_protocol`` SSL or SASL_SSL) only the connection is checked: the Kafka client
    does the handshake and names its errors.
    """
    protocol = security_protocol.strip().upper()
    plaintext = protocol in ("", "PLAINTEXT", "SASL_PLAINTEXT")
    problems = []
    for address in (a.strip() for a in bootstrap.split(",") if a.strip()):
        host, sep, port_text = address.rpartition(":")
        if not sep or not port_text.isdigit():
            problems.append(f"{address}: expected HOST:PORT")
            continue
        problem = await _probe_one(host.strip("[]"), int(port_text), plaintext, timeout_s)
        if problem is None:
            return
        problems.append(f"{address}: {problem}")
    raise StartupError(
        "no Kafka broker at "
        + "; ".join(problems or [f"{bootstrap!r}: no address"])
        + " (expected a Kafka broker: `driftswitch broker` starts one, and without --broker "
        "`driftswitch run` starts an embedded one)"
    )


def setup_logging(level: str, fmt: str = "text") -> None:
    """Timestamped log lines on stderr, as text or JSON
    (:mod:`driftswitch.streams.service.logs`)."""
    from driftswitch.streams.service.logs import configure_logging

    configure_logging("json" if fmt == "json" else "text", level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


@contextlib.asynccontextmanager
async def embedded_or_given(bootstrap: str | None) -> AsyncIterator[str]:
    """Yield ``bootstrap``, or start an embedded broker for the block and yield its address."""
    if bootstrap:
        yield bootstrap
        return
    from driftswitch.streams.tools.broker import EmbeddedBroker

    async with EmbeddedBroker() as broker:
        log.info(
            "embedded Tansu broker at %s (pid %d, memory storage)", broker.bootstrap, broker.pid
        )
        yield broker.bootstrap


def topics_from(environ: Mapping[str, str]) -> Topics:
    """The deployment's topics from ``DRIFTSWITCH_TOPIC_*`` (see :mod:`.topics`)."""
    from driftswitch.streams.contract.topics import Topics

    return Topics.from_env(environ)


@click.command("run")
@deployment_options(group_help="Worker group (lease).")
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_WEB_PORT,
    show_default=True,
    help="Port of the status page, the admin API, /healthz and /metrics.",
)
@click.option(
    "--web-host", default="127.0.0.1", show_default=True, help="Address the web port listens on."
)
@click.option(
    "--snapshot-interval",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Seconds between state snapshots (the replay after a crash starts at the last one).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="DRIFTSWITCH_STATE_DIR",
    show_envvar=True,
    help="Keep the join's pending entries in RocksDB here, not in memory and snapshots "
    "(no eviction by count; restarts on the same disk recover in bounded time).",
)
@click.option(
    "--stage",
    type=click.Choice(STAGES),
    default=DEFAULT_STAGE,
    show_default=True,
    envvar="DRIFTSWITCH_STAGE",
    show_envvar=True,
    help="all: both stages in this process, connected through the observations topic. join: a "
    "join-stage process (consumer group GROUP.join; run as many as the input topics have "
    "partitions). decide: the decide stage, reading the observations topic (one active worker "
    "per --group, standbys take over). single: join and decide in one worker, without the "
    "observations topic (snapshots of a single worker do not carry over to the stages).",
)
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="DRIFTSWITCH_LOG_FORMAT",
    show_envvar=True,
    help="json: one JSON object per line, with flag/variant/guardrail context.",
)
@click.option(
    "--flagd-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Keep a flagd flag-definition file current here (flagd file sync, provider file mode).",
)
@security_options
def run_command(
    config_path: str,
    bootstrap: str | None,
    web_port: int,
    web_host: str,
    group: str,
    snapshot_interval: float,
    state_dir: str | None,
    log_level: str,
    log_format: str,
    flagd_file: str | None,
    stage: str,
    **kafka_options: str | None,
) -> None:
    """Run the worker: consume events, evaluate guardrails, publish flag changes.

    The admin API (kill, restore, weights, pause, pin, config reload) is enabled by a bearer
    token in $DRIFTSWITCH_ADMIN_TOKEN; SIGHUP re-reads the config file (docs/control.md).
    TLS and SASL for Kafka: the --kafka-* options or DRIFTSWITCH_KAFKA_* variables (README
    "Connecting to your Kafka").
    """
    from driftswitch.streams.service.startup import STARTUP

    STARTUP.mark("main")  # Python started, the command line parsed
    from driftswitch.streams.config.model import load_config
    from driftswitch.streams.kafka.options import security_from_options

    setup_logging(log_level, log_format)
    try:
        config = load_config(config_path)
        topics = topics_from(os.environ)
        security = security_from_options(kafka_options)
    except DriftswitchError as err:
        click.echo(f"driftswitch run: {err}", err=True)
        raise SystemExit(1) from None

    given = bootstrap or os.environ.get(BROKER_ENV)
    if not given and security.security_protocol != "PLAINTEXT":
        click.echo(
            f"driftswitch run: Kafka security settings ({security.describe()}) need a broker: "
            f"--broker or ${BROKER_ENV} (the embedded broker is plaintext only)",
            err=True,
        )
        raise SystemExit(1)

    async def main() -> None:
        check_port(web_host, web_port)  # before a broker is started or contacted
        if given:
            await probe_broker(given, security.security_protocol)
        async with embedded_or_given(given) as address:
            await serve_worker(
                config,
                address,
                topics,
                web_host=web_host,
                web_port=web_port,
                group=group,
                snapshot_interval=snapshot_interval,
                state_dir=state_dir,
                config_path=config_path,
                flagd_file=flagd_file,
                security=security,
                stage=stage,
            )

    tune_gc()
    tune_malloc()
    try:
        asyncio.run(main())
    except DriftswitchError as err:
        click.echo(f"driftswitch run: {err}", err=True)
        raise SystemExit(1) from None
