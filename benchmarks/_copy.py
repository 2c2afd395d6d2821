"""The raw baseline: a plain confluent-kafka consume -> produce loop copying one topic to another.

``python -m benchmarks._copy BOOTSTRAP SOURCE TARGET COUNT`` copies ``COUNT`` messages (value,
key and headers) with the worker's librdkafka settings, then flushes and exits: what the worker's
Kafka path costs without decoding, models or encoding.
"""

from __future__ import annotations

import sys

from confluent_kafka import Consumer, Producer

from pipelines.config import KafkaSettings
from stream.kafka.config import consumer_config, producer_config

__all__ = ["copy"]


def copy(bootstrap: str, source: str, target: str, count: int) -> int:
    """Copy ``count`` messages from ``source`` to ``target``; the number copied."""
    settings = KafkaSettings(group_id=f"headrace-bench-copy-{source}")
    consumer = Consumer(consumer_config(settings, bootstrap))
    producer = Producer(producer_config(settings, bootstrap, **{"message.max.bytes": 2_000_000}))
    consumer.subscribe([source])
    copied = 0
    try:
        while copied < count:
            for message in consumer.consume(1000, 0.1):
                if message.error() is not None:
                    continue
                value, key, headers = message.value(), message.key(), message.headers()
                while True:
                    try:
                        producer.produce(target, value, key, headers=headers)
                        break
                    except BufferError:
                        producer.poll(0.05)
                copied += 1
            producer.poll(0)
        producer.flush(60)
    finally:
        consumer.close()
    return copied


if __name__ == "__main__":
    bootstrap, source, target, count = sys.argv[1:5]
    copy(bootstrap, source, target, int(count))
