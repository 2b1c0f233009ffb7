"""A slow broker is not an empty one: reads "to the end" and the lost-data check must wait for the
broker's answer, never take a quiet poll for the end of a partition.

A proxy in front of the embedded broker delays every answer by :data:`DELAY` seconds (longer
than any poll the readers make), the way a broker on a loaded machine answers late. Before
the fix, the lost-data check took the late answer for "no records past the reported end" and
reset intact partitions to their start, so a restarted worker counted the input twice.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from driftswitch.streams.contract.topics import TopicSpec
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.settings import as_settings
from driftswitch.streams.service.dataloss import Lost, find_lost, mark_of
from driftswitch.streams.tools.broker import EmbeddedBroker

pytestmark = pytest.mark.broker

#: Seconds each broker answer is held back while the proxy is slow.
DELAY = 0.9
TOPIC = "slow-input"
PARTITIONS = 2
#: Records per partition, produced in several batches so the last batch holds many records
#: (Tansu then reports an end offset well before the true end).
BATCHES, PER_BATCH = 4, 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SlowProxy:
    """A TCP proxy to ``target``; answers from it are held back by ``delay`` seconds each."""

    target: int
    port: int = field(default_factory=free_port)
    delay: float = 0.0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            await asyncio.start_server(self._client, "127.0.0.1", self.port)
            ready.set()

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop)
        assert ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def answers() -> None:
            while data := await up_reader.read(65536):
                await late.put((time.monotonic() + self.delay, data))

        async def deliver() -> None:
            while True:
                due, data = await late.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(t()) for t in (upstream, answers, deliver)]
        try:
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            writer.close()
            up_writer.close()


@pytest.fixture(scope="module")
def slow() -> Iterator[tuple[SlowProxy, EmbeddedBroker]]:
    port = free_port()
    proxy = SlowProxy(target=port)
    proxy.start()
    broker = EmbeddedBroker(port=port, advertised=f"127.0.0.1:{proxy.port}")
    try:
        with broker:
            asyncio.run(fill(f"127.0.0.1:{proxy.port}"))
            yield proxy, broker
    finally:
        proxy.stop()


async def fill(bootstrap: str) -> None:
    await ensure_topics(bootstrap, [TopicSpec(name=TOPIC, partitions=PARTITIONS)])
    producer = await kafka.open_producer(as_settings(bootstrap), linger_ms=20)
    try:
        for b in range(BATCHES):
            sends = [
                await producer.send(TOPIC, b"v%d-%d" % (b, i), key=b"k%d" % i, partition=p)
                for p in range(PARTITIONS)
                for i in range(PER_BATCH)
            ]
            await asyncio.gather(*sends)
    finally:
        await kafka.stop_quietly(producer)


def read_all(bootstrap: str, **options: Any) -> kafka.TopicRead:
    return asyncio.run(kafka.read_partitions(as_settings(bootstrap), TOPIC, **options))


def test_reading_to_the_end_through_a_slow_broker_reads_every_record(
    slow: tuple[SlowProxy, EmbeddedBroker],
) -> None:
    proxy, broker = slow
    proxy.delay = DELAY
    try:
        # Small fetches: the partition comes in several answers, each later than a poll.
        read = read_all(broker.advertised or "", idle_ms=100, max_partition_fetch_bytes=1024)
    finally:
        proxy.delay = 0.0
    assert {tp.partition: len(recs) for tp, recs in read.records.items()} == dict.fromkeys(
        range(PARTITIONS), BATCHES * PER_BATCH
    )
    assert set(read.next_offsets.values()) == {BATCHES * PER_BATCH}


def test_the_lost_data_check_through_a_slow_broker_finds_intact_data_intact(
    slow: tuple[SlowProxy, EmbeddedBroker],
) -> None:
    proxy, broker = slow
    bootstrap = broker.advertised or ""
    read = read_all(bootstrap)
    positions = dict(read.next_offsets)
    marks = {tp: mark_of(recs[-1]) for tp, recs in read.records.items()}
    reported = asyncio.run(end_offsets(bootstrap, list(positions)))
    # The case that needs a fetch: Tansu reports an end before the position.
    assert all(reported[tp] < positions[tp] for tp in positions), (reported, positions)
    proxy.delay = DELAY
    try:
        lost = asyncio.run(find_lost(as_settings(bootstrap), positions, marks))
        # And with a position beyond the data (what a broker that lost its data looks like),
        # the same slow broker gives the true range, not the reported one.
        beyond = {tp: o + 30 for tp, o in positions.items()}
        lost_beyond = asyncio.run(find_lost(as_settings(bootstrap), beyond))
    finally:
        proxy.delay = 0.0
    assert lost == {}
    assert lost_beyond == {tp: Lost(BATCHES * PER_BATCH) for tp in positions}


async def end_offsets(bootstrap: str, tps: list[Any]) -> dict[Any, int]:
    async with kafka.consuming(as_settings(bootstrap), enable_auto_commit=False) as consumer:
        return dict(await consumer.end_offsets(tps))
