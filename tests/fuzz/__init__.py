"""Adversarial requests through the real decode -> serve -> encode path (SPEC §5: isolation).

A seeded generator makes requests for the example pipelines (ccfraud, digits, forecast): good
ones, and ones mutated every way a producer could get them wrong -- Arrow streams and files
with flipped, cut or stomped bytes, odd schemas, duplicate names, compression bombs;
pandas-records and OIP JSON of the wrong types, shapes and sizes; custom JSON; random bytes --
with odd headers (content types that lie, ``x-dataset`` garbage, header text that is not
UTF-8). They go through :class:`Decoder`, the :class:`Batcher` and :class:`Server` in
micro-batches of 1 to 50 messages, as the worker runs them, and each must end as exactly one
result or one dead letter with a SPEC error type, good requests as results with their rows,
every header encodable -- and no exception may escape.

``make fuzz`` runs ``python -m tests.fuzz`` (100,000 requests); the unit test runs a short one.
"""

from tests.fuzz.runner import Report, main, run
from tests.fuzz.targets import Target, targets

__all__ = ["Report", "Target", "main", "run", "targets"]
