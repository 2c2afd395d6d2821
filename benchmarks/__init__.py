"""``python -m benchmarks [--quick]``: the SPEC §10 targets measured in one run.

A fresh embedded broker on a free port, real ``headrace run`` worker processes, and a table of
each figure next to its target. See :mod:`benchmarks.__main__`.
"""

__all__: list[str] = []
