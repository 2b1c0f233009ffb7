"""docker-compose.yml, checked without Docker: files exist, commands parse, ports line up.

Docker cannot run on the build machines, so this test reads the
compose file the way compose would (YAML with merge keys) and checks what would otherwise only
fail at ``docker compose up``. The deployment is the scaled one: join-stage and decide-stage
processes of one group.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.hooks import resolve_hooks
from driftswitch.streams.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCS = ROOT / "README.md"
JOINS = ("join-1", "join-2")
DECIDES = ("decide-1", "decide-2")
WORKERS = (*JOINS, *DECIDES)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def parse_run(command: list[str]) -> click.Context:
    """Parse ``driftswitch <sub> ...`` with the real click commands, without running it."""
    assert command[0] == "driftswitch", command
    ctx = click.Context(main, info_name="driftswitch")
    sub = main.get_command(ctx, command[1])
    assert sub is not None, f"no such command: driftswitch {command[1]}"
    return sub.make_context(command[1], list(command[2:]), parent=ctx)


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Container path → volume name of the service's named volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith(("./", "/")):
            out[target] = source
    return out


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path of the service's bind mounts (named volumes skipped)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(("./", "/")):
            out[target] = ROOT / source
    return out


def test_services(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {"kafka", *WORKERS, "prometheus", "alertmanager"}
    for name, service in services(compose).items():
        assert "healthcheck" in service, f"{name} has no health check"
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    # Exactly the driftswitch services run the driftswitch image.
    built = {name for name, service in services(compose).items() if "build" in service}
    assert built == set(WORKERS)


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for target, host in mounts(service).items():
            assert host.exists(), f"{name}: {host} (mounted at {target}) does not exist"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build["context"])
            assert (context / "Dockerfile").exists(), name
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _dest = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_kafka_runs_in_kraft_mode(compose: dict[str, Any]) -> None:
    env = services(compose)["kafka"]["environment"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_command_is_a_valid_run_invocation(compose: dict[str, Any], worker: str) -> None:
    service = services(compose)[worker]
    ctx = parse_run(service["command"])
    assert ctx.command.name == "run"
    params = ctx.params
    # The broker is the address Kafka advertises, on the command line and in the environment.
    assert params["bootstrap"] == "kafka:9092"
    assert service["environment"]["DRIFTSWITCH_BROKER"] == "kafka:9092"
    assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    # The HTTP API must listen beyond loopback inside the container, or Prometheus cannot scrape.
    assert params["web_host"] == "0.0.0.0"
    # The config file is mounted, exists on the host and is valid, hooks and all.
    host_config = mounts(service)[params["config_path"]]
    config = load_config(host_config)
    env = {k: str(v) for k, v in service["environment"].items()}
    resolve_hooks(config, dict.fromkeys(env, "set"))  # every secret_env is passed
    # Health check and published port use the worker's web port.
    assert f":{params['web_port']}/healthz" in " ".join(service["healthcheck"]["test"])
    published = [p.rsplit(":", 1) for p in service["ports"]]
    assert [container for _, container in published] == [str(params["web_port"])]


def test_workers_share_one_group_and_publish_distinct_host_ports(compose: dict[str, Any]) -> None:
    contexts = [parse_run(services(compose)[w]["command"]) for w in WORKERS]
    assert len({c.params["group"] for c in contexts}) == 1
    host_ports = [services(compose)[w]["ports"][0].rsplit(":", 1)[0] for w in WORKERS]
    assert len(set(host_ports)) == len(host_ports)
    # Published on loopback only.
    assert all(port.startswith("127.0.0.1:") for port in host_ports)
    # One environment for every driftswitch service (the shared anchor).
    envs = [services(compose)[w]["environment"] for w in WORKERS]
    assert all(env == envs[0] for env in envs)


@pytest.mark.parametrize("worker", JOINS)
def test_join_services_run_the_join_stage_on_the_state_volume(
    compose: dict[str, Any], worker: str
) -> None:
    service = services(compose)[worker]
    params = parse_run(service["command"]).params
    assert params["stage"] == "join"
    # The RocksDB stores live on a named volume (kept across restarts), not in the container.
    assert params["state_dir"] is not None
    volume = named_volumes(service)[params["state_dir"]]
    assert volume in compose["volumes"]


def test_join_services_share_their_state_volume_and_fit_the_partitions(
    compose: dict[str, Any],
) -> None:
    """A partition that moves between join processes finds its store only on a shared disk."""
    volumes = {
        named_volumes(services(compose)[w])[
            parse_run(services(compose)[w]["command"]).params["state_dir"]
        ]
        for w in JOINS
    }
    assert len(volumes) == 1
    # No other service mounts it.
    others = [n for n in services(compose) if n not in JOINS]
    assert all(volumes.isdisjoint(named_volumes(services(compose)[n]).values()) for n in others)
    # A join process beyond the input partition count would own nothing.
    partitions = int(services(compose)[JOINS[0]]["environment"]["DRIFTSWITCH_TOPIC_PARTITIONS"])
    assert len(JOINS) <= partitions


@pytest.mark.parametrize("worker", DECIDES)
def test_decide_services_run_the_decide_stage(compose: dict[str, Any], worker: str) -> None:
    service = services(compose)[worker]
    command = service["command"]
    assert parse_run(command).params["stage"] == "decide"
    # The decide stage keeps no join store: its state is snapshotted to Kafka.
    assert "--state-dir" not in command
    assert "DRIFTSWITCH_STATE_DIR" not in service["environment"]
    assert named_volumes(service) == {}


def test_environment_names_are_known_to_the_code(compose: dict[str, Any]) -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "streams").rglob("*.py"))
    docs = DOCS.read_text()
    for worker in WORKERS:
        env = services(compose)[worker]["environment"]
        for name in env:
            if name.startswith("DRIFTSWITCH_"):
                assert name in source or name.startswith("DRIFTSWITCH_TOPIC_"), name
                assert name in docs, f"{name} is not documented in README.md"
        topics = Topics.from_env({k: str(v) for k, v in env.items()})
        assert topics.predictions.partitions == int(env["DRIFTSWITCH_TOPIC_PARTITIONS"])
    # Names in the file's comments (the examples of optional settings) too.
    for name in set(re.findall(r"\bDRIFTSWITCH_[A-Z0-9_]+\b", COMPOSE.read_text())):
        assert name in source or name.startswith("DRIFTSWITCH_TOPIC_"), name
        assert name in docs, f"{name} is not documented in README.md"


def test_prometheus_scrapes_the_workers_and_loads_the_rules(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "driftswitch")
    assert job["metrics_path"] == "/metrics"
    targets = [(t, sc["labels"]["stage"]) for sc in job["static_configs"] for t in sc["targets"]]
    expected = set()
    for w in WORKERS:
        params = parse_run(services(compose)[w]["command"]).params
        expected.add((f"{w}:{params['web_port']}", params["stage"]))
    assert len(targets) == len(set(targets))
    assert set(targets) == expected
    service = services(compose)["prometheus"]
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    config_in_container = config_flag.split("=", 1)[1]
    assert mounts(service)[config_in_container] == PROMETHEUS
    container_dir = Path(config_in_container).parent
    for rule_file in prom["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).exists()
        assert str(container_dir / rule_file) in mounts(service), rule_file
    am_targets = {
        t
        for am in prom["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    }
    am_ports = {p.rsplit(":", 1)[1] for p in services(compose)["alertmanager"]["ports"]}
    assert am_targets == {f"alertmanager:{port}" for port in am_ports}


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install -y prometheus"
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_routes_to_a_defined_receiver(compose: dict[str, Any]) -> None:
    service = services(compose)["alertmanager"]
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    am = yaml.safe_load(mounts(service)[config_flag.split("=", 1)[1]].read_text())
    assert am["route"]["receiver"] in {r["name"] for r in am["receivers"]}


def test_a_bad_command_would_be_caught() -> None:
    """The parse is real: a misspelt option fails."""
    with pytest.raises(click.UsageError, match="--web-prot"):
        parse_run(["driftswitch", "run", "--config", "x.yaml", "--web-prot", "1"])
    assert re.search(r"driftswitch", COMPOSE.read_text())
