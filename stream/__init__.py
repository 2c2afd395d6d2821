"""headrace stream: the Kafka runtime around ``pipelines`` — worker, client SDK, CLI.

    import stream
    with stream.connect("configs/ccfraud.yaml") as client:
        result = client.infer(dataframe)

This package's namespace is the client API and the error tree; the rest lives in sub-packages
by concern, each opening with what it holds and what it may import:

    stream/kafka/     librdkafka configs, consumer/producer adapters, admin, embedded broker, fakes
    stream/worker/    the worker loop and its stages, the runtime, replicas, reload
    stream/client/    Client, connect, BatchInferenceClient, wire format, files
    stream/ops/       metrics, health probes, logging
    stream/dlq/       dead letters: replay and show
    stream/cli/       the headrace command line, the demo
    stream/errors.py  the error tree;  stream/types.py  the worker's values;
    stream/headers.py the header names of SPEC §3-5
"""

from stream.client import BatchInferenceClient, Client, connect
from stream.errors import InferenceFailed, InferenceTimeout, KafkaUnavailable, StreamError

__all__ = [
    "BatchInferenceClient",
    "Client",
    "InferenceFailed",
    "InferenceTimeout",
    "KafkaUnavailable",
    "StreamError",
    "connect",
]
