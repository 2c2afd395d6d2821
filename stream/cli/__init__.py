"""The command line: ``headrace`` and its commands (SPEC §8), the demo and its samples.

- :mod:`~stream.cli.main` parses arguments and runs a command, importing its modules lazily;
- :mod:`~stream.cli.dlq` is ``headrace dlq replay|show``;
- :mod:`~stream.cli.demo` is ``headrace demo`` (``make run``), with :mod:`~stream.cli.samples`;
- :mod:`~stream.cli.display` renders tables and results for a terminal.

It may import every other part of ``stream``; nothing imports it.
"""

from stream.cli.main import main

__all__ = ["main"]
