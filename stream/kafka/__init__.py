"""Kafka plumbing: the only sub-package of ``stream`` that imports ``confluent_kafka``.

- :mod:`~stream.kafka.config` builds every librdkafka config from the settings tree;
- :mod:`~stream.kafka.protocols` holds the consumer and producer protocols the worker is
  written against, and :mod:`~stream.kafka.clients` their confluent-kafka adapters (librdkafka
  errors become :mod:`stream.errors`), the producer's with the transactions of exactly-once;
- :mod:`~stream.kafka.readers` is a consumer assigned partitions by hand at chosen offsets, for
  the client's reply listener and the dead-letter commands;
- :mod:`~stream.kafka.admin` creates topics and reads partition counts;
- :mod:`~stream.kafka.broker` runs the embedded broker (Tansu) and resolves ``embedded``;
- :mod:`~stream.kafka.fakes` are in-memory stand-ins for the broker, clients and clock, held
  to the adapters' behaviour by one contract suite (``tests/integration/kafka/test_contract.py``).

It may import ``pipelines.config`` and ``stream.types``, ``stream.errors``, ``stream.headers``
and ``stream.closing``, nothing else of ``stream``.
"""

from stream.kafka.admin import create_topics, ensure_topics, topic_partitions
from stream.kafka.broker import Connection, EmbeddedBroker, connect_kafka, free_port
from stream.kafka.clients import KafkaConsumer, KafkaProducer, envelope_of
from stream.kafka.protocols import Consumer, Producer
from stream.kafka.readers import PartitionReader

__all__ = [
    "Connection",
    "Consumer",
    "EmbeddedBroker",
    "KafkaConsumer",
    "KafkaProducer",
    "PartitionReader",
    "Producer",
    "connect_kafka",
    "create_topics",
    "ensure_topics",
    "envelope_of",
    "free_port",
    "topic_partitions",
]
