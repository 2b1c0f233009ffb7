"""Control-plane latency: how long a manual command takes, over HTTP and through the topic.

Run: ``.venv/bin/python benchmarks/control.py [--commands 100]``

One embedded broker, one in-process worker (``serve_worker``) with an admin token, one flag.

1. **HTTP round trip**: alternating ``kill`` / ``restore`` requests; the time from sending the
   request to the ``200`` answer, which comes only after the worker applied the command and the
   broker acknowledged the flag change (p50, p99, max).
2. **Control topic**: the same commands produced with aiokafka to the control topic; the time
   from the broker acknowledging the command to the flag change being read from the flags topic
   (the reader polls with ``fetch_max_wait_ms=5``; with aiokafka's default 500 ms, Tansu holds
   the fetch and this figure reads ~250 ms, an artefact of the reader, not of the worker).
3. **Reload**: ``POST /api/v1/config/reload`` of an unchanged config (validate + reconfigure +
   snapshot).

Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.runner import serve_worker
from driftswitch.streams.tools.broker import EmbeddedBroker, free_port

CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 70, value: v1}
      candidate: {weight: 30, value: v2}
"""
TOKEN = "benchmark-token"


def figures(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(
        f"{name}: n={len(ms)} p50={statistics.median(ms):.1f} ms "
        f"p99={p99:.1f} ms max={ms[-1]:.1f} ms"
    )


async def main(commands: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "driftswitch.yaml"
        path.write_text(CONFIG)
        config = load_config(path)
        async with EmbeddedBroker() as broker:
            topics = Topics.with_prefix("bench")
            port = free_port()
            stop = asyncio.Event()
            env = {"DRIFTSWITCH_ADMIN_TOKEN": TOKEN}
            task = asyncio.ensure_future(
                serve_worker(
                    config,
                    broker.bootstrap,
                    topics,
                    web_port=port,
                    stop=stop,
                    environ=env,
                    config_path=str(path),
                    stage="single",  # the figures in README.md are the single worker's
                )
            )
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"{base}/healthz") as r:
                            if (await r.json())["role"] == "active":
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)

                http_times: list[float] = []
                for i in range(commands):
                    action = "kill" if i % 2 == 0 else "restore"
                    t0 = time.perf_counter()
                    async with http.post(
                        f"{base}/api/v1/flags/ranker/{action}",
                        json={"variant": "candidate", "reason": "benchmark"},
                        headers=auth,
                    ) as r:
                        assert r.status == 200, await r.text()
                    http_times.append(time.perf_counter() - t0)
                figures("HTTP command round trip", http_times)

                consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=5)
                await consumer.start()
                tp = TopicPartition(topics.flags.name, 0)
                consumer.assign([tp])
                await consumer.seek_to_end(tp)
                producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
                await producer.start()
                topic_times: list[float] = []
                try:
                    for i in range(commands):
                        action = "kill" if i % 2 == 0 else "restore"
                        value = orjson.dumps(
                            {"action": action, "flag": "ranker", "variant": "candidate"}
                        )
                        await producer.send_and_wait(topics.control.name, value, key=b"ranker")
                        t0 = time.perf_counter()
                        seen = False
                        while not seen:
                            batch = await consumer.getmany(tp, timeout_ms=1000)
                            for rec in batch.get(tp, []):
                                change = FlagChangeEvent.model_validate_json(rec.value)
                                seen = seen or change.cause.action.value == action
                        topic_times.append(time.perf_counter() - t0)
                finally:
                    await producer.stop()
                    await consumer.stop()
                figures("control topic: command acked -> flag change read", topic_times)

                reload_times: list[float] = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    async with http.post(f"{base}/api/v1/config/reload", headers=auth) as r:
                        assert r.status == 200, await r.text()
                    reload_times.append(time.perf_counter() - t0)
                figures("config reload (unchanged config)", reload_times)
            stop.set()
            await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.commands))
