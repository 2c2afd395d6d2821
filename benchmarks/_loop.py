"""The limit of Python + librdkafka + onnxruntime: the leanest at-least-once loop we could write.

``python -m benchmarks._loop BOOTSTRAP SOURCE TARGET GROUP COUNT MODEL {json,arrow}`` consumes
up to 1,000 messages at a time, decodes them (one JSON parse for the whole batch; one Arrow
decode per message), runs the model once per batch of up to 1,000 rows, produces one result
per request (same key, same partition number, no delivery callbacks), then flushes and commits
the batch's offsets before consuming the next. No dead letters, ordering guarantees beyond
Kafka's own, metrics or error handling: the worker's librdkafka settings and nothing else. It
exits once it has served ``COUNT`` requests, or after 10 minutes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import orjson
import pyarrow as pa
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks._kafka import PEER_CONSUMER, PEER_PRODUCER

__all__ = ["serve"]

_GIVE_UP_S = 600.0
_MAX_ROWS = 1000
_Headers = list[tuple[str, str | bytes | None]]
_JSON: _Headers = [("content-type", b"application/json; format=pandas-records")]
_ARROW: _Headers = [("content-type", b"application/vnd.apache.arrow.stream")]

Rows = npt.NDArray[np.float32]
Batch = Callable[[Sequence[Any]], list[bytes]]


class _Model:
    """The session, and the result column's name (``out.<output>``)."""

    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.column = f"out.{self.session.get_outputs()[0].name}"

    def run(self, rows: Rows) -> Rows:
        result: Rows = self.session.run(None, {self.input: rows})[0]
        return result

    def json_batch(self, messages: Sequence[Any]) -> list[bytes]:
        """One parse for the batch, one run, one pandas-records payload per request."""
        docs = orjson.loads(b"[" + b",".join(m.value() for m in messages) + b"]")
        rows = np.asarray([record["tensor"] for doc in docs for record in doc], dtype=np.float32)
        results = self.run(rows).tolist()
        payloads, at = [], 0
        for doc in docs:
            payloads.append(
                orjson.dumps([{self.column: row} for row in results[at : at + len(doc)]])
            )
            at += len(doc)
        return payloads

    def arrow_batch(self, messages: Sequence[Any]) -> list[bytes]:
        """One decode per message, one run per up to 1,000 rows, one Arrow payload each."""
        tensors = []
        for message in messages:
            tensor = pa.ipc.open_stream(message.value()).read_all().column("tensor")
            tensor = tensor.combine_chunks()
            tensors.append(tensor.flatten().to_numpy().reshape(len(tensor), -1))
        payloads: list[bytes] = []
        start = 0
        while start < len(tensors):
            end, rows = start + 1, len(tensors[start])
            while end < len(tensors) and rows + len(tensors[end]) <= _MAX_ROWS:
                rows += len(tensors[end])
                end += 1
            group = tensors[start:end]
            results = self.run(group[0] if len(group) == 1 else np.concatenate(group))
            at = 0
            for tensor in group:
                payloads.append(self._arrow(results[at : at + len(tensor)]))
                at += len(tensor)
            start = end
        return payloads

    def _arrow(self, result: Rows) -> bytes:
        offsets = np.arange(0, result.size + 1, result.shape[1], dtype=np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(result.ravel()))
        table = pa.table({self.column: column})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())


def serve(  # noqa: PLR0917  # the command line's arguments, in order
    bootstrap: str, source: str, target: str, group: str, count: int, model: str, kind: str
) -> int:
    """Serve ``count`` requests of ``source`` into ``target``; how many were served."""
    served_by = _Model(model)
    batch: Batch = served_by.json_batch if kind == "json" else served_by.arrow_batch
    headers = _JSON if kind == "json" else _ARROW
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **PEER_CONSUMER})
    producer = Producer({"bootstrap.servers": bootstrap, **PEER_PRODUCER})
    consumer.subscribe([source])
    served = 0
    deadline = time.monotonic() + _GIVE_UP_S
    try:
        while served < count and time.monotonic() < deadline:
            messages = [m for m in consumer.consume(1000, 0.1) if m.error() is None]
            if not messages:
                continue
            for message, payload in zip(messages, batch(messages), strict=True):
                producer.produce(
                    target,
                    payload,
                    message.key(),
                    partition=cast(int, message.partition()),
                    headers=headers,
                )
            producer.flush(60)
            consumer.commit(offsets=_next_offsets(messages), asynchronous=False)
            served += len(messages)
    finally:
        consumer.close()
    return served


def _next_offsets(messages: Sequence[Any]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        last[message.topic(), message.partition()] = message.offset()
    return [TopicPartition(topic, part, offset + 1) for (topic, part), offset in last.items()]


if __name__ == "__main__":
    bootstrap, source, target, group, count, model, kind = sys.argv[1:8]
    serve(bootstrap, source, target, group, int(count), model, kind)
