"""headrace stream: the Kafka worker, client SDK, embedded broker and command line.

import stream
with stream.connect("configs/ccfraud.yaml") as client:
    result = client.infer(dataframe)
"""

from stream.batch import BatchInferenceClient
from stream.client import Client, connect
from stream.exceptions import InferenceFailed, InferenceTimeout

__all__ = [
    "BatchInferenceClient",
    "Client",
    "InferenceFailed",
    "InferenceTimeout",
    "connect",
]
