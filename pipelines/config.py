"""The deployment config: one YAML file, one typed and frozen settings tree.

Every key can be overridden from the environment as ``HEADRACE_<SECTION>__<KEY>``; relative
paths resolve against the config file's folder. Any problem raises :class:`ConfigError` naming
the file and the dotted key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipelines.errors import ConfigError

__all__ = [
    "BatchingSettings",
    "CheckSpec",
    "KafkaSettings",
    "MetricsSettings",
    "ModelSpec",
    "PipelineSettings",
    "ProcessingSettings",
    "PythonSpec",
    "Settings",
    "ShadowSpec",
    "SplitSpec",
    "StepSpec",
    "is_secret_property",
    "load_settings",
]

ENV_PREFIX = "HEADRACE_"
DnsName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length=63)
]
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")]
# What Kafka accepts as a group.instance.id (its topic-name rules), leaving room for "-<replica>"
InstanceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-]{1,240}$")]
StepKind = Literal["model", "python", "check", "random_split", "shadow"]
STEP_KINDS: tuple[StepKind, ...] = ("model", "python", "check", "random_split", "shadow")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """An ONNX model run with onnxruntime."""

    name: Identifier
    path: Path
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    inputs: dict[str, str] = Field(default_factory=dict)  # onnx input name -> column
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


class PythonSpec(_Frozen):
    """A Python callable ``module.path:callable`` taking ``(table, context)``."""

    function: Annotated[str, StringConstraints(pattern=r"^[\w.]+:[\w.]+$")]
    name: Identifier | None = None
    accepts: Literal["table", "custom-json"] = "table"

    @property
    def step_name(self) -> str:
        return self.name or self.function.rsplit(":", 1)[1]


class CheckSpec(_Frozen):
    """A named boolean expression; true rows are counted in ``check_failures``."""

    name: Identifier
    expr: str


class StepSpec(_Frozen):
    """One step of the chain: exactly one of the kind keys, plus retry settings."""

    model: ModelSpec | None = None
    python: PythonSpec | None = None
    check: CheckSpec | None = None
    random_split: SplitSpec | None = None
    shadow: ShadowSpec | None = None
    timeout_ms: PositiveInt = 15_000
    retries: Annotated[int, Field(ge=0, le=20)] = 2
    backoff_ms: Annotated[int, Field(ge=0)] = 100

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [kind for kind in STEP_KINDS if getattr(self, kind) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a step needs exactly one of {', '.join(STEP_KINDS)}; got {kinds or 'none'}"
            )
        return self

    @property
    def kind(self) -> StepKind:
        return next(kind for kind in STEP_KINDS if getattr(self, kind) is not None)

    @property
    def name(self) -> str:
        """The step's name as it appears in ``x-error-step`` and metrics."""
        if self.model is not None:
            return self.model.name
        if self.python is not None:
            return self.python.step_name
        if self.check is not None:
            return self.check.name
        return self.kind


class SplitSpec(_Frozen):
    """Routes rows to branches by weight, sticky per ``hash_key`` value when given."""

    weights: dict[Identifier, PositiveInt]
    branches: dict[Identifier, list[StepSpec]]
    hash_key: str | None = None

    @model_validator(mode="after")
    def _branches_match_weights(self) -> Self:
        if set(self.weights) != set(self.branches):
            raise ValueError(
                f"weights name {sorted(self.weights)} but branches name {sorted(self.branches)}"
            )
        return self


class ShadowSpec(_Frozen):
    """A champion model serving ``out.*`` and challengers serving ``out_<name>.*``."""

    champion: StepSpec
    challengers: list[StepSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _models_only(self) -> Self:
        for step in (self.champion, *self.challengers):
            if step.model is None:
                raise ValueError("shadow champion and challengers must be model steps")
        return self


class PipelineSettings(_Frozen):
    name: DnsName
    steps: list[StepSpec] = Field(min_length=1)


# librdkafka properties whose values are or may hold credentials: kept as SecretStr, never
# printed. sasl.oauthbearer.config and .extensions carry client secrets and tokens inline;
# sasl.kerberos.kinit.cmd may carry a password on its command line.
_SECRET_KEY = re.compile(
    r"(password|secret|jaas|token|private|\.key\.pem|credentials"
    r"|oauthbearer\.(config|extensions)|kinit\.cmd)",
    re.I,
)
PropertyValue = str | int | float | bool | SecretStr


def is_secret_property(key: str) -> bool:
    """Whether a librdkafka property holds a credential (sasl.password, ssl.key.password ...)."""
    return bool(_SECRET_KEY.search(key))


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "embedded"
    input_topic: str = ""
    output_topic: str = ""
    dead_letter_topic: str = ""
    group_id: str = ""
    partitions: PositiveInt = 4
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1_048_576  # requests, results, topics
    properties: dict[str, PropertyValue] = Field(default_factory=dict)
    # Static group membership (group.instance.id), e.g. the pod name; replica i of
    # `replicas: N` appends -i. Empty means none, so `${POD_NAME:-}` can leave it off.
    instance_id: InstanceId | None = None

    @field_validator("instance_id", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("properties", mode="after")
    @classmethod
    def _hide_secrets(cls, properties: dict[str, PropertyValue]) -> dict[str, PropertyValue]:
        return {
            key: SecretStr(str(value))
            if is_secret_property(key) and not isinstance(value, SecretStr)
            else value
            for key, value in properties.items()
        }

    def librdkafka_properties(self) -> dict[str, str | int | float | bool]:
        """``properties`` with secrets revealed: for librdkafka's config, and nothing else."""
        return {
            key: value.get_secret_value() if isinstance(value, SecretStr) else value
            for key, value in self.properties.items()
        }

    def redacted_properties(self) -> dict[str, str | int | float | bool]:
        """``properties`` for display: secret values as ``***``."""
        return {
            key: "***" if isinstance(value, SecretStr) else value
            for key, value in self.properties.items()
        }


class BatchingSettings(_Frozen):
    max_rows: PositiveInt = 1000
    max_wait_ms: Annotated[int, Field(ge=0)] = 5
    max_inflight_rows: PositiveInt = 50_000  # consumed, not yet acknowledged: pause above this
    max_inflight_bytes: PositiveInt = 64 * 1024 * 1024


class ProcessingSettings(_Frozen):
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    dataset: tuple[str, ...] = ("*",)
    dataset_exclude: tuple[str, ...] = ()
    commit_interval_ms: PositiveInt = 200
    shutdown_timeout_s: PositiveInt = 30
    # A request whose decoded size would pass either bound is refused as too_large before
    # anything is allocated (OIP shapes, compressed Arrow bodies, JSON rows).
    max_request_rows: PositiveInt = 1_000_000
    max_decoded_bytes: PositiveInt = 256 * 1024 * 1024
    # Requests failing in the steps in a row (a broken model, not bad input) before the worker
    # stops consuming and reports not-ready; 0 turns the guardrail off.
    max_consecutive_failures: Annotated[int, Field(ge=0)] = 1000
    # A request consumed more than this long after its Kafka timestamp is not run: it is
    # dead-lettered as expired, so a backlog after an outage is shed instead of served late.
    # None (the default) keeps every request, whatever its age; x-deadline applies either way.
    max_request_age_ms: PositiveInt | None = None


class MetricsSettings(_Frozen):
    port: Annotated[int, Field(ge=0, le=65535)] = 9108


class Settings(BaseSettings):
    """A whole deployment: the pipeline and how it is served."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    pipeline: PipelineSettings
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    replicas: PositiveInt = 1
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    _source: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _default_topics(self) -> Self:
        name = self.pipeline.name
        defaults = {
            "input_topic": f"{name}-requests",
            "output_topic": f"{name}-results",
            "dead_letter_topic": f"{name}-dlq",
            "group_id": name,
        }
        missing = {key: value for key, value in defaults.items() if not getattr(self.kafka, key)}
        if missing:
            object.__setattr__(self, "kafka", self.kafka.model_copy(update=missing))
        return self

    @property
    def source(self) -> Path | None:
        """The YAML file this deployment was loaded from, if any."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """The folder that relative paths and python step modules resolve against."""
        return self._source.parent if self._source is not None else Path.cwd()


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Load and validate a deployment config, with ``HEADRACE_*`` environment overrides."""
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the config: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping of sections, got {raw!r}")
    raw = _interpolate(raw, source, "")
    _resolve_model_paths(raw, source.resolve().parent)
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc
    settings._source = source.resolve()
    return settings


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        key = _dotted(error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif error["type"] == "missing":
            problems.append(f"missing key '{key}'")
        elif "properties" in key or is_secret_property(key):
            problems.append(f"key '{key}': {error['msg']}")  # the value may be a credential
        else:
            problems.append(f"key '{key}': {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, source: Path, key: str) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in string values from the environment."""
    if isinstance(node, dict):
        return {
            k: _interpolate(v, source, f"{key}.{k}" if key else str(k)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(item, source, f"{key}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name, default)
        if found is None:
            raise ConfigError(
                f"{source}: key '{key}': environment variable {name} is not set "
                f"(write ${{{name}:-default}} for a default)"
            )
        return found

    return _VARIABLE.sub(value, node)


def _resolve_model_paths(node: Any, base: Path) -> None:
    """Make every ``model.path`` absolute against the config's folder, in place."""
    if isinstance(node, dict):
        model = node.get("model")
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            model["path"] = os.path.normpath(base / Path(model["path"]).expanduser())
        for value in node.values():
            _resolve_model_paths(value, base)
    elif isinstance(node, list):
        for item in node:
            _resolve_model_paths(item, base)
