"""Helpers shared by the integration tests: a test's topics, consuming a known count, and
asking a worker's probes."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from confluent_kafka import Consumer, Message

# Tansu makes a consumer-group join wait about half of session.timeout.ms: keep it short.
SESSION_TIMEOUT_MS = 6000


@dataclass(frozen=True, slots=True)
class Topics:
    """One test's own topics (created on the broker) and consumer group id."""

    bootstrap: str
    input: str
    output: str
    dead_letter: str
    group_id: str
    partitions: int

    @property
    def names(self) -> list[str]:
        return [self.input, self.output, self.dead_letter]

    def consumer_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings for a consumer in this test's group, reading from the start."""
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group_id,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "enable.auto.commit": False,
        }


def consume(consumer: Consumer, count: int, timeout: float = 20.0) -> list[Message]:
    """Poll until ``count`` messages arrived or ``timeout`` passed; fail on a consumer error."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None:  # never `if message:` -- a Message with an empty value is falsy
            continue
        assert message.error() is None, message.error()
        messages.append(message)
    return messages


def probe(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` (/metrics, /healthz, /readyz) of a worker's metrics port: status and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
