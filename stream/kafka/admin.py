"""Kafka topic administration: create what is missing, read partition counts.

Both calls list *all* topics rather than asking for one by name: a metadata request for a
single unknown topic makes brokers with auto-creation on (the embedded Tansu always) create it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import MappingProxyType

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pipelines.config import Settings
from stream.errors import KafkaUnavailable, TopicError
from stream.kafka.config import admin_config, topic_config

__all__ = [
    "PropertyValue",
    "create_topics",
    "ensure_topics",
    "topic_partitions",
]

PropertyValue = str | int | float | bool
_NO_PROPERTIES: Mapping[str, PropertyValue] = MappingProxyType({})
_NO_CONFIG: Mapping[str, str] = MappingProxyType({})
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._TIMED_OUT})


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    properties: Mapping[str, PropertyValue] = _NO_PROPERTIES,
    config: Mapping[str, str] = _NO_CONFIG,
    timeout: float = 15.0,
) -> list[str]:
    """Create the topics in ``topics`` (name -> partitions) that do not exist yet.

    ``properties`` are librdkafka client properties (security, SASL ...); ``config`` are topic
    configs for the topics created here (``max.message.bytes`` ...). Existing topics are left
    as they are, whatever their partition count. Returns the names created, sorted.
    """
    for name, partitions in topics.items():
        if partitions < 1:
            raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
    admin = _Admin(bootstrap, properties, timeout)
    missing = sorted(set(topics) - set(admin.partitions()))
    if not missing:
        return []
    futures = admin.client.create_topics(
        [NewTopic(name, topics[name], config=dict(config)) for name in missing],
        request_timeout=admin.remaining(),
    )
    created = [name for name in missing if admin.created(futures[name])]
    admin.await_visible(created)
    return created


def topic_partitions(
    bootstrap: str,
    topic: str,
    *,
    properties: Mapping[str, PropertyValue] = _NO_PROPERTIES,
    timeout: float = 15.0,
) -> int:
    """Return how many partitions ``topic`` has; raise ``TopicError`` if it does not exist."""
    partitions = _Admin(bootstrap, properties, timeout).partitions()
    if topic not in partitions:
        raise TopicError(f"topic {topic!r} does not exist on {bootstrap}")
    return partitions[topic]


class _LastError:
    """librdkafka ``error_cb``: keeps the latest error text, the most telling reason to report."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, error: KafkaError) -> None:
        if error.code() != KafkaError._ALL_BROKERS_DOWN:  # says less than the error before it
            self.text = error.str()


class _Admin:
    """One AdminClient with a deadline; librdkafka failures become our errors here.

    ``log_level`` 2 keeps librdkafka's per-retry "Connect ... failed" lines off stderr (unless
    the caller's properties set it); its latest error becomes the KafkaUnavailable reason.
    """

    def __init__(
        self, bootstrap: str, properties: Mapping[str, PropertyValue], timeout: float
    ) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.last_error = _LastError()
        conf = admin_config(bootstrap, properties)
        self.client = AdminClient(conf, error_cb=self.last_error)

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def unavailable(self, reason: str) -> KafkaUnavailable:
        self.client.poll(0)  # serve queued error callbacks
        return KafkaUnavailable(self.bootstrap, self.timeout, self.last_error.text or reason)

    def partitions(self) -> dict[str, int]:
        """All topics on the cluster with their partition counts."""
        try:
            metadata = self.client.list_topics(timeout=self.remaining())
        except KafkaException as exc:
            raise self.unavailable(_reason(exc)) from exc
        return {name: len(topic.partitions) for name, topic in metadata.topics.items()}

    def created(self, future: Future[None]) -> bool:
        """Wait for one CreateTopics result: True if created, False if it already existed."""
        try:
            future.result(timeout=self.remaining())
        except FutureTimeout as exc:
            raise self.unavailable("no answer to CreateTopics") from exc
        except KafkaException as exc:
            code = _code(exc)
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            if code in _UNREACHABLE:
                raise self.unavailable(_reason(exc)) from exc
            raise TopicError(f"cannot create topics on {self.bootstrap}: {_reason(exc)}") from exc
        return True

    def await_visible(self, names: list[str]) -> None:
        """Wait until created topics show in metadata (at once on Tansu, a moment on Kafka)."""
        while names:
            partitions = self.partitions()
            if all(partitions.get(name) for name in names):
                return
            if self.deadline <= time.monotonic():
                raise self.unavailable(f"created topics not visible yet: {names}")
            time.sleep(0.05)


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    return error.str() if isinstance(error, KafkaError) else str(error)


def create_topics(settings: Settings, bootstrap: str) -> list[str]:
    """Create the input, output and dead-letter topics that are missing."""
    kafka = settings.kafka
    created = ensure_topics(
        bootstrap,
        dict.fromkeys(
            (kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic), kafka.partitions
        ),
        properties=kafka.librdkafka_properties(),
        config=topic_config(kafka),
    )
    return created
