"""Build the example ONNX models and sample request files, deterministically.

Nothing is downloaded: the fraud data is synthetic (``make_classification``), the digits are the
8x8 images bundled with scikit-learn, the heavy model's weights come from a seeded generator.
Graphs are written with ``onnx.helper`` (fixed producer, no timestamps, float32 raw initializers)
and Arrow files with a fixed schema and no metadata, so two runs write the same bytes.

    python scripts/build_models.py                      # everything, into models/ and data/
    python scripts/build_models.py --only ccfraud       # one group
    python scripts/build_models.py --out-dir /tmp/x     # into /tmp/x/models and /tmp/x/data

Groups and what they write:

    ccfraud   models/ccfraud.onnx, data/ccfraud_1k.arrow, data/smoke_test.df.json,
              data/high_fraud.df.json
    digits    models/digits.onnx, data/digits_100.arrow
    heavy     models/heavy.onnx (about 8.5 MB, git-ignored)
    forecast  data/forecast.json

Each file written is printed as ``<sha256>  <path>``; model quality goes to stderr. After a
model changes, update the ``sha256`` pin in its ``configs/*.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits, make_classification
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parent.parent
SEED = 20240611
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; onnxruntime >= 1.14 reads it
PRODUCER = ("headrace-build-models", "1")
CCFRAUD_FEATURES = 29
HIGH_FRAUD_MIN_SCORE = 0.95
HEAVY_WIDTH = 1024
GROUPS = ("ccfraud", "digits", "heavy", "forecast")

Floats = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Split:
    """Features and labels, split into a training and a held-out part."""

    x_train: NDArray[np.float64]
    x_test: NDArray[np.float64]
    y_train: NDArray[np.int64]
    y_test: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file to write: its path relative to the output root, and its bytes."""

    relpath: str
    content: bytes


# ---------------------------------------------------------------- data and training


def ccfraud_split() -> Split:
    """Synthetic card transactions: 20,000 rows, 29 features, about 2% fraud."""
    x, y = make_classification(
        n_samples=20_000,
        n_features=CCFRAUD_FEATURES,
        n_informative=12,
        n_redundant=4,
        n_clusters_per_class=2,
        weights=[0.98],
        flip_y=0.002,
        class_sep=1.2,
        random_state=SEED,
    )
    parts = train_test_split(x, y, test_size=0.25, stratify=y, random_state=SEED)
    return Split(*parts)


def train_ccfraud(split: Split) -> tuple[StandardScaler, MLPClassifier]:
    """A standardizer and a small relu MLP, trained single-threaded so the bits repeat."""
    with threadpool_limits(limits=1):
        scaler = StandardScaler().fit(split.x_train)
        mlp = MLPClassifier(
            hidden_layer_sizes=(32, 16),
            activation="relu",
            alpha=1e-3,
            max_iter=300,
            early_stopping=True,
            n_iter_no_change=20,
            random_state=SEED,
        )
        mlp.fit(scaler.transform(split.x_train), split.y_train)
    return scaler, mlp


def digits_split() -> Split:
    """scikit-learn's bundled 8x8 handwritten digits (raw pixels 0..16), 25% held out."""
    bunch = load_digits()
    images = bunch.images.astype(np.float64)
    parts = train_test_split(
        images,
        bunch.target.astype(np.int64),
        test_size=0.25,
        stratify=bunch.target,
        random_state=SEED,
    )
    return Split(*parts)


def train_digits(split: Split) -> MLPClassifier:
    """A one-hidden-layer MLP on pixels scaled to 0..1, as the pipeline's preprocess step does."""
    with threadpool_limits(limits=1):
        mlp = MLPClassifier(
            hidden_layer_sizes=(64,),
            activation="relu",
            alpha=1e-3,
            max_iter=500,
            random_state=SEED,
        )
        mlp.fit(digits_features(split.x_train), split.y_train)
    return mlp


def digits_features(images: NDArray[np.float64]) -> NDArray[np.float64]:
    """Flatten raw 0..16 images to rows of 64 values in 0..1."""
    return images.reshape(len(images), -1) / 16.0


# ---------------------------------------------------------------- ONNX graphs


def _f32(array: NDArray[np.floating], name: str) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _dense_chain(
    source: str, layers: Sequence[tuple[NDArray[np.floating], NDArray[np.floating]]]
) -> tuple[list[onnx.NodeProto], list[TensorProto], str]:
    """Gemm (+ Relu between) per (weights [in, out], bias [out]); returns nodes, weights, logits."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    current = source
    for index, (weights, bias) in enumerate(layers):
        last = index == len(layers) - 1
        w_name, b_name = f"dense{index}.weight", f"dense{index}.bias"
        inits += [_f32(weights, w_name), _f32(bias, b_name)]
        gemm_out = "logits" if last else f"dense{index}.linear"
        nodes.append(
            helper.make_node("Gemm", [current, w_name, b_name], [gemm_out], f"dense{index}")
        )
        if not last:
            current = f"dense{index}.relu"
            nodes.append(helper.make_node("Relu", [gemm_out], [current], f"relu{index}"))
    return nodes, inits, "logits"


def _model(
    name: str,
    doc: str,
    *,
    nodes: list[onnx.NodeProto],
    inits: list[TensorProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits, doc_string=doc)
    model = helper.make_model(
        graph,
        producer_name=PRODUCER[0],
        producer_version=PRODUCER[1],
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        doc_string=doc,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _fraud_interface() -> dict[str, list[onnx.ValueInfoProto]]:
    """The ccfraud interface: ``tensor`` float32 [batch, 29] -> ``dense_1`` float32 [batch, 1]."""
    return {
        "inputs": [
            helper.make_tensor_value_info("tensor", TensorProto.FLOAT, ["batch", CCFRAUD_FEATURES])
        ],
        "outputs": [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, ["batch", 1])],
    }


def ccfraud_model(scaler: StandardScaler, mlp: MLPClassifier) -> onnx.ModelProto:
    """tensor float32 [batch, 29] -> dense_1 float32 [batch, 1], the scaler folded into layer 0."""
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    layers = [
        (np.asarray(w, np.float64), np.asarray(b, np.float64))
        for w, b in zip(mlp.coefs_, mlp.intercepts_, strict=True)
    ]
    w0, b0 = layers[0]
    # (x - mean) / scale @ W + b  ==  x @ (W / scale[:, None]) + (b - (mean / scale) @ W)
    layers[0] = (w0 / scale[:, None], b0 - (mean / scale) @ w0)
    nodes, inits, logits = _dense_chain("tensor", layers)
    nodes.append(helper.make_node("Sigmoid", [logits], ["dense_1"], "sigmoid"))
    return _model(
        "ccfraud",
        "Fraud probability of a card transaction (29 features), a relu MLP trained on "
        "synthetic imbalanced data by scripts/build_models.py.",
        nodes=nodes,
        inits=inits,
        **_fraud_interface(),
    )


def digits_model(mlp: MLPClassifier) -> onnx.ModelProto:
    """image float32 [batch, 8, 8] in 0..1 -> probabilities [batch, 10], label int64 [batch]."""
    layers = list(zip(mlp.coefs_, mlp.intercepts_, strict=True))
    nodes = [helper.make_node("Flatten", ["image"], ["pixels"], "flatten", axis=1)]
    dense, inits, logits = _dense_chain("pixels", layers)
    nodes += dense
    nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], "softmax", axis=-1))
    nodes.append(
        helper.make_node("ArgMax", ["probabilities"], ["label"], "argmax", axis=1, keepdims=0)
    )
    return _model(
        "digits",
        "Handwritten digit classifier for 8x8 images scaled to 0..1 (scikit-learn's digits).",
        nodes=nodes,
        inits=inits,
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 8, 8])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
    )


def heavy_model() -> onnx.ModelProto:
    """A compute-bound 29 -> 1024 -> 1024 -> 1024 -> 1 MLP with seeded random weights."""
    rng = np.random.default_rng(SEED)
    widths = [CCFRAUD_FEATURES, HEAVY_WIDTH, HEAVY_WIDTH, HEAVY_WIDTH, 1]
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        # He initialisation keeps the activations' scale through the relu layers; the last
        # layer is damped so that the sigmoid spreads over (0, 1) instead of saturating.
        gain = 0.25 if fan_out == 1 else 2.0
        weights = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        weights *= np.float32(np.sqrt(gain / fan_in))
        bias = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)
        layers.append((weights, bias))
    nodes, inits, logits = _dense_chain("tensor", layers)
    nodes.append(helper.make_node("Sigmoid", [logits], ["dense_1"], "sigmoid"))
    return _model(
        "heavy",
        "Compute-bound MLP with random weights and the ccfraud interface, for benchmarks.",
        nodes=nodes,
        inits=inits,
        **_fraud_interface(),
    )


def run_onnx(
    model: onnx.ModelProto, feeds: dict[str, NDArray[np.generic]]
) -> list[NDArray[np.generic]]:
    """Run a model once with onnxruntime on one CPU thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return list(session.run(None, feeds))


# ---------------------------------------------------------------- file encodings


def _list_array(rows: NDArray[np.floating]) -> pa.Array:
    """An [N, a, b, ...] float array as N nested list<...<float32>> values (no fixed sizes)."""
    flat = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1)
    array: pa.Array = pa.array(flat, type=pa.float32())
    for width in reversed(rows.shape[1:]):
        offsets = np.arange(0, len(array) + 1, width, dtype=np.int32)
        array = pa.ListArray.from_arrays(pa.array(offsets), array)
    return array


def arrow_file(columns: dict[str, pa.Array]) -> bytes:
    """An Arrow IPC file with one record batch and no schema metadata."""
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _short_floats(row: NDArray[np.floating]) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32."""
    return [float(str(value)) for value in np.asarray(row, dtype=np.float32)]


def json_bytes(value: object) -> bytes:
    return (json.dumps(value, separators=(", ", ": ")) + "\n").encode()


# ---------------------------------------------------------------- groups


def build_ccfraud(report: Callable[[str], None]) -> list[Artifact]:
    split = ccfraud_split()
    scaler, mlp = train_ccfraud(split)
    model = ccfraud_model(scaler, mlp)
    x_test = split.x_test.astype(np.float32)
    (scores,) = run_onnx(model, {"tensor": x_test})
    scores = scores[:, 0]
    report(
        f"ccfraud: held-out rows {len(x_test)}, fraud {int(split.y_test.sum())}, "
        f"AUC {roc_auc_score(split.y_test, scores):.4f}, "
        f"recall@0.5 {recall_score(split.y_test, scores > 0.5):.3f}, "
        f"precision@0.5 {precision_score(split.y_test, scores > 0.5):.3f}, "
        f"recall@0.9 {recall_score(split.y_test, scores > 0.9):.3f}"
    )
    legit = int(np.flatnonzero((split.y_test == 0) & (scores < 0.01))[0])
    fraud = int(np.flatnonzero((split.y_test == 1) & (scores > HIGH_FRAUD_MIN_SCORE))[0])
    report(
        f"ccfraud: smoke_test row {legit} scores {scores[legit]:.5f}, "
        f"high_fraud row {fraud} scores {scores[fraud]:.5f}"
    )
    return [
        Artifact("models/ccfraud.onnx", model.SerializeToString()),
        Artifact("data/ccfraud_1k.arrow", arrow_file({"tensor": _list_array(x_test[:1000])})),
        Artifact("data/smoke_test.df.json", json_bytes([{"tensor": _short_floats(x_test[legit])}])),
        Artifact("data/high_fraud.df.json", json_bytes([{"tensor": _short_floats(x_test[fraud])}])),
    ]


def build_digits(report: Callable[[str], None]) -> list[Artifact]:
    split = digits_split()
    mlp = train_digits(split)
    model = digits_model(mlp)
    images = (split.x_test / 16.0).astype(np.float32)
    _, labels = run_onnx(model, {"image": images})
    report(
        f"digits: train rows {len(split.x_train)}, held-out rows {len(split.x_test)}, "
        f"accuracy {accuracy_score(split.y_test, labels):.4f}"
    )
    sample = {
        "image": _list_array(split.x_test[:100]),
        "expected": pa.array(split.y_test[:100], type=pa.int64()),
    }
    return [
        Artifact("models/digits.onnx", model.SerializeToString()),
        Artifact("data/digits_100.arrow", arrow_file(sample)),
    ]


def build_heavy(report: Callable[[str], None]) -> list[Artifact]:
    model = heavy_model()
    probe = ccfraud_split().x_test[:1000].astype(np.float32)
    (scores,) = run_onnx(model, {"tensor": probe})
    report(
        f"heavy: {sum(np.prod(t.dims) for t in model.graph.initializer):,} weights, "
        f"outputs on ccfraud rows: min {scores.min():.3f} median {np.median(scores):.3f} "
        f"max {scores.max():.3f}"
    )
    return [Artifact("models/heavy.onnx", model.SerializeToString())]


def forecast_counts(days: int = 28) -> list[int]:
    """Four weeks of synthetic daily bike rentals: a rising trend, busy weekends, some noise."""
    rng = np.random.default_rng(SEED)
    weekly = np.array([0.85, 0.9, 0.9, 0.95, 1.05, 1.3, 1.25])  # Monday .. Sunday
    day = np.arange(days)
    level = 220.0 + 1.8 * day
    noise = rng.normal(0.0, 9.0, size=days)
    return [int(v) for v in np.rint(level * weekly[day % 7] + noise)]


def build_forecast(report: Callable[[str], None]) -> list[Artifact]:
    counts = forecast_counts()
    report(f"forecast: {len(counts)} daily counts, {min(counts)}..{max(counts)}")
    return [Artifact("data/forecast.json", json_bytes({"count": counts}))]


BUILDERS: dict[str, Callable[[Callable[[str], None]], list[Artifact]]] = {
    "ccfraud": build_ccfraud,
    "digits": build_digits,
    "heavy": build_heavy,
    "forecast": build_forecast,
}


def write(root: Path, artifact: Artifact) -> str:
    """Write one artifact under ``root``; returns its sha256."""
    path = root / artifact.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(artifact.content)
    return hashlib.sha256(artifact.content).hexdigest()


def _report(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=GROUPS,
        metavar="NAME",
        help=f"build only these groups ({', '.join(GROUPS)}); default: all",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO,
        help="root to write models/ and data/ under (default: the repository)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    for group in args.only or GROUPS:
        for artifact in BUILDERS[group](_report):
            digest = write(args.out_dir, artifact)
            print(f"{digest}  {args.out_dir / artifact.relpath}", flush=True)
    _report(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
