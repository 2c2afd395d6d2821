"""Deployment configs: loading, env overrides, defaults, paths, and the errors a user sees."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
import yaml

from pipelines.config import KafkaSettings, load_settings
from pipelines.errors import ConfigError
from pipelines.pipeline import Pipeline

if TYPE_CHECKING:
    from conftest import Workspace

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _config_error(ws: Workspace, steps: list[dict[str, Any]], **sections: Any) -> str:
    """The message of the ConfigError that loading ``steps`` raises."""
    path = ws.config(steps, **sections)
    with pytest.raises(ConfigError) as caught:
        Pipeline.from_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message


def _write(ws: Workspace, document: Any) -> Path:
    path = ws.deploy / "raw.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_example_configs_load(path: Path) -> None:
    """Every shipped config loads, opens its models and names the pipeline after its file."""
    pipeline = Pipeline.from_config(path)
    assert pipeline.name == path.stem
    assert pipeline.settings.source == path.resolve()
    assert pipeline.step_names


def test_environment_overrides_a_key_and_keeps_its_siblings(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HEADRACE_<SECTION>__<KEY>`` wins over the file; the section's other keys stay."""
    monkeypatch.setenv("HEADRACE_KAFKA__BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("HEADRACE_BATCHING__MAX_ROWS", "50")
    monkeypatch.setenv("HEADRACE_REPLICAS", "3")
    path = ws.config(
        [ws.model_step("scale", ws.scale_model())],
        kafka={"bootstrap_servers": "file:9092", "input_topic": "from-file"},
        batching={"max_rows": 1000, "max_wait_ms": 7},
    )
    settings = load_settings(path)
    assert settings.kafka.bootstrap_servers == "broker:9092"
    assert settings.kafka.input_topic == "from-file"
    assert settings.batching.max_rows == 50
    assert settings.batching.max_wait_ms == 7
    assert settings.replicas == 3


def test_environment_override_of_the_wrong_type_names_the_key(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An override that does not parse is a ConfigError naming the dotted key and the value."""
    monkeypatch.setenv("HEADRACE_BATCHING__MAX_ROWS", "lots")
    path = ws.config([ws.model_step("scale", ws.scale_model())])
    with pytest.raises(ConfigError, match=r"key 'batching\.max_rows'.*'lots'"):
        load_settings(path)


def test_topics_and_group_default_to_the_pipeline_name(ws: Workspace) -> None:
    """Without a kafka section, topics are ``<name>-requests/-results/-dlq``, the group the name."""
    settings = load_settings(ws.config([ws.model_step("m", ws.scale_model())], name="fraud-2"))
    kafka = settings.kafka
    assert (kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic, kafka.group_id) == (
        "fraud-2-requests",
        "fraud-2-results",
        "fraud-2-dlq",
        "fraud-2",
    )
    assert kafka.bootstrap_servers == "embedded"


def test_a_topic_given_in_the_file_is_kept(ws: Workspace) -> None:
    """Only the topics left out take the default; a given one is used as written."""
    path = ws.config([ws.model_step("m", ws.scale_model())], kafka={"output_topic": "answers"})
    kafka = load_settings(path).kafka
    assert kafka.output_topic == "answers"
    assert kafka.input_topic == "unit-requests"


def test_max_request_age_is_off_unless_set(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """``processing.max_request_age_ms`` defaults to None (no age limit) and reads from the file
    or from ``HEADRACE_PROCESSING__MAX_REQUEST_AGE_MS``."""
    step = [ws.model_step("m", ws.scale_model())]
    assert load_settings(ws.config(step)).processing.max_request_age_ms is None
    path = ws.config(step, processing={"max_request_age_ms": 60_000})
    assert load_settings(path).processing.max_request_age_ms == 60_000
    monkeypatch.setenv("HEADRACE_PROCESSING__MAX_REQUEST_AGE_MS", "2500")
    assert load_settings(path).processing.max_request_age_ms == 2500


@pytest.mark.parametrize("age", [0, -1])
def test_max_request_age_must_be_positive(ws: Workspace, age: int) -> None:
    """A zero or negative request age is refused, naming the dotted key and the value."""
    message = _config_error(
        ws, [ws.model_step("m", ws.scale_model())], processing={"max_request_age_ms": age}
    )
    assert "key 'processing.max_request_age_ms'" in message
    assert f"(got {age})" in message


def test_relative_paths_resolve_against_the_config_folder(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model path and a python module next to the config are found from any working folder."""
    module = ws.module(
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        def negate(table, context):
            x = table.column("x").combine_chunks()
            return table.set_column(
                0, "x", pa.ListArray.from_arrays(x.offsets, pc.negate(x.flatten()))
            )
        """
    )
    path = ws.config(
        [ws.python_step(module, "negate"), ws.model_step("scale", ws.scale_model(factor=3.0))]
    )
    elsewhere = ws.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("..") / "deploy" / path.name)
    model = settings.pipeline.steps[1].model
    assert model is not None
    assert model.path == ws.models / "scale.onnx"
    pipeline = Pipeline(settings)
    result = pipeline.infer(pa.table({"x": pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32()))}))
    assert result.column("out.y").to_pylist() == [[-3.0, -6.0, -9.0]]


# --- errors --------------------------------------------------------------------------------


def test_unknown_top_level_key_is_named(ws: Workspace) -> None:
    """A top-level key the schema does not know is refused by name."""
    message = _config_error(ws, [ws.model_step("m", ws.scale_model())], colour="blue")
    assert "unknown key 'colour'" in message


def test_unknown_key_inside_a_step_is_named_by_its_dotted_path(ws: Workspace) -> None:
    """An unknown key deep in a step is named with its full dotted path."""
    step = ws.model_step("m", ws.scale_model())
    step["model"]["colour"] = "blue"
    message = _config_error(ws, [{"check": {"name": "c", "expr": "1 > 0"}}, step])
    assert "unknown key 'pipeline.steps[1].model.colour'" in message


def test_unknown_step_setting_is_named(ws: Workspace) -> None:
    """A misspelt step setting (``timeout`` for ``timeout_ms``) is refused by name."""
    message = _config_error(ws, [ws.model_step("m", ws.scale_model(), timeout=5)])
    assert "unknown key 'pipeline.steps[0].timeout'" in message


def test_wrong_type_names_the_key_and_the_value(ws: Workspace) -> None:
    """A value of the wrong type names its key and what was given."""
    message = _config_error(
        ws, [ws.model_step("m", ws.scale_model())], batching={"max_rows": "lots"}
    )
    assert "key 'batching.max_rows'" in message
    assert "'lots'" in message


def test_missing_required_key_is_named(ws: Workspace) -> None:
    """A model step without ``path`` names the missing dotted key."""
    message = _config_error(ws, [{"model": {"name": "m"}}])
    assert "missing key 'pipeline.steps[0].model.path'" in message


def test_missing_pipeline_name_is_named(ws: Workspace) -> None:
    """A pipeline without a name names ``pipeline.name`` as missing."""
    path = _write(ws, {"pipeline": {"steps": [{"check": {"name": "c", "expr": "1 > 0"}}]}})
    with pytest.raises(ConfigError, match=r"missing key 'pipeline\.name'"):
        load_settings(path)


@pytest.mark.parametrize("name", ["CC_Fraud", "fraud.v2", "-fraud", "a" * 64])
def test_pipeline_name_must_be_dns_safe(ws: Workspace, name: str) -> None:
    """A pipeline name that is not DNS-safe is refused, naming the key and the name."""
    message = _config_error(ws, [ws.model_step("m", ws.scale_model())], name=name)
    assert "key 'pipeline.name'" in message
    assert repr(name) in message


def test_step_with_two_kinds_is_refused(ws: Workspace) -> None:
    """A step with both ``model`` and ``check`` names the step and the kinds it found."""
    step = ws.model_step("m", ws.scale_model())
    step["check"] = {"name": "c", "expr": "1 > 0"}
    message = _config_error(ws, [step])
    assert "key 'pipeline.steps[0]'" in message
    assert "exactly one of" in message
    assert "['model', 'check']" in message


def test_step_with_no_kind_is_refused(ws: Workspace) -> None:
    """A step with only retry settings says that it has no kind."""
    message = _config_error(ws, [{"retries": 1}])
    assert "key 'pipeline.steps[0]'" in message
    assert "got none" in message


def test_missing_model_file_is_named(ws: Workspace) -> None:
    """A model path that does not exist names the key and the resolved file."""
    message = _config_error(ws, [ws.model_step("m", "../models/absent.onnx")])
    assert "key 'pipeline.steps[0].model.path'" in message
    assert str(ws.models / "absent.onnx") in message


def test_a_file_that_is_not_a_model_is_named(ws: Workspace) -> None:
    """A model path to a file that is not ONNX names the key and the file."""
    (ws.models / "notes.onnx").write_text("not a model", encoding="utf-8")
    message = _config_error(ws, [ws.model_step("m", ws.model_path("notes.onnx"))])
    assert "key 'pipeline.steps[0].model.path'" in message
    assert "cannot load ONNX model" in message


def test_sha256_mismatch_shows_both_hashes(ws: Workspace) -> None:
    """A pinned sha256 that differs from the file refuses to start and shows both hashes."""
    path = ws.scale_model()
    actual = hashlib.sha256((ws.models / "scale.onnx").read_bytes()).hexdigest()
    pinned = "ab" * 32
    message = _config_error(ws, [ws.model_step("m", path, sha256=pinned)])
    assert "key 'pipeline.steps[0].model.sha256'" in message
    assert actual in message
    assert pinned in message


def test_matching_sha256_loads(ws: Workspace) -> None:
    """A pinned sha256 equal to the file's (in any case) loads."""
    path = ws.scale_model()
    digest = hashlib.sha256((ws.models / "scale.onnx").read_bytes()).hexdigest().upper()
    pipeline = ws.pipeline([ws.model_step("m", path, sha256=digest)])
    assert pipeline.step_names == ["m"]


def test_malformed_yaml_names_the_file(ws: Workspace) -> None:
    """A file that is not YAML is a ConfigError naming the file."""
    path = ws.deploy / "broken.yaml"
    path.write_text("pipeline: [name: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}: not valid YAML")


def test_a_config_that_is_not_a_mapping_is_refused(ws: Workspace) -> None:
    """A YAML list instead of sections is a ConfigError naming the file."""
    path = ws.deploy / "list.yaml"
    path.write_text("- pipeline\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(path)


def test_missing_config_file_is_named(ws: Workspace) -> None:
    """A config path that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"absent\.yaml: no such config file"):
        load_settings(ws.deploy / "absent.yaml")


def test_check_that_does_not_compile_names_the_expr_key(ws: Workspace) -> None:
    """A check expression outside the grammar names ``pipeline.steps[1].check.expr``."""
    message = _config_error(
        ws,
        [
            ws.model_step("m", ws.scale_model()),
            {"check": {"name": "big", "expr": "out.y[0] >> 2"}},
        ],
    )
    assert "key 'pipeline.steps[1].check.expr'" in message
    assert "out.y[0] >> 2" in message


def test_python_function_that_cannot_be_imported_is_named(ws: Workspace) -> None:
    """A python step whose module does not import names the file, the key and the module."""
    message = _config_error(ws, [ws.python_step("hr_no_such_module", "run")])
    assert "key 'pipeline.steps[0].python.function'" in message
    assert "cannot import module 'hr_no_such_module'" in message


def test_python_module_that_raises_on_import_shows_the_error(ws: Workspace) -> None:
    """A module that fails while importing shows the exception it raised."""
    module = ws.module("raise RuntimeError('no GPU here')\n")
    message = _config_error(ws, [ws.python_step(module, "run")])
    assert "RuntimeError: no GPU here" in message


def test_python_function_missing_from_its_module_is_named(ws: Workspace) -> None:
    """A module without the named attribute is a ConfigError naming both."""
    module = ws.module("def other(table, context):\n    return table\n")
    message = _config_error(ws, [ws.python_step(module, "run")])
    assert "key 'pipeline.steps[0].python.function'" in message
    assert f"module '{module}' has no attribute 'run'" in message


def test_python_function_that_is_not_callable_is_refused(ws: Workspace) -> None:
    """A ``module:attribute`` naming a constant is a ConfigError saying it is not callable."""
    module = ws.module("THRESHOLD = 0.5\n")
    message = _config_error(ws, [ws.python_step(module, "THRESHOLD")])
    assert "key 'pipeline.steps[0].python.function'" in message
    assert f"'{module}:THRESHOLD' is not callable" in message


def test_split_weights_and_branches_must_agree(ws: Workspace) -> None:
    """A split whose weights and branches name different branches names both lists."""
    step = {
        "random_split": {
            "weights": {"a": 1, "b": 1},
            "branches": {"a": [ws.model_step("m", ws.scale_model())]},
        }
    }
    message = _config_error(ws, [step])
    assert "key 'pipeline.steps[0].random_split'" in message
    assert "weights name ['a', 'b'] but branches name ['a']" in message


def test_shadow_challenger_must_be_a_model(ws: Workspace) -> None:
    """A shadow challenger that is a check, not a model, is refused."""
    step = {
        "shadow": {
            "champion": ws.model_step("m", ws.scale_model()),
            "challengers": [{"check": {"name": "c", "expr": "1 > 0"}}],
        }
    }
    message = _config_error(ws, [step])
    assert "key 'pipeline.steps[0].shadow'" in message
    assert "must be model steps" in message


def test_renamed_input_that_the_model_lacks_is_named(ws: Workspace) -> None:
    """``inputs`` naming an ONNX input the model does not have names the key and the inputs."""
    message = _config_error(ws, [ws.model_step("m", ws.scale_model(), inputs={"features": "x"})])
    assert "key 'pipeline.steps[0].model.inputs'" in message
    assert "has no input 'features'" in message
    assert "['x']" in message


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.extensions",
        "sasl.oauthbearer.client.secret",
        "sasl.kerberos.kinit.cmd",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.jaas.config",
    ],
)
def test_credential_properties_are_masked_everywhere_but_librdkafka(key: str) -> None:
    """A property that may hold a credential prints as *** (and never in repr), yet reaches
    librdkafka as given."""
    value = "principal=me clientSecret=hunter2-very-secret"
    kafka = KafkaSettings(properties={key: value, "sasl.username": "alice"})
    assert kafka.redacted_properties() == {key: "***", "sasl.username": "alice"}
    assert "hunter2" not in repr(kafka) and "hunter2" not in str(kafka.model_dump())
    assert kafka.librdkafka_properties()[key] == value
