"""A Wallaroo or Qwak notebook ports by changing the import: the snippets of the documents in
`shared/seeds/`, as they print them, with the deployment named, against real workers.

Each test quotes its document's lines in comments; where a snippet needs more than the import
and the deployment's name changed, the test says what and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pytest

import stream
from stream import BatchInferenceClient
from stream.errors import UnknownDeployment
from stream.kafka.admin import ensure_topics
from tests.integration.support import Topics
from tests.integration.workers import REPO, Fleet, write_config

pytestmark = pytest.mark.integration

# A churn model as Qwak's example has it: any two integer columns in, a probability out. Its
# `attribute` parameter arrives as context.parameters (Qwak: an environment variable).
CHURN_MODULE = """
import pyarrow as pa
import pyarrow.compute as pc


def predict(table, context):
    attribute = context.parameters.get("attribute", "default_customer")
    total = pc.add(table.column("0"), table.column("1")).cast(pa.float64())
    return pa.table({
        "Churn_Probability": pc.divide(total, 18.0),
        "attribute": pa.array([attribute] * table.num_rows, pa.string()),
    })
"""
FORECAST_STEPS = [
    {
        "python": {
            "name": "forecast",
            "function": "pipelines.examples.forecast:forecast",
            "accepts": "custom-json",
        }
    }
]
CHURN_STEPS = [{"python": {"name": "churn", "function": "porting_churn:predict"}}]


def _topics(bootstrap: str, name: str) -> Topics:
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(
        bootstrap,
        f"it-port-{name}-in-{suffix}",
        f"it-port-{name}-out-{suffix}",
        f"it-port-{name}-dlq-{suffix}",
        f"it-port-{name}-{suffix}",
        2,
    )
    ensure_topics(bootstrap, dict.fromkeys(topics.names, 2))
    return topics


@pytest.fixture(scope="module")
def configs(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A configs folder with three deployments (ccfraud, forecast, test-model), each served by
    a worker; HEADRACE_CONFIG_DIR points at it."""
    folder = tmp_path_factory.mktemp("configs")
    fleet = Fleet(folder)
    deployments = {
        "ccfraud": {},
        "forecast": {"steps": FORECAST_STEPS},
        "test-model": {"steps": CHURN_STEPS, "modules": {"porting_churn": CHURN_MODULE}},
    }
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HEADRACE_CONFIG_DIR", str(folder))
        try:
            for name, config in deployments.items():
                fleet.start(write_config(folder, _topics(bootstrap, name), name=name, **config))
            yield folder
        finally:
            fleet.close()


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository, where the documents' relative `./data/...` paths resolve."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def ccfraud_pipeline(configs: Path) -> Iterator[stream.Client]:
    """`ccfraud_pipeline = wl.get_pipeline("ccfraud")` becomes `stream.connect("ccfraud")`."""
    with stream.connect("ccfraud") as pipeline:
        pipeline.infer(pa.table({"tensor": [[0.5] * 29]}), timeout=60)  # warm-up
        yield pipeline


def _ccfraud_input_1k_arrow_table() -> pa.Table:
    return pyarrow.ipc.open_file(REPO / "data" / "ccfraud_1k.arrow").read_all()


# ---------------------------------------------------------------- Wallaroo


def test_infer_an_arrow_table_then_filter_it_in_pandas(ccfraud_pipeline: stream.Client) -> None:
    """`infer(arrow_table)` returns a Table of time, in.tensor, out.dense_1, check_failures, and
    the document's pandas filter on out.dense_1 runs on it unchanged."""
    ccfraud_input_1k_arrow_table = _ccfraud_input_1k_arrow_table()
    # result = ccfraud_pipeline.infer(ccfraud_input_1k_arrow_table)
    result = ccfraud_pipeline.infer(ccfraud_input_1k_arrow_table)
    # display(result) needs IPython; the Table it shows:
    assert isinstance(result, pa.Table) and result.num_rows == 1000
    assert result.column_names[:4] == ["time", "in.tensor", "out.dense_1", "check_failures"]
    # outputs = result.to_pandas()
    # filter = [elt[0] > 0.75 for elt in outputs['out.dense_1']]
    # outputs = outputs.loc[filter]
    outputs = result.to_pandas()
    filter = [elt[0] > 0.75 for elt in outputs["out.dense_1"]]  # the document's name
    outputs = outputs.loc[filter]
    assert 0 < len(outputs) < 1000
    assert all(value[0] > 0.75 for value in outputs["out.dense_1"])


@pytest.mark.parametrize(
    "dataset",
    [["*", "metadata.elapsed"], ["*", "meta"], ["*", "metadata"]],
)
def test_infer_with_metadata_datasets(ccfraud_pipeline: stream.Client, dataset: list[str]) -> None:
    """`infer(normal_input, dataset=["*", "metadata.elapsed"])`, and `meta` as the documents
    name the metadata group, add the metadata columns to the default ones."""
    normal_input = pd.DataFrame({"tensor": [[0.1] * 29]})
    # result = mainpipeline.infer(normal_input, dataset=["*", "metadata.elapsed"])
    result = ccfraud_pipeline.infer(normal_input, dataset=dataset)
    assert "metadata.elapsed" in result.columns and "out.dense_1" in result.columns
    elapsed = result.loc[0]["metadata.elapsed"]
    assert len(elapsed) == 3 and all(ns >= 0 for ns in elapsed)  # deserialize, model, check


def test_infer_takes_every_documented_argument_by_position(
    ccfraud_pipeline: stream.Client,
) -> None:
    """`infer(data, timeout, dataset, dataset_exclude, dataset_separator)` by position."""
    data = pa.table({"tensor": [[0.2] * 29]})
    result = ccfraud_pipeline.infer(data, 15, ["*", "meta"], ["metadata.elapsed"], "_")
    assert "out_dense_1" in result.column_names and "metadata_last_model" in result.column_names
    assert "metadata_elapsed" not in result.column_names


def test_a_numpy_array_inside_a_dataframe(ccfraud_pipeline: stream.Client) -> None:
    """`pd.DataFrame({"tensor": [npArray]})` is accepted and its result row read with `.loc`."""
    npArray = np.linspace(-1, 1, 29, dtype=np.float32)  # noqa: N806  # the document's name
    # dataframedata = pd.DataFrame({"tensor":[npArray]})
    dataframedata = pd.DataFrame({"tensor": [npArray]})
    # infResults = pipeline.infer(dataframedata, dataset=["*", "metadata.elapsed"])
    infResults = ccfraud_pipeline.infer(dataframedata, dataset=["*", "metadata.elapsed"])  # noqa: N806
    # display(infResults.loc[0]["out.2519"]) -- that model's output; ccfraud's is dense_1
    value = infResults.loc[0]["out.dense_1"]
    assert len(value) == 1 and 0.0 <= value[0] <= 1.0


@pytest.mark.usefixtures("in_repo")
def test_infer_from_file_of_arrow_and_of_dataframe_json(ccfraud_pipeline: stream.Client) -> None:
    """`infer_from_file('./data/...arrow')` returns a Table; a `.df.json` file returns rows."""
    # results = imdb_pipeline.infer_from_file('./data/test_data_50K.arrow') -- our 1k file
    results = ccfraud_pipeline.infer_from_file("./data/ccfraud_1k.arrow")
    assert isinstance(results, pa.Table) and results.num_rows == 1000
    # result = ccfraud_pipeline.infer_from_file('./data/smoke_test.df.json')
    result = ccfraud_pipeline.infer_from_file("./data/smoke_test.df.json")
    assert isinstance(result, list) and len(result) == 1
    assert set(result[0]) >= {"time", "in.tensor", "out.dense_1", "check_failures"}


@pytest.mark.usefixtures("in_repo")
def test_infer_from_file_of_custom_json(configs: Path) -> None:
    """`infer_from_file(file, data_format="custom-json")` returns the model's JSON."""
    with stream.connect("forecast") as pipeline:
        # results = pipeline.infer_from_file('bike_day_eval.json', data_format="custom-json")
        results = pipeline.infer_from_file("data/forecast.json", data_format="custom-json")
    # Wallaroo shows [{'forecast': [...]}]; headrace returns the step's value, {'forecast': ...}
    assert isinstance(results, dict) and len(results["forecast"]) == 7


def test_infer_from_file_takes_every_documented_argument_by_position(
    ccfraud_pipeline: stream.Client,
) -> None:
    """`infer_from_file(data, timeout, dataset, dataset_exclude, dataset_separator,
    data_format)` by position."""
    path = str(REPO / "data" / "ccfraud_1k.arrow")
    result = ccfraud_pipeline.infer_from_file(path, 15, ["out"], None, ".", "arrow")
    assert result.column_names == ["out.dense_1"]


def test_parallel_infer_of_200_frames(ccfraud_pipeline: stream.Client) -> None:
    """`await pipeline.parallel_infer(dataset, timeout=10, num_parallel=8, retries=1)` returns
    one result per frame in input order, a malformed frame's error at its index."""
    test_data = _ccfraud_input_1k_arrow_table().to_pandas()
    dataset = []
    for _index, row in test_data.head(200).iterrows():
        # dataset.append(row.to_frame('text_input').reset_index()) -- that model reads one
        # `text_input` column per row; ccfraud reads the row itself, as a one-row frame
        dataset.append(row.to_frame().T.reset_index(drop=True))
    dataset[100] = pd.DataFrame({"tensor": [[0.0] * 28]})  # malformed: 28 floats, not 29
    # parallel_results = await pipeline.parallel_infer(dataset, timeout=10, num_parallel=8,
    #                                                  retries=1)
    parallel_results = asyncio.run(
        ccfraud_pipeline.parallel_infer(dataset, timeout=10, num_parallel=8, retries=1)
    )
    assert len(parallel_results) == 200
    assert isinstance(parallel_results[100], stream.InferenceFailed)
    assert parallel_results[100].error_type == "schema_error"
    served = [r for i, r in enumerate(parallel_results) if i != 100]
    assert all(isinstance(r, pd.DataFrame) and len(r) == 1 for r in served)
    expected = test_data["tensor"].head(3).tolist()
    got = [parallel_results[i].loc[0, "in.tensor"].tolist() for i in range(3)]
    assert np.allclose(got, np.asarray(expected, dtype=np.float32).tolist())


def test_parallel_infer_by_its_documented_keywords(ccfraud_pipeline: stream.Client) -> None:
    """`parallel_infer(tensor_list=..., timeout=..., num_parallel=..., retries=...)` works."""
    tables = [pa.table({"tensor": [[0.1 * i] * 29]}) for i in range(5)]
    results = asyncio.run(
        ccfraud_pipeline.parallel_infer(tensor_list=tables, timeout=10, num_parallel=2, retries=0)
    )
    assert [r.num_rows for r in results] == [1] * 5


def test_dataset_exclude_drops_named_outputs(ccfraud_pipeline: stream.Client) -> None:
    """`dataset_exclude=[...]` removes the named columns (the document's out.rambo and
    out.glibnar are another model's; ccfraud's anomaly.fraud stands in)."""
    result = ccfraud_pipeline.infer(
        pa.table({"tensor": [[0.3] * 29]}), dataset_exclude=["anomaly.fraud"]
    )
    assert "anomaly.fraud" not in result.column_names and "out.dense_1" in result.column_names


# ---------------------------------------------------------------- Qwak


def test_batch_client_by_model_id_with_resource_arguments(configs: Path) -> None:
    """The documents' example: `BatchInferenceClient(model_id=...)`, a 1,000-row frame of two
    integer columns, batch_size=50 and executors=5, with `cpus` and `memory` ignored under
    one warning and `parameters` reaching the model, rows in input order."""
    # batch_df = pd.DataFrame(np.random.randint(0,10, size=(1000,2)))
    batch_df = pd.DataFrame(np.random.randint(0, 10, size=(1000, 2)))
    # batch_inference_client = BatchInferenceClient(model_id="test_model") -- a deployment
    # name is DNS-safe (it names topics and Kubernetes objects): test-model
    batch_inference_client = BatchInferenceClient(model_id="test-model")
    with pytest.warns(UserWarning, match=r"ignores cpus, memory: .* config") as caught:
        result_df = batch_inference_client.run(
            df=batch_df,
            batch_size=50,
            executors=5,
            cpus=1,
            memory=512,
            parameters={"attribute": "customer_a"},
        )
    assert len(caught) == 1
    assert len(result_df) == 1000
    assert result_df["in.0"].tolist() == batch_df[0].tolist()  # Qwak: any order; here, input's
    expected = (batch_df[0] + batch_df[1]) / 18.0
    assert np.allclose(result_df["out.Churn_Probability"], expected)
    assert set(result_df["out.attribute"]) == {"customer_a"}


def test_batch_client_run_with_every_documented_argument(configs: Path) -> None:
    """`run(df, batch_size, executors, cpus, gpu_type, gpus, memory, iam_role_arn,
    parameters)` is accepted by keyword and by position; one warning names all five
    resource arguments."""
    df = pd.DataFrame(np.random.randint(0, 10, size=(120, 2)))
    client = BatchInferenceClient(model_id="test-model")
    resources = (2, "nvidia-t4", 1, 1024, "arn:aws:iam::123456789012:role/batch")
    with pytest.warns(UserWarning, match="cpus, gpu_type, gpus, memory, iam_role_arn"):
        by_position = client.run(df, 40, 3, *resources, {"attribute": "b"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        by_keyword = client.run(
            df,
            batch_size=40,
            executors=3,
            cpus=2,
            gpu_type="nvidia-t4",
            gpus=1,
            memory=1024,
            iam_role_arn="arn:aws:iam::123456789012:role/batch",
            parameters={"attribute": "b"},
        )
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    assert by_position.drop(columns="time").equals(by_keyword.drop(columns="time"))
    client.close()


def test_the_model_id_can_come_from_the_environment(
    configs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`HEADRACE_MODEL_ID` stands in for `model_id`, as Qwak's `QWAK_MODEL_ID` does."""
    monkeypatch.setenv("HEADRACE_MODEL_ID", "test-model")
    df = pd.DataFrame(np.random.randint(0, 10, size=(10, 2)))
    with contextlib.closing(BatchInferenceClient()) as client:
        result_df = client.run(df, batch_size=5)
    assert len(result_df) == 10 and "out.Churn_Probability" in result_df.columns


def test_an_unknown_deployment_name_lists_what_exists(configs: Path) -> None:
    """A name no config has raises UnknownDeployment naming the folder and the names found."""
    with pytest.raises(UnknownDeployment) as raised:
        BatchInferenceClient(model_id="no-such-model")
    message = str(raised.value)
    assert str(configs) in message
    assert "ccfraud, forecast, test-model" in message
