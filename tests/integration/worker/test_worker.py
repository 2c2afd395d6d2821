"""`headrace run` serving good requests: one result each, in order, with the SPEC §4 headers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
import yaml

from pipelines import Pipeline
from pipelines.examples.forecast import forecast
from pipelines.formats import CONTENT_TYPES, Format
from tests.integration.support import Topics
from tests.integration.workers import (
    REPO,
    Fleet,
    Ids,
    Request,
    ccfraud_table,
    decode_rows,
    encode,
    per_partition,
    write_config,
)

pytestmark = pytest.mark.integration

RESULT_COLUMNS = ["time", "in.tensor", "in.id", "out.dense_1", "check_failures", "anomaly.fraud"]


def _mixed_requests(ids: Ids) -> tuple[list[Request], list[tuple[Format, pa.Table]]]:
    """Every table format, 1 to 500 rows, some sniffed, some without x-request-id."""
    rng = np.random.default_rng(11)
    plan = [
        (Format.ARROW_STREAM, False),
        (Format.ARROW_FILE, False),
        (Format.PANDAS_RECORDS, True),  # one JSON object, one row
        (Format.PANDAS_RECORDS, False),
        (Format.OIP, False),
    ]
    sizes = [1, 500, 2, 37, 250, *rng.integers(1, 501, size=5).tolist()]
    requests, expected = [], []
    for number in range(len(sizes) * len(plan)):
        fmt, single = plan[number % len(plan)]
        rows = 1 if single else sizes[number // len(plan)]
        table = ccfraud_table(ids.take(rows), seed=number)
        headers = [("trace", f"trace-{number}".encode()), ("x-param-unused", b"1")]
        if number % 3:
            headers.insert(0, ("content-type", CONTENT_TYPES[fmt].encode()))
        if number % 2:
            headers.append(("x-request-id", f"req-{number}".encode()))
        key = f"key-{number % 8}".encode()
        requests.append(Request(encode(table, fmt, single_object=single), key, headers))
        expected.append((fmt, table))
    return requests, expected


def test_every_good_request_gets_one_result_in_order(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A mixed stream of Arrow, pandas-records and OIP requests gets one result each: same
    key and partition, same rows in order, SPEC columns and headers, input offset order."""
    topics = new_topics(partitions=4)
    config = write_config(tmp_path, topics)
    pipeline = Pipeline.from_config(config)
    requests, expected = _mixed_requests(Ids())
    fleet.start(config)
    sent = fleet.requests(topics).send(requests)
    outputs = fleet.outputs(topics)

    missing = outputs.wait_answered(sent, timeout=60)
    outputs.settle()

    assert not missing, f"{len(missing)} of {len(sent)} requests got no answer"
    assert {s.partition for s in sent} == {0, 1, 2, 3}, "the keys should cover 4 partitions"
    assert outputs.dead_letters == []
    assert Counter(r.source for r in outputs.results) == Counter(s.where for s in sent)
    results = {r.source: r for r in outputs.results}
    for s, (fmt, table) in zip(sent, expected, strict=True):
        result = results[s.where]
        request_id = dict(s.request.headers).get("x-request-id")
        assert result.key == s.request.key
        assert result.partition == s.partition
        assert dict(result.headers) == {
            "x-request-id": request_id or f"{topics.input}:{s.partition}:{s.offset}".encode(),
            "content-type": CONTENT_TYPES[fmt].encode(),
            "x-pipeline": b"ccfraud",
            "x-pipeline-version": pipeline.version.encode(),
            "x-source-topic": topics.input.encode(),
            "x-source-partition": str(s.partition).encode(),
            "x-source-offset": str(s.offset).encode(),
            "trace": dict(s.request.headers)["trace"],
        }
        assert len(result.headers) == 8, result.headers
        rows = decode_rows(result)
        assert rows.column_names == RESULT_COLUMNS
        assert rows["in.id"].to_pylist() == table["id"].to_pylist()
        want = pipeline.infer(table)
        np.testing.assert_allclose(
            np.array(rows["out.dense_1"].to_pylist()),
            np.array(want["out.dense_1"].to_pylist()),
            rtol=1e-5,
            atol=1e-6,
        )
        assert rows["anomaly.fraud"].to_pylist() == want["anomaly.fraud"].to_pylist()
        assert rows["check_failures"].to_pylist() == want["check_failures"].to_pylist()
    for partition, records in per_partition(outputs.results):
        offsets = [int(r.header("x-source-offset")) for r in records]
        assert offsets == sorted(offsets), f"partition {partition} out of input order"
        assert {r.source[0] for r in records} == {partition}


def test_custom_json_requests_get_the_last_steps_json(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A custom-JSON pipeline answers each request with its step's JSON, in offset order,
    and dead-letters only the request its step rejects."""
    topics = new_topics(partitions=4)
    forecast_config = yaml.safe_load((REPO / "configs" / "forecast.yaml").read_text())
    config = write_config(
        tmp_path, topics, name="forecast", steps=forecast_config["pipeline"]["steps"]
    )
    rng = np.random.default_rng(3)
    documents = [{"count": rng.integers(0, 100, size=7 + n).tolist()} for n in range(40)]
    documents[17] = {"count": [1, 2, 3]}  # too short: the step raises
    headers = [
        [("content-type", CONTENT_TYPES[Format.CUSTOM].encode())],
        [("content-type", b"application/json")],
        [],  # sniffed
    ]
    fleet.start(config)
    sent = fleet.requests(topics).send(
        Request(orjson.dumps(doc), f"store-{n % 8}".encode(), headers[n % 3])
        for n, doc in enumerate(documents)
    )
    outputs = fleet.outputs(topics)

    missing = outputs.wait_answered(sent, timeout=30)
    outputs.settle()

    assert not missing
    assert {s.partition for s in sent} == {0, 1, 2, 3}
    assert Counter(r.source for r in outputs.results + outputs.dead_letters) == Counter(
        s.where for s in sent
    )
    (dead,) = outputs.dead_letters
    assert dead.source == sent[17].where
    assert dead.value == sent[17].request.value
    assert dead.header("x-error-type") == "step_error"
    assert dead.header("x-error-step") == "forecast"
    assert dead.header("x-attempts") == "1"
    assert "at least 7 daily values" in dead.header("x-error-message")
    results = {r.source: r for r in outputs.results}
    for n, s in enumerate(sent):
        if n == 17:
            continue
        result = results[s.where]
        assert result.key == s.request.key
        assert result.partition == s.partition
        assert result.header("content-type") == CONTENT_TYPES[Format.CUSTOM]
        assert result.header("x-pipeline") == "forecast"
        assert orjson.loads(result.value) == forecast(documents[n], None)  # type: ignore[arg-type]
    for partition, records in per_partition(outputs.results):
        offsets = [int(r.header("x-source-offset")) for r in records]
        assert offsets == sorted(offsets), f"partition {partition} out of input order"
