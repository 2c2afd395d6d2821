"""The client SDK and `headrace infer` / `headrace batch` against a real broker and real
`headrace run` workers: results equal in-process Pipeline.infer, failures arrive fast."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest
from confluent_kafka.admin import AdminClient

import stream
from pipelines import Pipeline, formats
from pipelines.formats import Format
from stream.kafka.admin import ensure_topics
from stream.worker.processes import headrace_command
from tests.integration.support import Topics
from tests.integration.workers import REPO, Fleet, ccfraud_table, write_config

pytestmark = pytest.mark.integration

DATA = REPO / "data"
SMOKE = orjson.loads((DATA / "smoke_test.df.json").read_bytes())
SHORT_TENSOR = [{"tensor": [0.5] * 28}]  # ccfraud takes 29 floats: a schema_error
TAG_MODULE = """
import pyarrow as pa


def tag(table, context):
    value = context.parameters.get("tag", "none")
    return pa.table({"tag": pa.array([value] * table.num_rows, pa.string())})
"""
ECHO_MODULE = """
def echo(value, context):
    return {"value": value, "parameters": dict(context.parameters)}
"""


@dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment config with a worker serving it, and a client connected to it."""

    config: Path
    client: stream.Client
    pipeline: Pipeline


def _topics(bootstrap: str, partitions: int) -> Topics:
    suffix = uuid.uuid4().hex[:12]
    topics = Topics(
        bootstrap,
        f"it-client-in-{suffix}",
        f"it-client-out-{suffix}",
        f"it-client-dlq-{suffix}",
        f"it-client-{suffix}",
        partitions,
    )
    ensure_topics(bootstrap, dict.fromkeys(topics.names, partitions))
    return topics


@contextlib.contextmanager
def _deployed(directory: Path, bootstrap: str, **config: Any) -> Iterator[Deployment]:
    """Write a config on fresh topics, start its worker, connect; tear all down after."""
    topics = _topics(bootstrap, partitions=2)
    path = write_config(directory, topics, **config)
    fleet = Fleet(directory)
    try:
        fleet.start(path)
        with stream.connect(path) as client:
            yield Deployment(path, client, Pipeline.from_config(path))
    finally:
        fleet.close()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_topics(topics.names).values():
            with contextlib.suppress(Exception):  # best effort: the broker may be gone already
                future.result(timeout=10)


@pytest.fixture(scope="module")
def ccfraud(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The ccfraud model and `fraud` check, served by one worker for this module."""
    with _deployed(tmp_path_factory.mktemp("ccfraud"), bootstrap) as deployment:
        deployment.client.infer(SMOKE, timeout=60)  # warm-up
        yield deployment


def _comparable(result: pd.DataFrame | pa.Table) -> pa.Table:
    """A result as a table without the columns that differ run to run (time, elapsed)."""
    table = formats.table_from_pandas(result) if isinstance(result, pd.DataFrame) else result
    varying = [name for name in ("time", "metadata.elapsed") if name in table.column_names]
    return table.drop_columns(varying)


def _rows(count: int, first_id: int = 0) -> pa.Table:
    return ccfraud_table(list(range(first_id, first_id + count)), seed=first_id)


def _with_short_tensors(table: pa.Table, start: int, count: int) -> pa.Table:
    """``table`` with rows ``start`` .. ``start+count-1`` holding 28 floats instead of 29."""
    tensors = table.column("tensor").to_pylist()
    for row in range(start, start + count):
        tensors[row] = tensors[row][:28]
    column = pa.array(tensors, pa.list_(pa.float32()))
    return table.set_column(table.column_names.index("tensor"), "tensor", column)


def test_each_input_type_comes_back_in_its_own_type(ccfraud: Deployment) -> None:
    """DataFrame -> DataFrame, Table -> Table, dict and list -> pandas-records JSON rows."""
    table = _rows(3)
    assert isinstance(ccfraud.client.infer(table), pa.Table)
    frame = ccfraud.client.infer(formats.table_to_pandas(table))
    assert isinstance(frame, pd.DataFrame) and isinstance(frame["in.tensor"][0], np.ndarray)
    single = ccfraud.client.infer(SMOKE[0])
    assert isinstance(single, list) and len(single) == 1 and "out.dense_1" in single[0]
    assert len(ccfraud.client.infer(SMOKE * 3)) == 3


def test_results_equal_in_process_pipeline_infer(ccfraud: Deployment) -> None:
    """Over Kafka, each input type gives what Pipeline.infer gives, metadata included."""
    table = _rows(25)
    frame = formats.table_to_pandas(table)
    options = {"dataset": ["*", "metadata"]}
    local = ccfraud.pipeline
    got_frame = ccfraud.client.infer(frame, **options)
    assert _comparable(got_frame).equals(_comparable(local.infer(frame, **options)))
    assert _comparable(ccfraud.client.infer(table, **options)).equals(
        _comparable(local.infer(table, **options))
    )
    remote_json = ccfraud.client.infer(SMOKE)
    local_json = local.infer(SMOKE)
    assert [{**r, "time": 0} for r in remote_json] == [{**r, "time": 0} for r in local_json]


def test_dataset_options_select_columns_over_kafka(ccfraud: Deployment) -> None:
    """dataset, dataset_exclude and dataset_separator reach the worker as headers."""
    options = {
        "dataset": ["out", "anomaly", "metadata.pipeline_version"],
        "dataset_exclude": ["anomaly.fraud"],
        "dataset_separator": "/",
    }
    table = _rows(4)
    got = ccfraud.client.infer(table, **options)
    assert got.column_names == ["out/dense_1", "metadata/pipeline_version"]
    assert got.equals(ccfraud.pipeline.infer(table, **options))


def test_dead_letter_raises_inference_failed_at_once(ccfraud: Deployment) -> None:
    """A 28-float tensor raises InferenceFailed(schema_error) long before the 30 s timeout."""
    started = time.monotonic()
    with pytest.raises(stream.InferenceFailed) as raised:
        ccfraud.client.infer(SHORT_TENSOR, timeout=30)
    assert time.monotonic() - started < 5
    error = raised.value
    assert error.error_type == "schema_error"
    assert "tensor" in error.message and "29" in error.message
    assert error.request_id in str(error) and "schema_error" in str(error)


def test_infer_from_file_reads_arrow_and_json(ccfraud: Deployment, tmp_path: Path) -> None:
    """.arrow files (IPC file or stream) give Tables, .df.json files give JSON rows."""
    from_file = ccfraud.client.infer_from_file(DATA / "ccfraud_1k.arrow")
    assert isinstance(from_file, pa.Table) and from_file.num_rows == 1000
    stream_file = tmp_path / "rows.arrow"
    stream_file.write_bytes(formats.encode(_rows(7), Format.ARROW_STREAM))
    assert ccfraud.client.infer_from_file(stream_file).num_rows == 7
    rows = ccfraud.client.infer_from_file(DATA / "smoke_test.df.json")
    assert isinstance(rows, list) and rows[0]["anomaly.fraud"] is False


def test_threads_and_clients_share_topics_without_mixing_replies(ccfraud: Deployment) -> None:
    """Two clients, four threads each: every call gets its own rows back (by request id)."""
    mismatches: list[str] = []
    second = stream.connect(ccfraud.config)

    def calls(client: stream.Client, first_id: int) -> None:
        for call in range(8):
            ids = first_id + 10 * call
            result = client.infer(_rows(2, ids), timeout=30)
            if result.column("in.id").to_pylist() != [ids, ids + 1]:
                mismatches.append(f"{ids}: {result.column('in.id').to_pylist()}")

    threads = [
        threading.Thread(target=calls, args=(client, 1000 * n))
        for n, client in enumerate([ccfraud.client, second] * 4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        second.close()
    assert mismatches == []


def test_parallel_infer_keeps_order_and_isolates_a_failure(ccfraud: Deployment) -> None:
    """parallel_infer returns results in input order; the bad item is its InferenceFailed."""
    items = [_rows(3, 100 * index) for index in range(8)]
    items[5] = _with_short_tensors(items[5], 0, 3)
    results = asyncio.run(ccfraud.client.parallel_infer(items, timeout=30, num_parallel=3))
    assert isinstance(results[5], stream.InferenceFailed)
    assert results[5].error_type == "schema_error"
    for index, result in enumerate(results):
        if index != 5:
            ids = [100 * index + k for k in range(3)]
            assert result.column("in.id").to_pylist() == ids


def test_batch_run_of_10000_rows_returns_them_in_input_order(ccfraud: Deployment) -> None:
    """run(batch_size=50, executors=8) serves 10,000 rows, in input order, as in-process."""
    table = _rows(10_000)
    frame = formats.table_to_pandas(table)
    started = time.monotonic()
    result = stream.BatchInferenceClient(ccfraud.client).run(frame, batch_size=50, executors=8)
    elapsed = time.monotonic() - started
    assert isinstance(result, pd.DataFrame) and len(result) == 10_000
    assert result["in.id"].tolist() == list(range(10_000))
    assert "error" not in result.columns
    local = ccfraud.pipeline.infer(table)
    assert _comparable(result).equals(_comparable(local))
    assert elapsed < 30


def test_batch_run_marks_failed_rows_unless_fail_fast(ccfraud: Deployment) -> None:
    """A bad batch's rows carry `error` and the rest are served; fail_fast raises instead."""
    table = _with_short_tensors(_rows(200), 100, 50)
    batch = stream.BatchInferenceClient(ccfraud.client)
    result = batch.run(table, batch_size=50, executors=4)
    failed = [error is not None for error in result.column("error").to_pylist()]
    assert failed == [False] * 100 + [True] * 50 + [False] * 50
    assert result.column("in.id").to_pylist()[:100] == list(range(100))
    assert "schema_error" in result.column("error")[100].as_py()
    with pytest.raises(stream.InferenceFailed, match="schema_error"):
        batch.run(table, batch_size=50, executors=4, fail_fast=True)


def test_timeout_when_no_worker_serves(new_topics: Callable[..., Topics], tmp_path: Path) -> None:
    """Without a worker, infer raises InferenceTimeout after `timeout`, naming the topics."""
    topics = new_topics()
    config = write_config(tmp_path, topics)
    with stream.connect(config) as client:
        started = time.monotonic()
        with pytest.raises(stream.InferenceTimeout) as raised:
            client.infer(SMOKE, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 3
    assert topics.output in str(raised.value) and topics.input in str(raised.value)


def test_parameters_reach_python_steps(bootstrap: str, tmp_path: Path) -> None:
    """`parameters` of infer and of BatchInferenceClient.run arrive as context.parameters."""
    steps = [{"python": {"name": "tag", "function": "client_tag:tag"}}]
    with _deployed(
        tmp_path, bootstrap, name="tag", steps=steps, modules={"client_tag": TAG_MODULE}
    ) as tag:
        table = pa.table({"id": [1, 2]})
        got = tag.client.infer(table, timeout=30, parameters={"tag": "blue"})
        assert got.column("out.tag").to_pylist() == ["blue", "blue"]
        assert _comparable(got).equals(
            _comparable(tag.pipeline.infer(table, parameters={"tag": "blue"}))
        )
        frame = pd.DataFrame({"id": range(30)})
        run = stream.BatchInferenceClient(tag.client).run(
            frame, batch_size=7, executors=2, parameters={"tag": "red"}
        )
        assert run["out.tag"].tolist() == ["red"] * 30 and run["in.id"].tolist() == list(range(30))


def test_custom_json_pipelines_take_and_return_json(bootstrap: str, tmp_path: Path) -> None:
    """A custom-json pipeline gets the JSON value as it is and its JSON result comes back."""
    steps = [{"python": {"name": "echo", "function": "client_echo:echo", "accepts": "custom-json"}}]
    with _deployed(
        tmp_path, bootstrap, name="echo", steps=steps, modules={"client_echo": ECHO_MODULE}
    ) as echo:
        value = {"count": [1, 2, 3]}
        got = echo.client.infer(value, timeout=30, parameters={"unit": "day"})
        assert got == echo.pipeline.infer(value, parameters={"unit": "day"})
        assert got == {"value": value, "parameters": {"unit": "day"}}
        from_file = echo.client.infer_from_file(DATA / "forecast.json", data_format="custom-json")
        assert from_file["value"] == orjson.loads((DATA / "forecast.json").read_bytes())


def _headrace(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return subprocess.run(
        headrace_command(*args),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_infer_prints_and_writes_results(ccfraud: Deployment, tmp_path: Path) -> None:
    """`headrace infer` prints a JSON file's result and writes an Arrow file's to --out."""
    printed = _headrace("infer", str(ccfraud.config), "--file", str(DATA / "smoke_test.df.json"))
    assert printed.returncode == 0, printed.stderr
    assert "out.dense_1" in printed.stdout and "anomaly.fraud" in printed.stdout
    out = tmp_path / "result.arrow"
    written = _headrace(
        "infer", str(ccfraud.config), "--file", str(DATA / "ccfraud_1k.arrow"), "--out", str(out)
    )
    assert written.returncode == 0, written.stderr
    assert pa.ipc.open_file(out).read_all().num_rows == 1000
    unknown = _headrace("infer", str(ccfraud.config), "--file", str(REPO / "README.md"))
    assert unknown.returncode == 2 and "README.md" in unknown.stderr


def test_cli_batch_serves_a_file_in_batches(ccfraud: Deployment, tmp_path: Path) -> None:
    """`headrace batch` serves every row of a file and writes them, in order, as JSON."""
    out = tmp_path / "rows.json"
    done = _headrace(
        "batch",
        str(ccfraud.config),
        "--file",
        str(DATA / "ccfraud_1k.arrow"),
        "--batch-size",
        "100",
        "--executors",
        "4",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "1000 rows in 10 requests, 0 rows failed" in done.stdout
    rows = orjson.loads(out.read_bytes())
    tensors = pa.ipc.open_file(DATA / "ccfraud_1k.arrow").read_all().column("tensor")
    assert len(rows) == 1000
    assert np.allclose(rows[999]["in.tensor"], tensors[999].as_py())
