"""The client SDK: the calls a Wallaroo or Qwak user knows, on top of the topics.

- :mod:`~stream.client.client`: ``connect`` and ``Client`` (``infer``, ``infer_from_file``,
  ``parallel_infer``) over a ``Transport``;
- :mod:`~stream.client.transport`: the ``Transport`` protocol and ``KafkaTransport``;
- :mod:`~stream.client.deployments`: a deployment named instead of pointed at;
- :mod:`~stream.client.batch`: ``BatchInferenceClient.run``;
- :mod:`~stream.client.wire`: data to request messages and replies to results, no Kafka;
- :mod:`~stream.client.files`: request and result files.

It reaches Kafka through :mod:`stream.kafka` and never imports the worker, so
``import stream`` loads neither onnxruntime nor the worker.
"""

from stream.client.batch import BatchInferenceClient
from stream.client.client import Client, connect

__all__ = ["BatchInferenceClient", "Client", "connect"]
