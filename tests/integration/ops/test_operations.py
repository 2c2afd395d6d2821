"""Operations on a running worker: metrics and probes, hot swap, and secrets kept secret."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines.formats import Format
from stream.kafka.broker import free_port
from stream.worker.processes import headrace_command
from tests.integration.support import Topics, probe
from tests.integration.workers import (
    REPO,
    Fleet,
    Ids,
    Request,
    ccfraud_table,
    content_type,
    encode,
    write_config,
)

pytestmark = pytest.mark.integration


def _json_requests(ids: Ids, count: int, rows: int) -> list[Request]:
    return [
        Request(
            encode(ccfraud_table(ids.take(rows), seed=n), Format.PANDAS_RECORDS),
            f"key-{n % 8}".encode(),
            content_type(Format.PANDAS_RECORDS),
        )
        for n in range(count)
    ]


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, 0 when absent."""
    for line in metrics.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_count_the_traffic_sent(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """/metrics counts exactly the requests, rows and dead letters sent, and the probes say
    the worker is alive and ready with its partitions."""
    topics = new_topics(partitions=4)
    port = free_port()
    worker = fleet.start(write_config(tmp_path, topics), env={"HEADRACE_METRICS__PORT": str(port)})
    outputs = fleet.outputs(topics)
    good = _json_requests(Ids(), count=40, rows=2)
    bad = [
        Request(b"not a request", b"bad-0"),
        Request(b"\xff\xff\xff\xffgarbage", b"bad-1"),
        Request(b'[{"tensor": [1.0, 2.0]}]', b"bad-2", content_type(Format.PANDAS_RECORDS)),
    ]
    fleet.requests(topics).send(good + bad)
    outputs.wait_for(results=40, dead_letters=3, timeout=30)
    outputs.settle()

    status, metrics = probe(port, "/metrics")
    assert status == 200
    assert _sample(metrics, "headrace_requests_total", outcome="served") == 40
    assert _sample(metrics, "headrace_requests_total", outcome="dead_lettered") == 3
    assert _sample(metrics, "headrace_rows_total", pipeline="ccfraud") == 80
    assert _sample(metrics, "headrace_dead_letters_total", error_type="decode_error") == 2
    assert _sample(metrics, "headrace_dead_letters_total", error_type="schema_error") == 1
    # JSON rows reach a micro-batch before their schema check: the 2-float one may count
    assert 80 <= _sample(metrics, "headrace_batch_rows_sum") <= 81
    assert _sample(metrics, "headrace_step_seconds_count", step="ccfraud") >= 1
    assert _sample(metrics, "headrace_step_seconds_count", step="fraud") >= 1
    assert _sample(metrics, "headrace_request_latency_seconds_count") == 40
    assert _sample(metrics, "headrace_inflight_rows") == 0
    assert "headrace_consumer_lag" in metrics
    assert probe(port, "/healthz") == (200, "ok\n")
    ready, text = probe(port, "/readyz")
    assert ready == 200 and "4 partitions" in text
    assert probe(port, "/nothing")[0] == 404
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_hot_swap_mid_stream_loses_nothing(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """`headrace reload` mid-stream swaps the pipeline: every request gets exactly one
    result, none is dead-lettered, and per partition the version changes once, old to new."""
    topics = new_topics(partitions=4)
    config = write_config(tmp_path, topics)
    worker = fleet.start(config)
    outputs = fleet.outputs(topics)
    stream = fleet.requests(topics).stream(_json_requests(Ids(), 2000, rows=1), per_second=800)
    outputs.wait_for(results=400, timeout=30)

    settings = yaml.safe_load(config.read_text())
    settings["pipeline"]["steps"][1]["check"]["expr"] = "out.dense_1[0] > 0.5"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    reload = _headrace("reload", str(config))
    assert reload.returncode == 0, reload.stderr
    assert str(worker.pid) in reload.stdout
    assert worker.wait_for_log("pipeline reloaded", timeout=15)

    sent = stream.finish()
    missing = outputs.wait_answered(sent, timeout=60)
    outputs.settle()
    assert not missing
    assert not outputs.dead_letters
    assert not outputs.duplicates()
    versions_seen: dict[int, list[str]] = {}
    for record in sorted(outputs.results, key=lambda r: r.source):
        versions = versions_seen.setdefault(record.source[0], [])
        version = record.header("x-pipeline-version")
        if not versions or versions[-1] != version:
            versions.append(version)
    assert len({v for vs in versions_seen.values() for v in vs}) == 2
    assert all(len(versions) <= 2 for versions in versions_seen.values()), versions_seen


def test_bad_reload_is_refused_and_the_old_pipeline_keeps_serving(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A config that does not load is refused by `headrace reload` (exit 2, naming the key)
    and by a worker sent SIGHUP, which logs why and keeps serving its pipeline."""
    topics = new_topics(partitions=1)
    config = write_config(tmp_path, topics)
    worker = fleet.start(config)
    outputs = fleet.outputs(topics)
    requests = fleet.requests(topics)
    requests.send(_json_requests(Ids(), 5, rows=1))
    outputs.wait_for(results=5, timeout=30)
    version = outputs.results[0].header("x-pipeline-version")

    config.write_text(config.read_text().replace("> 0.9", "> (0.9"))
    refused = _headrace("reload", str(config))
    assert refused.returncode == 2
    assert "pipeline.steps[1].check.expr" in refused.stderr
    worker.signal(signal.SIGHUP)
    assert worker.wait_for_log("reload refused", timeout=15)

    requests.send(_json_requests(Ids(), 5, rows=1))
    outputs.wait_for(results=10, timeout=30)
    assert {r.header("x-pipeline-version") for r in outputs.results} == {version}
    assert not outputs.dead_letters


def test_a_secret_from_the_environment_appears_nowhere(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A SASL password taken from the environment is absent from validate's output, every
    worker log line (debug level), the metrics, results and dead letters."""
    secret = "s3cr3t-Pa55w0rd-7f1c"
    topics = new_topics(partitions=1)
    config = write_config(
        tmp_path,
        topics,
        kafka={"properties": {"sasl.username": "alice", "sasl.password": "${HR_TEST_SECRET}"}},
    )
    env = {"HR_TEST_SECRET": secret}
    validate = _headrace("validate", str(config), env=env)
    assert validate.returncode == 0, validate.stderr
    assert "sasl.password=***" in validate.stdout

    port = free_port()
    worker = fleet.start(
        config, env={**env, "HEADRACE_METRICS__PORT": str(port), "HEADRACE_LOG_LEVEL": "debug"}
    )
    outputs = fleet.outputs(topics)
    fleet.requests(topics).send([*_json_requests(Ids(), 3, rows=1), Request(b"junk", b"bad")])
    outputs.wait_for(results=3, dead_letters=1, timeout=30)
    metrics = probe(port, "/metrics")[1]
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    records = outputs.results + outputs.dead_letters
    seen = [validate.stdout, validate.stderr, worker.log(), metrics]
    seen += [repr(record.headers) + repr(record.value) for record in records]
    assert all(secret not in text for text in seen)
    assert "worker started" in worker.log()


def _headrace(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        headrace_command(*args),
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
