"""``python -m benchmarks [--quick]``: headrace side by side with what a user would pick instead.

One invocation runs, on a fresh embedded broker per repetition, a ``headrace run`` worker, a
Quix Streams application (``quix_app.py``, in its own virtualenv ``.venv-quix`` from
``requirements-quix.txt``), a minimal at-least-once micro-batching loop (``_loop.py``), a raw
consume+re-produce of the same bytes (``_copy.py``) and bare onnxruntime (``_ort.py``) on the
SPEC §10 workloads; checks every result; and prints the ratios against the SPEC §10 targets
(``_report.py``), written to ``benchmarks/last-run.md``. See :mod:`benchmarks.__main__`.
"""

__all__: list[str] = []
