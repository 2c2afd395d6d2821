"""The container and the docker-compose stack, checked by their content (no Docker needed).

A user runs ``docker compose up`` on a real engine; these tests pin what would otherwise only
fail there: files the stack mounts or copies, pinned images, the commands and configs the
containers run, the broker's listeners, start-up order, and what Prometheus and Grafana read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from pipelines import load_settings
from stream.cli.main import _parser
from stream.worker.processes import headrace_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
HEADRACE_SERVICES = sorted(name for name, svc in SERVICES.items() if "build" in svc)
KAFKA_ENV: dict[str, str] = {k: str(v) for k, v in SERVICES["kafka"]["environment"].items()}
WAIT_CONDITIONS = {"service_healthy", "service_completed_successfully"}
# SPEC §9: the metrics a worker exports, with their kind, and the labels they carry.
SPEC_METRICS = {
    "headrace_requests_total": "counter",
    "headrace_rows_total": "counter",
    "headrace_dead_letters_total": "counter",
    "headrace_batch_rows": "histogram",
    "headrace_step_seconds": "histogram",
    "headrace_request_latency_seconds": "histogram",
    "headrace_inflight_rows": "gauge",
    "headrace_consumer_lag": "gauge",
}
SPEC_LABELS = {"pipeline", "outcome", "error_type", "step", "partition", "le"}
_SERIES_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
FRAMING_BYTES = 64 * 1024  # what headrace allows on top of kafka.max_message_bytes per record


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword:
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _args(keyword: str) -> list[str]:
    return [rest for key, rest in _dockerfile() if key == keyword]


def _copies() -> list[tuple[list[str], PurePosixPath]]:
    """Each COPY as (repo sources, absolute destination in the image)."""
    workdir = PurePosixPath("/")
    copies = []
    for keyword, rest in _dockerfile():
        if keyword == "WORKDIR":
            workdir = workdir / rest
        elif keyword == "COPY":
            words = [word for word in shlex.split(rest) if not word.startswith("--")]
            copies.append((words[:-1], workdir / words[-1]))
    return copies


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (the pattern forms .dockerignore uses)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in _dockerignore():
        if pattern.startswith("**/"):
            if any(fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def _mounts(service: str) -> dict[PurePosixPath, Path]:
    """The service's bind mounts: container path -> repo path."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[PurePosixPath(target)] = (ROOT / source).resolve()
    return mounts


def _repo_path(service: str, container_path: str) -> Path:
    """Where a path a container reads comes from: a bind mount, else a Dockerfile COPY."""
    path = PurePosixPath(container_path)
    sources = dict(_mounts(service))
    if "build" in SERVICES[service]:
        for copied, destination in _copies():
            if len(copied) == 1:
                sources.setdefault(destination, ROOT / copied[0])
    for target in sorted(sources, key=lambda target: len(target.parts), reverse=True):
        if path == target or target in path.parents:
            return sources[target] / path.relative_to(target)
    raise AssertionError(f"{service}: nothing mounts or copies {container_path}")


def _command(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def _environment(service: str) -> dict[str, str]:
    environment = SERVICES[service].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _listeners(key: str) -> dict[str, tuple[str, int]]:
    """A Kafka listener list (``NAME://host:port,...``) as name -> (host, port)."""
    listeners = {}
    for item in KAFKA_ENV[key].split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        listeners[name] = (host, int(port))
    return listeners


def _published(service: str) -> dict[int, int]:
    """The service's published ports: host port -> container port."""
    published = {}
    for mapping in SERVICES[service].get("ports", []):
        *_, host, container = str(mapping).split(":")
        published[int(host)] = int(container)
    return published


def _worker_settings(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, int]:
    """The worker's deployment as the container loads it, and how many replicas it runs."""
    for key, value in _environment("worker").items():
        monkeypatch.setenv(key, value)
    args = _parser().parse_args(_command("worker"))
    settings = load_settings(_repo_path("worker", str(args.config)))
    return settings, args.replicas or settings.replicas


def test_dockerfile_copies_only_what_the_repo_has_and_the_context_keeps() -> None:
    """Every COPY source exists in the repo and is not left out by .dockerignore."""
    copies = _copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, not in the repo"
            assert not _ignored(source), f".dockerignore leaves out {source}, which is copied"
    assert _ignored("models/heavy.onnx") and _ignored(".venv") and _ignored("tests")
    assert not _ignored("models/ccfraud.onnx")


def test_compose_mounts_and_builds_only_what_the_repo_has() -> None:
    """Every bind mount source and build context in docker-compose.yml exists in the repo."""
    for name, service in SERVICES.items():
        for target, source in _mounts(name).items():
            assert source.exists(), f"{name} mounts {source} at {target}: not in the repo"
        if "build" in service:
            context = service["build"]
            context = context if isinstance(context, str) else context.get("context", ".")
            assert (ROOT / context / "Dockerfile").is_file()


def test_every_image_is_pinned_to_an_explicit_tag() -> None:
    """Each service's image and the Dockerfile's base name a tag, and never ``latest``."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = [_args("FROM")[0].split()[0]]
    for name, service in SERVICES.items():
        assert "image" in service, f"{name} has no image"
        images.append(service["image"])
        if name in HEADRACE_SERVICES:
            assert service["image"] == f"headrace:{version}"
    for image in images:
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), image


@pytest.mark.parametrize("service", HEADRACE_SERVICES)
def test_headrace_commands_parse_and_name_a_config_the_image_has(service: str) -> None:
    """The stack's `headrace` commands parse with the real CLI and their config reaches the box."""
    args = _parser().parse_args(_command(service))
    config = _repo_path(service, str(args.config))
    assert config.resolve() == (ROOT / "configs" / "compose" / "ccfraud.yaml").resolve()
    assert config.is_file()


@pytest.mark.parametrize("service", HEADRACE_SERVICES)
def test_headrace_validate_passes_with_the_services_environment(service: str) -> None:
    """`headrace validate` exits 0 on the mounted config with the service's environment."""
    args = _parser().parse_args(_command(service))
    config = _repo_path(service, str(args.config))
    env = os.environ | _environment(service)
    done = subprocess.run(
        headrace_command("validate", str(config)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert env["HEADRACE_KAFKA__BOOTSTRAP_SERVERS"] in done.stdout


def test_the_config_reaches_the_host_listener_by_default() -> None:
    """The compose config's own bootstrap address is the one published to the host."""
    raw = yaml.safe_load((ROOT / "configs" / "compose" / "ccfraud.yaml").read_text())
    assert raw["kafka"]["bootstrap_servers"] == "localhost:9092"


@pytest.mark.parametrize("service", HEADRACE_SERVICES)
def test_the_broker_advertises_the_address_the_containers_use(service: str) -> None:
    """A container's bootstrap address is an advertised listener that the broker binds."""
    host, _, port = _environment(service)["HEADRACE_KAFKA__BOOTSTRAP_SERVERS"].partition(":")
    advertised = _listeners("KAFKA_ADVERTISED_LISTENERS")
    names = [name for name, address in advertised.items() if address == (host, int(port))]
    assert names, f"{host}:{port} is not among kafka's advertised listeners {advertised}"
    assert _listeners("KAFKA_LISTENERS")[names[0]][1] == int(port)
    assert host in {"kafka", SERVICES["kafka"].get("hostname")}


def test_the_broker_advertises_and_publishes_localhost_9092_for_the_host() -> None:
    """The host reaches the broker at localhost:9092: advertised, bound and published."""
    advertised = _listeners("KAFKA_ADVERTISED_LISTENERS")
    names = [name for name, address in advertised.items() if address == ("localhost", 9092)]
    assert names
    bound_port = _listeners("KAFKA_LISTENERS")[names[0]][1]
    assert _published("kafka").get(9092) == bound_port


def test_kafka_runs_one_kraft_node_with_consistent_listeners() -> None:
    """Broker and controller in one node: every listener has a protocol and the voter matches."""
    listeners = _listeners("KAFKA_LISTENERS")
    protocols = dict(
        item.split(":") for item in KAFKA_ENV["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(KAFKA_ENV["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert set(listeners) <= set(protocols)
    assert set(_listeners("KAFKA_ADVERTISED_LISTENERS")) <= set(listeners)
    controller = KAFKA_ENV["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller not in _listeners("KAFKA_ADVERTISED_LISTENERS")
    node, _, voter = KAFKA_ENV["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == KAFKA_ENV["KAFKA_NODE_ID"]
    assert int(voter.rpartition(":")[2]) == listeners[controller][1]
    assert KAFKA_ENV["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    assert KAFKA_ENV["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert KAFKA_ENV["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"


def test_the_broker_accepts_headraces_largest_message_and_creates_no_topic_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker's message limit fits kafka.max_message_bytes plus framing; no auto-creation."""
    settings, _ = _worker_settings(monkeypatch)
    limit = int(KAFKA_ENV["KAFKA_MESSAGE_MAX_BYTES"])
    assert limit >= settings.kafka.max_message_bytes + FRAMING_BYTES
    assert KAFKA_ENV["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_kafka_healthcheck_asks_the_broker_on_a_listener() -> None:
    """Kafka is healthy only when the broker answers an API-versions request on a listener."""
    check = SERVICES["kafka"]["healthcheck"]
    command = " ".join(check["test"][1:])
    assert "kafka-broker-api-versions.sh" in command
    bootstrap = re.search(r"--bootstrap-server\s+(\S+)", command)
    assert bootstrap is not None
    host, _, port = bootstrap.group(1).partition(":")
    assert (host, int(port)) in _listeners("KAFKA_ADVERTISED_LISTENERS").values()
    assert check["interval"] and check["retries"] >= 1


def test_services_wait_on_health_or_completion_never_on_sleeps() -> None:
    """Each dependency waits for a healthy or finished service, and nothing sleeps to wait."""
    has_image_healthcheck = any("/healthz" in rest for rest in _args("HEALTHCHECK"))
    for name, service in SERVICES.items():
        assert "sleep" not in json.dumps(service.get("command", "")), name
        for target, spec in service.get("depends_on", {}).items():
            condition = spec["condition"]
            assert condition in WAIT_CONDITIONS, f"{name} waits on {target} by {condition}"
            if condition == "service_healthy":
                check = SERVICES[target].get("healthcheck", {})
                assert not check.get("disable")
                assert "test" in check or (target in HEADRACE_SERVICES and has_image_healthcheck)
            else:
                assert SERVICES[target].get("restart") == "no", f"{target} is not one-shot"
    assert SERVICES["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    condition = SERVICES["worker"]["depends_on"]["topics"]["condition"]
    assert condition == "service_completed_successfully"


def test_prometheus_scrapes_every_worker_replicas_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prometheus scrapes metrics.port + i for each replica i of the worker service."""
    settings, replicas = _worker_settings(monkeypatch)
    expected = {f"worker:{settings.metrics.port + i}" for i in range(replicas)}
    config_flag = next(a for a in SERVICES["prometheus"]["command"] if "--config.file=" in a)
    config = yaml.safe_load(_repo_path("prometheus", config_flag.split("=", 1)[1]).read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == expected


def test_the_worker_healthcheck_probes_every_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is healthy only while each replica's /healthz answers on its port."""
    settings, replicas = _worker_settings(monkeypatch)
    probe = " ".join(SERVICES["worker"]["healthcheck"]["test"])
    assert "/healthz" in probe
    ports = {int(port) for port in re.findall(r"\b(\d{4,5})\b", probe)}
    assert ports == {settings.metrics.port + i for i in range(replicas)}


def test_dockerfile_has_a_pinned_base_a_healthcheck_and_a_non_root_user() -> None:
    """The image: slim pinned Python 3.11, `pip install .`, /healthz probe, non-root, `headrace`."""
    base = _args("FROM")[0].split()[0]
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base), base
    assert any("/healthz" in rest and "urllib" in rest for rest in _args("HEALTHCHECK"))
    users = _args("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "9108" in " ".join(_args("EXPOSE"))
    assert json.loads(_args("ENTRYPOINT")[-1]) == ["headrace"]
    installs = [rest for rest in _args("RUN") if "pip install" in rest]
    assert any(re.search(r"pip install (--no-deps )?\.(\s|$)", rest) for rest in installs)
    assert not any("[dev]" in rest for rest in installs)


def _promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression uses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    labels |= set(re.findall(r"([A-Za-z_]\w*)\s*=~?", expr))
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    words = re.finditer(r"([A-Za-z_:][\w:]*)(\s*\()?", expr)
    return {word[1] for word in words if word[2] is None}, labels


def _template_names(definition: str) -> tuple[set[str], set[str]]:
    """The metric and label a Grafana ``label_values(metric, label)`` variable reads."""
    call = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition.strip())
    assert call is not None, definition
    return {call[1]}, {call[2]}


def test_grafana_dashboard_uses_only_spec_metrics_from_the_provisioned_prometheus() -> None:
    """Every dashboard query names SPEC §9 metrics and labels, via the provisioned data source."""
    allowed = {
        name + suffix for name, kind in SPEC_METRICS.items() for suffix in _SERIES_SUFFIXES[kind]
    }
    provisioning = _repo_path("grafana", "/etc/grafana/provisioning")
    datasources = [
        source
        for file in sorted((provisioning / "datasources").glob("*.yml"))
        for source in yaml.safe_load(file.read_text())["datasources"]
    ]
    assert [source["url"] for source in datasources] == ["http://prometheus:9090"]
    providers = [
        provider
        for file in sorted((provisioning / "dashboards").glob("*.yml"))
        for provider in yaml.safe_load(file.read_text())["providers"]
    ]
    folder = _repo_path("grafana", providers[0]["options"]["path"])
    dashboards = sorted(folder.glob("*.json"))
    assert dashboards
    used: set[str] = set()
    for file in dashboards:
        dashboard = json.loads(file.read_text())
        names = [
            (target["expr"], _promql_names(target["expr"]))
            for panel in dashboard["panels"]
            for target in panel["targets"]
        ]
        names += [
            (var["definition"], _template_names(var["definition"]))
            for var in dashboard["templating"]["list"]
        ]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasources[0]["uid"], panel["title"]
        for expr, (metrics, labels) in names:
            assert metrics and metrics <= allowed, f"{file.name}: {expr}"
            assert labels <= SPEC_LABELS, f"{file.name}: {expr}"
            used |= metrics
    home = _environment("grafana").get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or _repo_path("grafana", home).is_file()
    wanted = {
        "headrace_rows_total",
        "headrace_request_latency_seconds_bucket",
        "headrace_batch_rows_bucket",
        "headrace_dead_letters_total",
        "headrace_consumer_lag",
    }
    assert wanted <= used
