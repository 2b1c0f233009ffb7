"""How long a librdkafka consumer (confluent-kafka) waits for its first record from a consumer
group on the embedded broker, with librdkafka's default session timeout and with 6 s.

    .venv/bin/python benchmarks/group_join.py

docs/control.md quotes the figures (kcat -G behaves the same: it is librdkafka).
"""

from __future__ import annotations

import secrets
import time

from confluent_kafka import Consumer, Producer

from driftswitch.streams.tools.broker import EmbeddedBroker


def main() -> None:
    with EmbeddedBroker() as broker:
        for extra in ({}, {"session.timeout.ms": 6000}):
            topic = "t" + secrets.token_hex(3)
            producer = Producer({"bootstrap.servers": broker.bootstrap})
            producer.produce(topic, b"x")
            producer.flush(30)
            consumer = Consumer(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "group.id": "g" + topic,
                    "auto.offset.reset": "earliest",
                    **extra,
                }
            )
            consumer.subscribe([topic])
            start = time.monotonic()
            while True:
                message = consumer.poll(1.0)
                if message is not None and message.error() is None:
                    break
            label = ", ".join(f"{k}={v}" for k, v in extra.items()) or "librdkafka defaults"
            print(f"{label}: first record after {time.monotonic() - start:.1f} s", flush=True)
            consumer.close()


if __name__ == "__main__":
    main()
