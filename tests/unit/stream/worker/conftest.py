"""Fixtures shared by the worker's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stream.worker.tracing import Spans


@pytest.fixture
def exported() -> Iterator[tuple[Spans, InMemorySpanExporter]]:
    """Spans exported to memory, each as it ends."""
    exporter = InMemorySpanExporter()
    spans = Spans.exporting_to("ccfraud", exporter, batched=False)
    yield spans, exporter
    spans.close()
