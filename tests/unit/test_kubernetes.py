"""The Kubernetes manifests of deploy/kubernetes, checked by their content (no cluster needed).

A user runs ``kubectl apply -k deploy/kubernetes``; no cluster runs here, so these tests pin
what would otherwise only fail there: every manifest against the Kubernetes API schema (the
``kubernetes-validate`` package, offline), the KEDA objects field by field, the config in the
ConfigMap loaded by ``headrace validate`` the way the pod loads it, and the agreements between
the files: ports, names, the grace period, the partitions, the image and the credentials.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no py.typed marker
import pytest
import yaml

from pipelines import load_settings
from pipelines.config import Settings, is_secret_property
from stream.cli.main import _parser
from stream.kafka.config import consumer_config
from stream.worker.processes import headrace_command

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION: dict[str, Any] = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
KEDA_API = "keda.sh/v1alpha1"
# The oldest Kubernetes the manifests promise to work on, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
POD_NAME = "headrace-ccfraud-6d5f8b7c9d-x7k2p"  # what the downward API gives a worker
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")  # ${VAR}, ${VAR:-default}
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((FOLDER / name).read_text()) if doc]


def _generator_files() -> dict[str, dict[str, str]]:
    """The configMapGenerator's ConfigMaps: name -> {key: file name in the folder}."""
    maps = {}
    for generator in KUSTOMIZATION.get("configMapGenerator", []):
        files = {}
        for entry in generator.get("files", []):
            key, _, file = entry.rpartition("=")
            files[key or Path(file).name] = file
        maps[generator["name"]] = files
    return maps


def _generated() -> list[dict[str, Any]]:
    """The ConfigMaps kustomize generates, before it appends the content hash to the name."""
    maps = []
    for generator in KUSTOMIZATION.get("configMapGenerator", []):
        labels = generator.get("options", {}).get("labels", {})
        files = _generator_files()[generator["name"]]
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"], "labels": labels},
                "data": {key: (FOLDER / file).read_text() for key, file in files.items()},
            }
        )
    return maps


RESOURCES = [doc for name in KUSTOMIZATION["resources"] for doc in _documents(name)] + _generated()


def _one(kind: str) -> dict[str, Any]:
    found = [resource for resource in RESOURCES if resource["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in the kustomization, found {len(found)}"
    return found[0]


DEPLOYMENT = _one("Deployment")
POD: dict[str, Any] = DEPLOYMENT["spec"]["template"]
WORKER: dict[str, Any] = POD["spec"]["containers"][0]
SCALED_OBJECT = _one("ScaledObject")
TRIGGER = SCALED_OBJECT["spec"]["triggers"][0]


def _secret_value(name: str, key: str) -> str:
    """A key of a Secret the kustomization applies (stringData or base64 data)."""
    secret = next(r for r in RESOURCES if r["kind"] == "Secret" and r["metadata"]["name"] == name)
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    assert key in secret.get("data", {}), f"Secret {name} has no key {key!r}"
    return base64.b64decode(secret["data"][key]).decode()


def _pod_environment() -> dict[str, str]:
    """The worker container's environment as the kubelet builds it."""
    assert "envFrom" not in WORKER, "this helper reads `env` only"
    environment: dict[str, str] = {}
    for variable in WORKER.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            environment[variable["name"]] = _secret_value(ref["name"], ref["key"])
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            environment[variable["name"]] = POD_NAME
    return environment


def _config_mount() -> tuple[PurePosixPath, Path]:
    """Where the pod reads its config (the path `headrace run` names), and the file of this
    folder that the generated ConfigMap puts there."""
    args = _parser().parse_args(WORKER["args"])
    path = PurePosixPath(str(args.config))
    mount = next(m for m in WORKER["volumeMounts"] if m["mountPath"] == str(path))
    volume = next(v for v in POD["spec"]["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    assert name in _generator_files(), f"{name} is not a ConfigMap of the configMapGenerator"
    return path, FOLDER / _generator_files()[name][mount["subPath"]]


def _settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The deployment as a worker pod loads it: the ConfigMap's config, the pod's environment."""
    for key in [key for key in os.environ if key.startswith("HEADRACE_")]:
        monkeypatch.delenv(key)
    for key, value in _pod_environment().items():
        monkeypatch.setenv(key, value)
    return load_settings(_config_mount()[1])


def _port(name_or_number: str | int) -> int:
    """A port of the worker container, by number or by name."""
    if isinstance(name_or_number, int):
        return name_or_number
    return next(int(p["containerPort"]) for p in WORKER["ports"] if p["name"] == name_or_number)


def _bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    assert match is not None, f"not a byte quantity: {quantity}"
    return int(match[1]) * _UNITS.get(match[2] or "", 1)


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    text = re.sub(r"\\\n", " ", "\n".join(x for x in lines if not x.lstrip().startswith("#")))
    instructions = [line.strip().partition(" ") for line in text.splitlines() if line.strip()]
    return [(keyword.upper(), rest.strip()) for keyword, _, rest in instructions]


def _image_copies() -> dict[PurePosixPath, Path]:
    """What the image holds from the repo: absolute path in the image -> repo path."""
    workdir, copies = PurePosixPath("/"), {}
    for keyword, rest in _dockerfile():
        if keyword == "WORKDIR":
            workdir = workdir / rest
        elif keyword == "COPY":
            words = [word for word in shlex.split(rest) if not word.startswith("--")]
            if len(words) == 2:
                copies[workdir / words[1]] = ROOT / words[0]
    return copies


def _compose_image() -> str:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images: set[str] = {svc["image"] for svc in compose["services"].values() if "build" in svc}
    assert len(images) == 1, images
    return images.pop()


def test_the_kustomization_lists_every_manifest_in_the_folder() -> None:
    """Each YAML file beside kustomization.yaml is a resource or a generator's input, no other."""
    resources = list(KUSTOMIZATION["resources"])
    generated = [f for files in _generator_files().values() for f in files.values()]
    assert len(set(resources)) == len(resources)
    assert not set(resources) & set(generated)
    on_disk = {path.name for path in FOLDER.iterdir() if path.suffix in (".yaml", ".yml")}
    assert on_disk == {"kustomization.yaml", *resources, *generated}
    for name in resources:
        for document in _documents(name):
            assert {"apiVersion", "kind", "metadata"} <= set(document), name
    for name in generated:
        assert "apiVersion" not in yaml.safe_load((FOLDER / name).read_text()), name
    assert KUSTOMIZATION["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert KUSTOMIZATION["kind"] == "Kustomization"
    kinds = sorted(resource["kind"] for resource in RESOURCES)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "ScaledObject",
            "Secret",
            "Service",
            "TriggerAuthentication",
        ]
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "resource",
    [r for r in RESOURCES if r["apiVersion"] != KEDA_API],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)
def test_each_manifest_is_valid_against_the_kubernetes_api_schema(
    resource: dict[str, Any], version: str
) -> None:
    """Every core object passes the API schema, strictly: an unknown or misplaced field fails."""
    kubernetes_validate.validate(resource, version, strict=True)


def test_the_scaled_object_scales_the_deployment_between_1_and_the_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KEDA scales the workers on the group's lag of the input topic, from 1 to its partitions."""
    settings = _settings(monkeypatch)
    compose = load_settings(ROOT / "configs" / "compose" / "ccfraud.yaml")
    spec = SCALED_OBJECT["spec"]
    assert SCALED_OBJECT["apiVersion"] == KEDA_API
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": DEPLOYMENT["metadata"]["name"],
    }
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] == settings.kafka.partitions == compose.kafka.partitions
    assert isinstance(spec["pollingInterval"], int) and 0 < spec["pollingInterval"] <= 60
    assert isinstance(spec["cooldownPeriod"], int) and spec["cooldownPeriod"] > 0
    assert len(spec["triggers"]) == 1 and TRIGGER["type"] == "kafka"
    metadata = TRIGGER["metadata"]
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA wants strings"
    assert metadata["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert metadata["consumerGroup"] == settings.kafka.group_id
    assert metadata["topic"] == settings.kafka.input_topic
    assert metadata["lagThreshold"].isdigit() and int(metadata["lagThreshold"]) > 0
    reset = consumer_config(settings.kafka, settings.kafka.bootstrap_servers)["auto.offset.reset"]
    assert metadata.get("offsetResetPolicy", "latest") == reset
    assert metadata.get("allowIdleConsumers", "false") == "false"
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert behavior["stabilizationWindowSeconds"] >= spec["pollingInterval"]


def test_keda_signs_in_to_kafka_as_the_workers_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TriggerAuthentication reads the workers' SASL user from the Secret, same mechanism."""
    properties = _settings(monkeypatch).kafka.librdkafka_properties()
    auth = _one("TriggerAuthentication")
    assert auth["apiVersion"] == KEDA_API
    assert TRIGGER["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"sasl", "username", "password", "tls"}
    value = {name: _secret_value(ref["name"], ref["key"]) for name, ref in refs.items()}
    assert value["username"] == properties["sasl.username"]
    assert value["password"] == properties["sasl.password"]
    mechanism = str(properties["sasl.mechanism"])  # SCRAM-SHA-512 -> scram_sha512
    assert value["sasl"] == mechanism.lower().replace("-sha-", "_sha").replace("-", "_")
    protocol = str(properties["security.protocol"])
    assert value["tls"] == ("enable" if protocol.endswith("SSL") else "disable")


def _strings(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every string value of a parsed config, with its dotted key."""
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in _strings(v, f"{key}.{k}".lstrip("."))]
    if isinstance(node, list):
        return [pair for i, item in enumerate(node) for pair in _strings(item, f"{key}[{i}]")]
    return [(key, node)] if isinstance(node, str) else []


def test_every_config_variable_reaches_the_pod_and_credentials_come_from_the_secret() -> None:
    """Each ${VAR} of the config is set in the pod; those in credential keys from the Secret."""
    text = _config_mount()[1].read_text()
    environment = _pod_environment()
    from_secret = {
        variable["name"]
        for variable in WORKER["env"]
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    found = set()
    for key, value in _strings(yaml.safe_load(text)):
        for name, default in _VARIABLE.findall(value):
            found.add(name)
            assert default or name in environment, f"{key}: ${{{name}}} is not set in the pod"
            if is_secret_property(key):
                assert name in from_secret and not default, f"{key} must come from the Secret"
    assert {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_USERNAME", "KAFKA_PASSWORD"} <= found
    for variable in WORKER["env"]:
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert not ref.get("optional", False)
            assert _one("Secret")["metadata"]["name"] == ref["name"]


def test_headrace_validate_passes_on_the_config_map_in_the_pods_file_layout(
    tmp_path: Path,
) -> None:
    """`headrace validate` exits 0 on the mounted config, beside what the image holds, with the
    pod's environment: the relative model path reaches the model the image carries."""
    mount, file = _config_mount()
    for target, source in _image_copies().items():
        if target not in mount.parents:  # the mounted file sits inside the image's configs/
            (tmp_path / target.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / target.relative_to("/")).symlink_to(source)
    config = tmp_path / mount.relative_to("/")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(file.read_text())
    workdir = next(rest for keyword, rest in _dockerfile() if keyword == "WORKDIR")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    pod = _pod_environment()
    done = subprocess.run(
        headrace_command("validate", str(config)),
        cwd=tmp_path / workdir.lstrip("/"),
        env=environment | pod,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"kafka     {pod['KAFKA_BOOTSTRAP_SERVERS']}" in done.stdout
    assert "sasl.password=***" in done.stdout and pod["KAFKA_PASSWORD"] not in done.stdout


def test_the_worker_runs_the_mounted_config_as_one_process_per_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`headrace run CONFIG`, one process, from the generated ConfigMap mounted file by file."""
    assert WORKER["args"][0] == "run" and "command" not in WORKER  # the image's entrypoint
    args = _parser().parse_args(WORKER["args"])
    assert (args.replicas or _settings(monkeypatch).replicas) == 1
    mount = next(m for m in WORKER["volumeMounts"] if m["mountPath"] == str(args.config))
    assert mount["subPath"] and mount.get("readOnly") is True
    volume = next(v for v in POD["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] in _generator_files()
    assert _config_mount()[1].parent == FOLDER


def test_probes_and_scrape_annotations_use_the_configs_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Liveness on /healthz, readiness on /readyz, Prometheus on /metrics, all on metrics.port."""
    port = _settings(monkeypatch).metrics.port
    assert port > 0
    probes = {
        name: WORKER[name]["httpGet"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {name: probe["path"] for name, probe in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert {_port(probe["port"]) for probe in probes.values()} == {port}
    service = _one("Service")
    for scrape in (POD["metadata"]["annotations"], service["metadata"]["annotations"]):
        assert scrape["prometheus.io/scrape"] == "true"
        assert scrape["prometheus.io/port"] == str(port)
        assert scrape["prometheus.io/path"] == "/metrics"
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and _port(service_port["targetPort"]) == port


def test_the_grace_period_outlasts_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL comes only after processing.shutdown_timeout_s, the drain's bound, has passed."""
    timeout = _settings(monkeypatch).processing.shutdown_timeout_s
    assert POD["spec"]["terminationGracePeriodSeconds"] > timeout


def test_the_instance_id_is_the_pod_name() -> None:
    """HEADRACE_KAFKA__INSTANCE_ID comes from metadata.name, for static group membership."""
    (variable,) = [v for v in WORKER["env"] if v["name"] == "HEADRACE_KAFKA__INSTANCE_ID"]
    assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert _pod_environment()["HEADRACE_KAFKA__INSTANCE_ID"] == POD_NAME


def test_the_worker_runs_as_the_images_user_on_a_read_only_root() -> None:
    """Non-root by number (the Dockerfile's uid), no privilege escalation, read-only root."""
    (useradd,) = [rest for keyword, rest in _dockerfile() if keyword == "RUN" and "useradd" in rest]
    uid = re.search(r"useradd\b.*--uid\s+(\d+)", useradd)
    assert uid is not None, useradd
    pod = POD["spec"]["securityContext"]
    container = WORKER["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == int(uid[1]) != 0
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert POD["spec"]["automountServiceAccountToken"] is False
    tmp = next(m for m in WORKER["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in POD["spec"]["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume


def test_resources_are_requested_and_memory_is_limited() -> None:
    """The worker requests CPU and memory and is limited in memory above its request."""
    resources = WORKER["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert _bytes(resources["requests"]["memory"]) <= _bytes(resources["limits"]["memory"])


def test_the_image_is_the_one_docker_compose_builds() -> None:
    """The Deployment runs headrace:<version>, the image docker-compose.yml builds."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    name, _, tag = WORKER["image"].rpartition(":")
    for override in KUSTOMIZATION.get("images", []):
        if override["name"] == name:
            name, tag = override.get("newName", name), override.get("newTag", tag)
    assert f"{name}:{tag}" == WORKER["image"] == _compose_image() == f"headrace:{version}"


def test_the_deployment_service_and_budget_select_the_worker_pods() -> None:
    """Selectors match the pod labels; KEDA owns the replica count; rollouts never surge."""
    labels = POD["metadata"]["labels"]
    spec = DEPLOYMENT["spec"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert _one("Service")["spec"]["selector"].items() <= labels.items()
    budget = _one("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget.get("maxUnavailable") == 1 and "minAvailable" not in budget
    assert "replicas" not in spec, "kubectl apply would reset the count KEDA set"
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_the_kubernetes_deployment_serves_the_compose_stacks_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same pipeline, model hash, topics, group and partitions as configs/compose/ccfraud.yaml."""
    settings = _settings(monkeypatch)
    compose = load_settings(ROOT / "configs" / "compose" / "ccfraud.yaml")
    assert settings.pipeline == compose.pipeline
    for key in ("input_topic", "output_topic", "dead_letter_topic", "group_id", "partitions"):
        assert getattr(settings.kafka, key) == getattr(compose.kafka, key), key
