"""The transport limit: a plain confluent-kafka consume -> produce loop, one topic to another.

``python -m benchmarks._copy BOOTSTRAP SOURCE TARGET GROUP COUNT`` copies ``COUNT`` messages
(value, key and headers, to the same partition number) with the worker's librdkafka settings,
flushes and exits (it commits nothing): what the Kafka path costs without decoding, models or
encoding. It gives up after 10 minutes.
"""

from __future__ import annotations

import sys
import time
from typing import cast

from confluent_kafka import Consumer, Producer

from benchmarks._kafka import PEER_CONSUMER, PEER_PRODUCER

__all__ = ["copy"]

_GIVE_UP_S = 600.0


def copy(bootstrap: str, source: str, target: str, group: str, count: int) -> int:
    """Copy ``count`` messages from ``source`` to ``target``; the number copied."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **PEER_CONSUMER})
    producer = Producer({"bootstrap.servers": bootstrap, **PEER_PRODUCER})
    consumer.subscribe([source])
    copied = 0
    deadline = time.monotonic() + _GIVE_UP_S
    try:
        while copied < count and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.1):
                if message.error() is not None:
                    continue
                value, key, headers = message.value(), message.key(), message.headers()
                while True:
                    try:
                        producer.produce(
                            target,
                            value,
                            key,
                            partition=cast(int, message.partition()),
                            headers=headers,
                        )
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
    bootstrap, source, target, group, count = sys.argv[1:6]
    copy(bootstrap, source, target, group, int(count))
