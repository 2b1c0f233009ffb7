"""End to end: a candidate bad only in region jp, through `driftswitch run` on the embedded broker.

The worker reads simulated events (confluent-kafka producer), its per-region guardrail kills the
candidate in jp only, and the flag change reaches the three consumers a service could use: the
DriftswitchClient following the flags topic, driftswitch's OpenFeature provider on that client,
and openfeature-provider-flagd in file mode on the worker's ``--flagd-file``. All three serve the
default to jp contexts and keep the candidate elsewhere; the decision equals ``backtest``'s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.client.openfeature import DriftswitchProvider
from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.backtest import run as run_backtest
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, simulate, write_jsonl
from driftswitch.streams.tools.testing import WorkerProcess, event_records, flag_changes

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Scenario(
    requests=4_800,
    change_at=1_600,
    rate=50.0,
    seed=15,
    regions=("us", "de", "jp", "br"),
    change_in=("jp",),
    variants=(
        VariantSpec("control", weight=50, accuracy=0.90),
        VariantSpec("candidate", weight=50, accuracy=0.90, accuracy_after=0.70),
    ),
)
KEYS = [f"user-{i}" for i in range(300)]
PATIENCE_S = 60.0
TOKEN = "segments-token-for-tests"


def test_a_jp_only_kill_reaches_client_openfeature_and_flagd(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    config = ROOT / "examples" / "segments.yaml"
    events = list(simulate(SCENARIO))
    flagd_path = tmp_path / "flags.flagd.json"
    worker = start_worker(
        config,
        tmp_path / "worker.log",
        args=["--flagd-file", str(flagd_path)],
        env={"DRIFTSWITCH_ADMIN_TOKEN": TOKEN},
    )
    worker.wait_active()
    client = DriftswitchClient(broker.bootstrap, topics=topics, defaults={"ranker": "control"})
    client.start()
    assert client.wait_ready(30)
    api.set_provider_and_wait(DriftswitchProvider(client), domain="segments-ours")
    try:
        produce(event_records(topics, events))
        worker.wait_caught_up(len(events), 240)

        changes = flag_changes(broker.bootstrap, topics)
        assert [(c.version, c.cause.action.value) for c in changes] == [(1, "init"), (2, "kill")]
        kill = changes[1]
        assert kill.cause.segment == {"region": "jp"}
        assert kill.cause.guardrail == "candidate-accuracy-by-region"
        assert [(o.variant, o.match) for o in kill.segments] == [("candidate", {"region": "jp"})]
        assert kill.variants["candidate"].weight == 50
        assert not kill.variants["candidate"].killed

        # backtest decides the same on the same events, in event-time order as the worker does.
        path = tmp_path / "events.jsonl"
        write_jsonl(events, path)
        offline = [
            o for _, o in run_backtest(load_config(config), path, event_order=True).outputs
            if isinstance(o, FlagChangeEvent)
        ]  # fmt: skip
        assert [(o.version, o.segments, o.cause.segment) for o in offline] == [
            (2, kill.segments, kill.cause.segment)
        ]

        deadline = time.monotonic() + PATIENCE_S
        while (held := client.flag_state("ranker")) is None or held.version < 2:
            assert time.monotonic() < deadline, "the client did not read version 2"
            time.sleep(0.05)
        while (
            orjson.loads(flagd_path.read_bytes())["flags"]["ranker"]["metadata"][
                "driftswitchVersion"
            ]
            < 2
        ):
            assert time.monotonic() < deadline, "the flagd file did not reach version 2"
            time.sleep(0.05)
        api.set_provider_and_wait(
            FlagdProvider(
                resolver_type=ResolverType.FILE, offline_flag_source_path=str(flagd_path)
            ),
            domain="segments-flagd",
        )
        ours, flagd = api.get_client("segments-ours"), api.get_client("segments-flagd")

        def via(of: object, region: str) -> dict[str, str | None]:
            return {
                key: of.get_string_details(  # type: ignore[attr-defined]
                    "ranker",
                    "fallback",
                    EvaluationContext(targeting_key=key, attributes={"region": region}),
                ).variant
                for key in KEYS
            }

        for region in ("jp", "us", "de", "br", "fr"):
            direct = {key: client.variant("ranker", key, {"region": region}) for key in KEYS}
            assert direct == via(ours, region) == via(flagd, region), region
            if region == "jp":
                assert set(direct.values()) == {"control"}
            else:
                share = list(direct.values()).count("candidate") / len(KEYS)
                assert 0.35 < share < 0.65, (region, share)

        # An operator restores the candidate in jp: the CLI, through the admin API.
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("driftswitch")),
                "flags",
                "restore",
                "ranker",
                "--variant",
                "candidate",
                "--segment",
                "region=jp",
                "--reason",
                "fixed for jp",
                "--api",
                worker.url,
            ],
            env={**os.environ, "DRIFTSWITCH_ADMIN_TOKEN": TOKEN},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ranker: version 3: fixed for jp"), done.stdout
        change = worker.get("/api/v1/flags/ranker/history")["changes"][-1]
        assert change["version"] == 3
        assert change["segments"] == []
        assert change["cause"]["segment"] == {"region": "jp"}
        while (held := client.flag_state("ranker")) is None or held.version < 3:
            assert time.monotonic() < deadline + PATIENCE_S, "the client did not read version 3"
            time.sleep(0.05)
        jp = [client.variant("ranker", key, {"region": "jp"}) for key in KEYS]
        assert 0.35 < jp.count("candidate") / len(KEYS) < 0.65
    finally:
        api.clear_providers()
        client.close(timeout_s=2.0)
    # The served document is the file's.
    assert worker.get("/flagd/flags.json") == orjson.loads(flagd_path.read_bytes())
    api_state = worker.get("/api/v1/flags/ranker")
    guard = api_state["evaluation"]["guardrails"]["candidate-accuracy-by-region"]
    assert guard["segments"]["region=jp"]["state"] == "breached"
    assert {guard["segments"][f"region={r}"]["state"] for r in ("us", "de", "br")} == {"ok"}
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    # Segment labels only from the config's allowlist (metric_segments: us, de, jp, br).
    labels = set(
        re.findall(r'driftswitch_guardrail_segment_breaches_total\{[^}]*segment="([^"]*)"', metrics)
    )
    assert "jp" in labels
    assert labels <= {"us", "de", "jp", "br", "other"}
