"""The client without a broker: exports, argument checks, data conversion, request splitting,
and Client / BatchInferenceClient behaviour over an in-process fake transport."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

import stream
from pipelines import Pipeline, formats, load_settings
from pipelines.errors import PipelineError
from pipelines.formats import Format
from stream.cli.display import render_result
from stream.client import files, wire
from stream.client.batch import BatchInferenceClient, assemble, split_rows
from stream.client.client import Client
from stream.errors import InferenceFailed, InferenceTimeout, KafkaUnavailable
from stream.kafka.broker import free_port

REPO = Path(__file__).resolve().parents[4]
CCFRAUD = REPO / "configs" / "ccfraud.yaml"
FORECAST = REPO / "configs" / "forecast.yaml"
DATA = REPO / "data"
WIDTH = 29


def _frame(rows: int, *, width: int = WIDTH, first_id: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rows)
    tensors = rng.normal(0, 1.5, size=(rows, width)).astype(np.float32)
    return pd.DataFrame(
        {"tensor": list(tensors), "id": np.arange(first_id, first_id + rows, dtype=np.int64)}
    )


class FakeTransport:
    """Serves requests in-process with a Pipeline on a timer thread, as a worker would.

    ``drop`` requests are never answered (the first ones); it records how many requests
    were in flight at most, and the headers of each request sent.
    """

    def __init__(self, pipeline: Pipeline, *, drop: int = 0, delay: float = 0.002) -> None:
        self.pipeline = pipeline
        self.drop = drop
        self.delay = delay
        self.sent: list[str] = []
        self.headers: list[dict[str, bytes]] = []
        self.forgotten: list[str] = []
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()

    def send(self, request: wire.Request, request_id: str) -> Future[wire.Reply]:
        future: Future[wire.Reply] = Future()
        with self._lock:
            self.sent.append(request_id)
            self.headers.append(dict(request.headers_for(request_id)))
            if self.drop > 0:
                self.drop -= 1
                return future
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        timer = threading.Timer(self.delay, self._answer, (request, request_id, future))
        timer.start()
        return future

    def forget(self, request_id: str) -> None:
        self.forgotten.append(request_id)

    def silence(self) -> str:
        return "fake: nothing came back"

    def close(self) -> None:
        pass

    def _answer(self, request: wire.Request, request_id: str, future: Future[wire.Reply]) -> None:
        headers = dict((k, v.decode()) for k, v in request.headers)
        parameters = {
            k.removeprefix("x-param-"): v for k, v in headers.items() if k.startswith("x-param-")
        }
        try:
            if request.format is Format.ARROW_STREAM:
                table = pa.ipc.open_stream(request.payload).read_all()
                result = self.pipeline.infer(table, parameters=parameters)
                payload = formats.encode(result, Format.ARROW_STREAM)
            else:
                value = orjson.loads(request.payload)
                payload = formats.encode_value(self.pipeline.infer(value, parameters=parameters))
            outcome: wire.Reply | InferenceFailed = wire.Reply(payload, headers["content-type"])
        except PipelineError as exc:
            outcome = InferenceFailed(exc.error_type, exc.message, request_id, step=exc.step)
        with self._lock:
            self.inflight -= 1
        with contextlib.suppress(InvalidStateError):  # the client gave up on it meanwhile
            if isinstance(outcome, InferenceFailed):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


@pytest.fixture(scope="module")
def ccfraud() -> Pipeline:
    return Pipeline.from_config(CCFRAUD)


def _client(
    pipeline: Pipeline, *, wall_clock_ms: Any = None, **options: Any
) -> tuple[Client, FakeTransport]:
    transport = FakeTransport(pipeline, **options)
    clocks = {"wall_clock_ms": wall_clock_ms} if wall_clock_ms is not None else {}
    return Client(pipeline.settings, transport, **clocks), transport


class Ticking:
    """A wall clock in epoch ms that starts at ``start`` and moves ``step`` ms each reading."""

    def __init__(self, start: int = 1_796_032_800_000, step: int = 0) -> None:
        self.now = start - step
        self.step = step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def _without_time(table: pa.Table) -> pa.Table:
    return table.drop_columns(
        [name for name in ("time", "metadata.elapsed") if name in table.column_names]
    )


# ---------------------------------------------------------------- errors


def test_inference_failed_names_type_message_and_request() -> None:
    """InferenceFailed carries error_type, message, request_id; its text names all three."""
    error = InferenceFailed("schema_error", "column 'tensor': 28 values", "req-1", step="ccfraud")
    assert (error.error_type, error.message, error.request_id) == (
        "schema_error",
        error.message,
        "req-1",
    )
    assert "schema_error" in str(error) and "28 values" in str(error) and "req-1" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.error_type, copy.request_id, copy.step) == ("schema_error", "req-1", "ccfraud")
    assert isinstance(InferenceTimeout("r", 1.0), TimeoutError)


# ---------------------------------------------------------------- options and requests


def test_options_become_dataset_and_parameter_headers() -> None:
    """dataset lists travel comma-joined, parameters as x-param-<name>, non-strings as JSON."""
    options = wire.Options.of(["out", "anomaly"], "metadata.elapsed", "/", {"scale": 2, "tag": "a"})
    assert dict(options.headers()) == {
        "x-dataset": b"out,anomaly",
        "x-dataset-exclude": b"metadata.elapsed",
        "x-dataset-separator": b"/",
        "x-param-scale": b"2",
        "x-param-tag": b"a",
    }
    assert wire.Options.of().headers() == ()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"dataset_separator": ""}, "dataset_separator"),
        ({"dataset": ["out,anomaly"]}, "without commas"),
        ({"parameters": {"": "x"}}, "parameter names"),
        ({"parameters": {"x": object()}}, "parameter 'x'"),
    ],
)
def test_bad_options_are_value_errors(arguments: dict[str, Any], message: str) -> None:
    """Malformed dataset, separator or parameters raise a ValueError that names the argument."""
    with pytest.raises(ValueError, match=message):
        wire.Options.of(**arguments)


def test_dataframe_with_numpy_cells_travels_as_arrow_stream() -> None:
    """A DataFrame of numpy arrays becomes an Arrow stream with a content-type, rows intact."""
    frame = _frame(4)
    request = wire.build_request(frame, wire.Options.of(), custom=False)
    assert (request.format, request.kind, request.rows) == (Format.ARROW_STREAM, wire.Kind.FRAME, 4)
    assert dict(request.headers)["content-type"] == b"application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(request.payload).read_all()
    assert table.equals(formats.table_from_pandas(frame))
    assert dict(request.headers_for("abc"))["x-request-id"] == b"abc"


def test_json_travels_as_pandas_records_or_custom() -> None:
    """dict/list go as pandas-records, or as custom JSON to a custom pipeline or when forced."""
    rows = [{"tensor": [0.5] * WIDTH}]
    records = wire.build_request(rows, wire.Options.of(), custom=False)
    assert (records.format, records.kind, orjson.loads(records.payload)) == (
        Format.PANDAS_RECORDS,
        wire.Kind.JSON,
        rows,
    )
    custom = wire.build_request({"count": [1, 2]}, wire.Options.of(), custom=True)
    assert custom.format is Format.CUSTOM
    forced = wire.build_request(rows, wire.Options.of(), custom=False, fmt=Format.CUSTOM)
    assert forced.format is Format.CUSTOM


@pytest.mark.parametrize(
    ("data", "custom", "error"),
    [
        ("text", False, TypeError),
        (_frame(2), True, TypeError),
        (_frame(0), False, ValueError),
        ([], False, ValueError),
    ],
)
def test_unsendable_data_is_refused_before_sending(data: Any, custom: bool, error: type) -> None:
    """Wrong types, frames for custom pipelines and empty requests fail before any Kafka call."""
    with pytest.raises(error):
        wire.build_request(data, wire.Options.of(), custom=custom)


def test_replies_decode_to_the_type_of_the_request() -> None:
    """An Arrow reply is a DataFrame (numpy cells) for a frame, a Table for a table."""
    frame = _frame(3)
    table = formats.table_from_pandas(frame)
    reply = wire.Reply(
        formats.encode(table, Format.ARROW_STREAM), "application/vnd.apache.arrow.stream"
    )
    as_frame = wire.decode_reply(
        reply, wire.build_request(frame, wire.Options.of(), custom=False), "r"
    )
    assert isinstance(as_frame, pd.DataFrame)
    assert np.array_equal(as_frame["tensor"][1], frame["tensor"][1])
    as_table = wire.decode_reply(
        reply, wire.build_request(table, wire.Options.of(), custom=False), "r"
    )
    assert as_table.equals(table)
    with pytest.raises(InferenceFailed, match="decode_error"):
        wire.decode_reply(
            wire.Reply(b"\xff\xff\xff\xffjunk", None),
            wire.build_request(table, wire.Options.of(), custom=False),
            "r",
        )


def test_parallel_items_must_be_frames_or_tables_of_one_type() -> None:
    """Mixing DataFrames and Tables (or passing JSON) is a ValueError that lists the types."""
    assert wire.uniform_kind([_frame(1), _frame(2)]) is wire.Kind.FRAME
    assert wire.uniform_kind([]) is None
    with pytest.raises(ValueError, match=r"pandas\.DataFrame, pyarrow\.Table"):
        wire.uniform_kind([_frame(1), formats.table_from_pandas(_frame(1))])
    with pytest.raises(ValueError, match="dict"):
        wire.uniform_kind([{"tensor": [1.0]}])


# ---------------------------------------------------------------- files


def test_request_files_by_suffix_and_format(tmp_path: Path) -> None:
    """.arrow (file or stream) gives a Table, .json JSON; custom-json forces custom JSON."""
    arrow_file, fmt = files.read_request_file(DATA / "ccfraud_1k.arrow")
    assert (arrow_file.num_rows, fmt) == (1000, None)
    stream_path = tmp_path / "rows.arrow"
    stream_path.write_bytes(formats.encode(arrow_file.slice(0, 5), Format.ARROW_STREAM))
    assert files.read_request_file(stream_path)[0].equals(arrow_file.slice(0, 5))
    rows, fmt = files.read_request_file(DATA / "smoke_test.df.json")
    assert (len(rows), fmt) == (1, None)
    assert files.read_request_file(DATA / "forecast.json", "custom-json")[1] is Format.CUSTOM
    assert (
        files.read_request_file(DATA / "smoke_test.df.json", "pandas-records")[1]
        is Format.PANDAS_RECORDS
    )


def test_unknown_request_files_name_the_file_and_the_kinds(tmp_path: Path) -> None:
    """A .csv is a ValueError naming it and the kinds accepted; a missing file FileNotFoundError."""
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"rows\.csv.*\.arrow.*\.json.*custom-json"):
        files.read_request_file(csv)
    with pytest.raises(ValueError, match="unknown data_format 'xml'"):
        files.read_request_file(csv, "xml")
    with pytest.raises(FileNotFoundError):
        files.read_request_file(tmp_path / "missing.arrow")
    broken = tmp_path / "broken.arrow"
    broken.write_bytes(b"not arrow")
    with pytest.raises(ValueError, match="not an Arrow IPC file or stream"):
        files.read_request_file(broken)


def test_results_are_written_as_arrow_or_json(tmp_path: Path, ccfraud: Pipeline) -> None:
    """write_result writes .arrow as an IPC file, .json as pandas-records; other suffixes fail."""
    table = ccfraud.infer(pa.ipc.open_file(DATA / "ccfraud_1k.arrow").read_all().slice(0, 3))
    files.write_result(table, tmp_path / "r.arrow")
    assert pa.ipc.open_file(tmp_path / "r.arrow").read_all().equals(table)
    files.write_result(table, tmp_path / "r.json")
    assert len(orjson.loads((tmp_path / "r.json").read_bytes())) == 3
    files.write_result({"forecast": [1.0]}, tmp_path / "c.json")
    assert orjson.loads((tmp_path / "c.json").read_bytes()) == {"forecast": [1.0]}
    with pytest.raises(ValueError, match=r"\.arrow .* or \.json"):
        files.write_result(table, tmp_path / "r.csv")
    assert "out.dense_1" in render_result(orjson.loads((tmp_path / "r.json").read_bytes()))


# ---------------------------------------------------------------- splitting and assembling


def test_split_rows_into_batch_size_requests() -> None:
    """Rows split into batch_size requests, the last one holding what is left."""
    assert split_rows(10, 3) == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert split_rows(4, 4) == [(0, 4)]
    assert split_rows(0, 5) == []
    with pytest.raises(ValueError, match="batch_size"):
        split_rows(10, 0)


def test_assemble_marks_failed_rows_with_an_error_column() -> None:
    """Failed requests' rows are nulls with their error; served rows keep results, in order."""
    served = pa.table({"out.y": [1.0, 2.0]})
    failure = InferenceFailed("schema_error", "bad", "r2")
    table = assemble([served, failure, served.slice(0, 1)], [(0, 2), (2, 3), (5, 1)])
    assert table.column("out.y").to_pylist() == [1.0, 2.0, None, None, None, 1.0]
    errors = table.column("error").to_pylist()
    assert errors[:2] == [None, None] and errors[5] is None
    assert all("schema_error" in text for text in errors[2:5])
    assert assemble([served], [(0, 2)]).column_names == ["out.y"]


# ---------------------------------------------------------------- Client over a fake transport


def test_infer_equals_pipeline_infer_for_each_input_type(ccfraud: Pipeline) -> None:
    """DataFrame, Table and JSON come back in their own type, equal to Pipeline.infer."""
    client, _ = _client(ccfraud)
    frame = _frame(5)
    table = formats.table_from_pandas(frame)
    got = client.infer(frame)
    assert isinstance(got, pd.DataFrame)
    want = formats.table_from_pandas(ccfraud.infer(frame))
    assert _without_time(formats.table_from_pandas(got)).equals(_without_time(want))
    assert _without_time(client.infer(table)).equals(_without_time(ccfraud.infer(table)))
    rows = orjson.loads((DATA / "smoke_test.df.json").read_bytes())
    assert [{**r, "time": 0} for r in client.infer(rows)] == [
        {**r, "time": 0} for r in ccfraud.infer(rows)
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"timeout": 0}, "timeout"), ({"timeout": -1}, "timeout"), ({"dataset": [1]}, "dataset")],
)
def test_infer_checks_its_arguments(
    ccfraud: Pipeline, arguments: dict[str, Any], message: str
) -> None:
    """A non-positive timeout or a malformed dataset is a ValueError before anything is sent."""
    client, transport = _client(ccfraud)
    with pytest.raises(ValueError, match=message):
        client.infer(_frame(1), **arguments)
    assert transport.sent == []


def test_infer_times_out_and_forgets_the_request(ccfraud: Pipeline) -> None:
    """No reply within timeout raises InferenceTimeout and stops waiting for that request id."""
    client, transport = _client(ccfraud, drop=1)
    started = time.monotonic()
    with pytest.raises(InferenceTimeout, match="fake: nothing came back") as raised:
        client.infer(_frame(1), timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2
    assert transport.forgotten == [raised.value.request_id] == transport.sent


def test_oversized_request_fails_without_sending(ccfraud: Pipeline) -> None:
    """A request over kafka.max_message_bytes raises InferenceFailed(too_large) at once."""
    client, transport = _client(ccfraud)
    with pytest.raises(InferenceFailed) as raised:
        client.infer(_frame(20_000), timeout=5)
    assert raised.value.error_type == "too_large"
    assert "max_message_bytes" in raised.value.message
    assert transport.sent == []


def test_parallel_infer_keeps_order_and_isolates_failures(ccfraud: Pipeline) -> None:
    """Results come back in input order; a bad item is its InferenceFailed, not retried."""
    client, transport = _client(ccfraud)
    items = [_frame(3, first_id=10 * i) for i in range(6)]
    items[2] = _frame(3, width=28)
    results = asyncio.run(client.parallel_infer(items, timeout=5, num_parallel=2, retries=3))
    assert isinstance(results[2], InferenceFailed) and results[2].error_type == "schema_error"
    for index in (0, 1, 3, 4, 5):
        assert results[index]["in.id"].tolist() == [10 * index + k for k in range(3)]
    assert len(transport.sent) == 6
    assert transport.max_inflight <= 2


def test_parallel_infer_retries_timeouts(ccfraud: Pipeline) -> None:
    """A timed-out item is sent again `retries` times; past that it is its InferenceTimeout."""
    client, transport = _client(ccfraud, drop=1)
    results = asyncio.run(client.parallel_infer([_frame(1)], timeout=0.2, retries=1))
    assert isinstance(results[0], pd.DataFrame) and len(transport.sent) == 2
    client, transport = _client(ccfraud, drop=3)
    results = asyncio.run(client.parallel_infer([_frame(1)], timeout=0.1, retries=2))
    assert isinstance(results[0], InferenceTimeout) and len(transport.sent) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_parallel": 0}, "num_parallel"),
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_parallel_infer_checks_its_arguments(
    ccfraud: Pipeline, arguments: dict[str, Any], message: str
) -> None:
    """num_parallel < 1, retries < 0 or timeout <= 0 is a ValueError."""
    client, _ = _client(ccfraud)
    with pytest.raises(ValueError, match=message):
        asyncio.run(client.parallel_infer([_frame(1)], **arguments))


def test_closed_client_refuses_requests(ccfraud: Pipeline) -> None:
    """After close() (also by `with`), infer raises instead of sending."""
    client, transport = _client(ccfraud)
    with client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        client.infer(_frame(1))
    assert transport.sent == []


def test_infer_sets_the_deadline_from_its_timeout(ccfraud: Pipeline, tmp_path: Path) -> None:
    """infer and infer_from_file send x-deadline = now + timeout, in epoch milliseconds."""
    client, transport = _client(ccfraud, wall_clock_ms=Ticking(1_000_000))
    client.infer(_frame(1), timeout=2.5)
    with pytest.raises(InferenceTimeout):  # a deadline is rounded up to the next millisecond
        client.infer_from_file(DATA / "smoke_test.df.json", timeout=0.0004)
    assert [sent["x-deadline"] for sent in transport.headers] == [b"1002500", b"1000001"]


def test_a_deadline_from_the_wall_clock_is_epoch_milliseconds(ccfraud: Pipeline) -> None:
    """By default the deadline is the machine's wall clock plus the timeout."""
    client, transport = _client(ccfraud)
    before = time.time_ns() // 1_000_000
    client.infer(_frame(1), timeout=3)
    after = time.time_ns() // 1_000_000
    assert before + 3000 <= int(transport.headers[0]["x-deadline"]) <= after + 3000


def test_a_retried_request_gets_a_fresh_deadline(ccfraud: Pipeline) -> None:
    """parallel_infer sets x-deadline on every item, and again on each retry of a timed-out one,
    from the time it is sent."""
    clock = Ticking(5_000, step=1_000)
    client, transport = _client(ccfraud, drop=1, wall_clock_ms=clock)
    results = asyncio.run(client.parallel_infer([_frame(1)], timeout=0.2, retries=1))
    assert isinstance(results[0], pd.DataFrame)
    assert [sent["x-deadline"] for sent in transport.headers] == [b"5200", b"6200"]


def test_a_request_that_brings_its_own_deadline_keeps_it(ccfraud: Pipeline) -> None:
    """A request whose headers already hold x-deadline is sent with that one, not a second."""
    client, transport = _client(ccfraud, wall_clock_ms=Ticking(1_000))
    built = wire.build_request(_frame(1), wire.Options(), custom=False)
    own = replace(built, headers=(*built.headers, ("X-Deadline", b"42")))
    client.send(own, timeout=5).future.result(5)
    client.send(built).future.result(5)  # no timeout: no deadline
    sent = transport.headers
    assert sent[0]["X-Deadline"] == b"42" and "x-deadline" not in sent[0]
    assert "x-deadline" not in sent[1]


# ---------------------------------------------------------------- BatchInferenceClient


def test_batch_run_sets_each_request_s_deadline(ccfraud: Pipeline) -> None:
    """Every request of run() carries x-deadline = the time it is sent + timeout (default 15 s)."""
    client, transport = _client(ccfraud, wall_clock_ms=Ticking(10_000, step=10))
    BatchInferenceClient(client).run(_frame(30), batch_size=10, executors=1, timeout=2)
    assert [sent["x-deadline"] for sent in transport.headers] == [b"12000", b"12010", b"12020"]
    client, transport = _client(ccfraud, wall_clock_ms=Ticking(10_000))
    BatchInferenceClient(client).run(_frame(5), batch_size=10)
    assert transport.headers[0]["x-deadline"] == b"25000"


def test_batch_run_splits_keeps_order_and_bounds_inflight(ccfraud: Pipeline) -> None:
    """run() serves every row in input order with at most `executors` requests in flight."""
    client, transport = _client(ccfraud)
    frame = _frame(230)
    result = BatchInferenceClient(client).run(frame, batch_size=20, executors=3)
    assert isinstance(result, pd.DataFrame)
    assert result["in.id"].tolist() == list(range(230))
    assert "error" not in result.columns
    assert len(transport.sent) == 12 and transport.max_inflight <= 3


def test_batch_run_marks_failed_rows_or_fails_fast(ccfraud: Pipeline) -> None:
    """Without fail_fast a bad batch's rows carry `error`; with it, the failure is raised."""
    client, _ = _client(ccfraud)
    table = formats.table_from_pandas(_frame(40))
    bad = formats.table_from_pandas(_frame(10, width=28, first_id=40))
    mixed = pa.concat_tables(
        [table.slice(0, 20), bad, table.slice(20)], promote_options="permissive"
    )
    result = BatchInferenceClient(client).run(mixed, batch_size=10, executors=2)
    assert isinstance(result, pa.Table) and result.num_rows == 50
    errors = result.column("error").to_pylist()
    assert [e is not None for e in errors] == [False] * 20 + [True] * 10 + [False] * 20
    assert result.column("out.dense_1").null_count == 10
    with pytest.raises(InferenceFailed, match="schema_error"):
        BatchInferenceClient(client).run(mixed, batch_size=10, executors=2, fail_fast=True)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"batch_size": 0}, ValueError),
        ({"executors": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"df": [{"tensor": [1.0]}]}, TypeError),
    ],
)
def test_batch_run_checks_its_arguments(
    ccfraud: Pipeline, arguments: dict[str, Any], error: type
) -> None:
    """Non-positive sizes and timeouts are ValueErrors; anything but a frame or table TypeError."""
    client, transport = _client(ccfraud)
    options: dict[str, Any] = {"df": _frame(3), **arguments}
    with pytest.raises(error):
        BatchInferenceClient(client).run(**options)
    assert transport.sent == []


def test_batch_refuses_custom_json_pipelines() -> None:
    """A custom JSON pipeline has no rows to split: run() is a TypeError pointing to infer."""
    client, _ = _client(Pipeline.from_config(FORECAST))
    with pytest.raises(TypeError, match="custom JSON"):
        BatchInferenceClient(client).run(_frame(3))


# ---------------------------------------------------------------- connect


def test_connect_to_an_unreachable_broker_names_the_address() -> None:
    """connect() to a port nobody listens on raises KafkaUnavailable naming host:port."""
    settings = load_settings(CCFRAUD)
    address = f"127.0.0.1:{free_port()}"
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": address})
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=address.replace(".", r"\.")):
        stream.connect(settings.model_copy(update={"kafka": kafka}), connect_timeout=1)
    assert time.monotonic() - started < 5
