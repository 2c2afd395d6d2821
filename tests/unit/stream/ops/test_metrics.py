"""The /metrics text of a worker: the request counters and latency histogram counted in bulk."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.ops.metrics import PrometheusMetrics


def _samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"a metric family exposed twice: {names}"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def test_answered_requests_rows_and_latencies_are_exposed_once_each() -> None:
    metrics = PrometheusMetrics("ccfraud")
    for latency_ms in (0, 1, 2, 50):
        metrics.served([3], [1_000_000], 1_000_000 + latency_ms)
    metrics.served([3, 3, 1], [1_040_000 - 51, 1_000_000, 0], 1_040_000)  # 0: no timestamp
    metrics.dead_lettered("expired")
    found = _samples(metrics)
    pipeline = (("pipeline", "ccfraud"),)
    assert found["headrace_requests_total", (("outcome", "served"), *pipeline)] == 7
    assert found["headrace_requests_total", (("outcome", "dead_lettered"), *pipeline)] == 1
    assert found["headrace_rows_total", pipeline] == 19
    bucket = "headrace_request_latency_seconds_bucket"
    assert found[bucket, (("le", "0.001"), *pipeline)] == 2  # a value on a bound counts in it
    assert found[bucket, (("le", "0.0025"), *pipeline)] == 3
    assert found[bucket, (("le", "0.05"), *pipeline)] == 4
    assert found[bucket, (("le", "0.1"), *pipeline)] == 5
    assert found[bucket, (("le", "30.0"), *pipeline)] == 5
    assert found[bucket, (("le", "+Inf"), *pipeline)] == 6
    assert found["headrace_request_latency_seconds_count", pipeline] == 6
    assert abs(found["headrace_request_latency_seconds_sum", pipeline] - 40.104) < 1e-9
    assert found["headrace_dead_letters_total", (("error_type", "expired"), *pipeline)] == 1


def test_many_latencies_between_scrapes_are_all_counted() -> None:
    metrics = PrometheusMetrics("ccfraud")
    for index in range(10_001):
        metrics.served([1], [1_000], 1_000 + index % 3)
    found = _samples(metrics)
    pipeline = (("pipeline", "ccfraud"),)
    assert found["headrace_request_latency_seconds_count", pipeline] == 10_001
    assert found["headrace_request_latency_seconds_bucket", (("le", "0.001"), *pipeline)] == 6_668
    assert found["headrace_requests_total", (("outcome", "served"), *pipeline)] == 10_001
