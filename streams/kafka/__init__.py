"""The Kafka adapter: the only package that imports aiokafka.

- :mod:`~driftswitch.streams.kafka.settings`: where Kafka is and how to connect
  (:class:`KafkaSettings`, :class:`KafkaSecurity`: TLS and SASL, from the environment, librdkafka
  property names or arguments).
- :mod:`~driftswitch.streams.kafka.connect`: the one factory for consumers, producers and admin
  clients, clear connection errors, reading partitions to the end, the lease's group assignor.
- :mod:`~driftswitch.streams.kafka.topics`: creating driftswitch's topics.
- :mod:`~driftswitch.streams.kafka.groups`: a stage's consumer-group membership (partition
  indexes assigned across co-partitioned topics, sticky), and where murmur2 places a key.
"""

from driftswitch.streams.kafka.settings import (
    KafkaConnectError,
    KafkaSecurity,
    KafkaSettings,
    KafkaSettingsError,
    as_settings,
)
from driftswitch.streams.kafka.topics import ensure_topics

__all__ = [
    "KafkaConnectError",
    "KafkaSecurity",
    "KafkaSettings",
    "KafkaSettingsError",
    "as_settings",
    "ensure_topics",
]
