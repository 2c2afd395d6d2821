"""Every librdkafka config of headrace, built in one place from the settings tree.

The settings become librdkafka's dotted keys here and nowhere else; ``kafka.properties`` are
passed through verbatim on top (security.protocol, sasl.*, ssl.* ...), less the keys that the
other client kind owns. Each client of headrace has its builder: the worker's consumer and
producer, the client SDK's reply reader and request producer, the dead-letter commands'
reader, and the admin client; :func:`with_error_callback` and :func:`with_commit_callback` add
confluent-kafka's hooks.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pipelines.config import KafkaSettings, Settings

__all__ = [
    "CONSUMER_DEFAULTS",
    "FRAMING_BYTES",
    "PRODUCER_DEFAULTS",
    "Config",
    "RebalanceProtocol",
    "admin_config",
    "consumer_config",
    "dlq_consumer_config",
    "dlq_producer_config",
    "group_instance_id",
    "probe_config",
    "producer_config",
    "rebalance_protocol",
    "reply_consumer_config",
    "request_producer_config",
    "topic_config",
    "transaction_timeout_ms",
    "with_commit_callback",
    "with_error_callback",
    "worker_consumer_config",
    "worker_producer_config",
]

Config = dict[str, str | int | float | bool]

# Headroom librdkafka adds to a message (headers, record framing) on top of its value: a
# producer and a topic allow kafka.max_message_bytes plus this.
FRAMING_BYTES = 64 * 1024
_DEFAULT_MAX_POLL_INTERVAL_MS = 300_000  # librdkafka's
_PUBLISH_AND_COMMIT_S = 30.0  # on top of a batch's serving, before the next poll

# Defaults that work on real Kafka and on the embedded broker alike. The session timeout is
# the smallest a stock Kafka broker allows (group.min.session.timeout.ms = 6000).
CONSUMER_DEFAULTS: Config = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1500,
    "fetch.wait.max.ms": 5,
    # librdkafka keeps asking for more until its prefetch queue holds queued.min.messages
    # (default 100,000) or queued.max.messages.kbytes (default 64 MiB). Once a backlog is all
    # fetched, each ask is an empty fetch every fetch.wait.max.ms that costs the broker CPU the
    # model needs; a queue of 1,000 messages or 4 MiB is still ~20 ms of work or more here
    # (1,000 one-row requests; ~35 of 1,000 rows). Past either, librdkafka looks again after
    # fetch.queue.backoff.ms (its 1 s default left the worker idle in consume() a third of the
    # time on a backlog of 1,000-row requests, measured). A worker that keeps up has an empty
    # queue and polls every fetch.wait.max.ms as before.
    "queued.min.messages": 1000,
    "queued.max.messages.kbytes": 4096,
    "fetch.queue.backoff.ms": 5,
    "partition.assignment.strategy": "range",
}
PRODUCER_DEFAULTS: Config = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
    "partitioner": "murmur2_random",
}


def _base(settings: KafkaSettings, bootstrap: str) -> Config:
    return {"bootstrap.servers": bootstrap, "client.id": f"headrace-{settings.group_id}"}


def consumer_config(
    settings: KafkaSettings, bootstrap: str, **overrides: str | int | float | bool
) -> Config:
    """The librdkafka config of the worker's consumer."""
    config = _base(settings, bootstrap) | CONSUMER_DEFAULTS | {"group.id": settings.group_id}
    return config | _without(settings.librdkafka_properties(), _PRODUCER_ONLY) | overrides


def producer_config(
    settings: KafkaSettings, bootstrap: str, **overrides: str | int | float | bool
) -> Config:
    """The librdkafka config of the worker's producer."""
    config = _base(settings, bootstrap) | PRODUCER_DEFAULTS
    return config | _without(settings.librdkafka_properties(), _CONSUMER_ONLY) | overrides


def _without(properties: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """``kafka.properties`` less the keys the other client kind owns (librdkafka warns)."""
    return {k: v for k, v in properties.items() if not k.startswith(prefixes)}


_CONSUMER_ONLY = (  # the "C" properties of librdkafka's CONFIGURATION.md
    "group.",
    "auto.offset.reset",
    "enable.auto",
    "auto.commit",
    "session.timeout",
    "heartbeat.interval",
    "max.poll.interval",
    "partition.assignment.strategy",
    "coordinator.query.interval",
    "fetch.",
    "max.partition.fetch",
    "queued.",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "offset.store",
    "consume.callback",
)
_PRODUCER_ONLY = (  # the "P" properties of librdkafka's CONFIGURATION.md
    "acks",
    "request.required.acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "linger.ms",
    "queue.buffering.",
    "queuing.strategy",
    "batch.",
    "compression.",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "transactional.id",
    "transaction.timeout.ms",
    "message.send.max.retries",
    "retries",
    "retry.backoff",
    "partitioner",
    "sticky.partitioning",
    "produce.offset.report",
    "delivery.report.only.error",
    "dr_",
)


def worker_consumer_config(
    settings: Settings, bootstrap: str, *, max_serve_s: float = 0.0, replica: str | None = None
) -> Config:
    """The worker's group consumer (read_committed under exactly_once).

    ``max_serve_s`` is the longest one micro-batch may take (a hanging step, isolated by
    bisection, has a bound: ``Pipeline.max_serve_seconds``): the consumer's
    ``max.poll.interval.ms`` is kept above it, with room to publish and commit, so a worker
    busy isolating a hanging step keeps its group membership (heartbeats run on librdkafka's
    own thread). ``kafka.properties`` can set it explicitly.

    With ``kafka.instance_id`` the consumer is a static member of its group
    (``group.instance.id``, see :func:`group_instance_id`; ``replica`` is this process's
    replica index): a worker restarted within ``session.timeout.ms`` gets its partitions back
    without a rebalance of the others, and one that stops does not leave the group at once.
    """
    overrides: Config = {}
    if settings.processing.guarantee == "exactly_once":
        overrides["isolation.level"] = "read_committed"
    instance = group_instance_id(settings.kafka, replica)
    if instance is not None:
        overrides["group.instance.id"] = instance
    needed_ms = int((max_serve_s + _PUBLISH_AND_COMMIT_S) * 1000)
    chosen = "max.poll.interval.ms" in settings.kafka.properties
    if needed_ms > _DEFAULT_MAX_POLL_INTERVAL_MS and not chosen:
        overrides["max.poll.interval.ms"] = needed_ms
    return consumer_config(settings.kafka, bootstrap, **overrides)


def group_instance_id(settings: KafkaSettings, replica: str | None) -> str | None:
    """This worker's static member id: ``kafka.instance_id``, plus ``-<replica>`` for replica
    ``replica`` of ``replicas: N``; None without an ``instance_id`` (dynamic membership)."""
    if settings.instance_id is None:
        return None
    return f"{settings.instance_id}-{replica}" if replica else settings.instance_id


RebalanceProtocol = Literal["EAGER", "COOPERATIVE"]


def rebalance_protocol(config: Mapping[str, Any]) -> RebalanceProtocol:
    """The rebalance protocol a consumer with ``config`` follows (what librdkafka's
    ``rd_kafka_rebalance_protocol`` says once it has joined; confluent-kafka does not expose it).

    COOPERATIVE with ``partition.assignment.strategy: cooperative-sticky`` (librdkafka refuses
    to mix it with an eager strategy) or with the KIP-848 protocol (``group.protocol:
    consumer``): a rebalance then revokes and assigns only the partitions that move. EAGER
    otherwise (range, roundrobin): every rebalance revokes the whole assignment first.
    """
    if str(config.get("group.protocol", "classic")).strip().lower() == "consumer":
        return "COOPERATIVE"
    strategies = str(config.get("partition.assignment.strategy", "range")).split(",")
    cooperative = any(s.strip().lower() == "cooperative-sticky" for s in strategies)
    return "COOPERATIVE" if cooperative else "EAGER"


def worker_producer_config(
    settings: Settings, bootstrap: str, *, transactional_id: str | None = None
) -> Config:
    """The worker's idempotent producer; transactional when given a ``transactional_id``.

    A transaction left open by a worker that died is aborted by the broker after
    ``transaction.timeout.ms`` (:func:`transaction_timeout_ms`; ``kafka.properties`` may set
    it), or at once when a worker with the same ``transactional_id`` starts.
    """
    overrides: Config = {"message.max.bytes": _message_limit(settings.kafka)}
    if transactional_id is not None:
        overrides["transactional.id"] = transactional_id
        properties = settings.kafka.librdkafka_properties()
        timeout = properties.get("transaction.timeout.ms", transaction_timeout_ms(settings))
        overrides["transaction.timeout.ms"] = timeout
    return producer_config(settings.kafka, bootstrap, **overrides)


def transaction_timeout_ms(settings: Settings) -> int:
    """How long a transaction may stay open: 10 commit intervals, at least 10 s (time to flush
    and commit on a busy broker), at most 5 minutes (brokers allow up to 15 by default)."""
    return min(max(10 * settings.processing.commit_interval_ms, 10_000), 300_000)


def reply_consumer_config(settings: KafkaSettings, bootstrap: str) -> Config:
    """The client's reply reader: assigned partitions, never joins a group, commits nothing."""
    overrides: Config = {
        "group.id": f"headrace-client-{uuid.uuid4()}",  # required; never joined
        "client.id": "headrace-client",
        "enable.auto.commit": False,
    }
    return _quiet(consumer_config(settings, bootstrap, **overrides))


def request_producer_config(settings: KafkaSettings, bootstrap: str) -> Config:
    """The client's request producer.

    Not idempotent: a repeated request only gets a second reply, which is skipped, and there
    is no producer-id handshake delaying the first request.
    """
    overrides: Config = {
        "client.id": "headrace-client",
        "linger.ms": 1,
        "enable.idempotence": False,
        "message.max.bytes": _message_limit(settings),
    }
    return _quiet(producer_config(settings, bootstrap, **overrides))


def dlq_consumer_config(settings: KafkaSettings, bootstrap: str, group: str) -> Config:
    """The dead-letter commands' reader, in ``group``; it never commits by itself."""
    overrides: Config = {"group.id": group, "enable.auto.commit": False, "log_level": 3}
    return consumer_config(settings, bootstrap, **overrides)


def dlq_producer_config(settings: KafkaSettings, bootstrap: str) -> Config:
    """The producer of ``headrace dlq replay``: requests as large as the worker takes."""
    overrides: Config = {"message.max.bytes": _message_limit(settings), "log_level": 3}
    return producer_config(settings, bootstrap, **overrides)


def admin_config(bootstrap: str, properties: Mapping[str, Any] | None = None) -> Config:
    """An admin client (topics, metadata probes); librdkafka's retry chatter stays quiet."""
    return {"log_level": 2, **(properties or {}), "bootstrap.servers": bootstrap}


def probe_config(settings: KafkaSettings, bootstrap: str) -> Config:
    """The admin client that probes the broker for ``/readyz``: the connection settings of
    ``kafka.properties`` (security, SASL, SSL ...), and never creating the topic it asks about."""
    properties = _without(settings.librdkafka_properties(), _CONSUMER_ONLY + _PRODUCER_ONLY)
    overrides: Config = {
        "client.id": f"headrace-{settings.group_id}-probe",
        "allow.auto.create.topics": False,
    }
    return admin_config(bootstrap, properties) | overrides


def with_error_callback(config: Mapping[str, Any], callback: object) -> dict[str, Any]:
    """``config`` plus confluent-kafka's ``error_cb``: ``callback(KafkaError)`` hears of the
    client-level errors no call returns (broker down, authentication failed)."""
    return {**config, "error_cb": callback}


def with_commit_callback(config: Mapping[str, Any], callback: object) -> dict[str, Any]:
    """``config`` plus confluent-kafka's ``on_commit``: ``callback(KafkaError | None,
    [TopicPartition])`` hears how each asynchronous commit ended (inside ``poll``/``consume``)."""
    return {**config, "on_commit": callback}


def topic_config(settings: KafkaSettings) -> dict[str, str]:
    """Topic configs of the topics headrace creates: room for the largest request or result."""
    return {"max.message.bytes": str(_message_limit(settings))}


def _message_limit(settings: KafkaSettings) -> int:
    return settings.max_message_bytes + FRAMING_BYTES


def _quiet(config: Config) -> Config:
    return {"log_level": 2, **config}
