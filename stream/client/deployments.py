"""A deployment named instead of pointed at: ``stream.connect("ccfraud")``.

A name resolves to the config in ``$HEADRACE_CONFIG_DIR`` (default ``./configs``) whose
``pipeline.name`` it is, as Qwak's ``model_id`` names a deployed model. With no config at all,
``$HEADRACE_MODEL_ID`` names the deployment (Qwak's ``QWAK_MODEL_ID``).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pipelines.config import Settings, load_settings
from stream.errors import UnknownDeployment

__all__ = ["CONFIG_DIR_ENV", "MODEL_ID_ENV", "Deployment", "find_deployment", "resolve_settings"]

CONFIG_DIR_ENV = "HEADRACE_CONFIG_DIR"
MODEL_ID_ENV = "HEADRACE_MODEL_ID"
_DEFAULT_DIR = "configs"
_SUFFIXES = (".yaml", ".yml")

Deployment = str | os.PathLike[str] | Settings
"""A config path, loaded settings, or a deployment's pipeline name."""


def resolve_settings(deployment: Deployment | None) -> Settings:
    """The settings of ``deployment``: loaded as given, read from a path, or found by name.

    A string that names an existing file, or ends in ``.yaml``/``.yml``, or holds a path
    separator is a path; any other string is a pipeline name. ``None`` means
    ``$HEADRACE_MODEL_ID``.
    """
    if isinstance(deployment, Settings):
        return deployment
    if deployment is None:
        name = os.environ.get(MODEL_ID_ENV, "").strip()
        if not name:
            raise UnknownDeployment(
                f"no deployment given: pass a config path or a deployment name "
                f"(model_id=...), or set {MODEL_ID_ENV}"
            )
        return load_settings(find_deployment(name))
    if _is_path(deployment):
        return load_settings(deployment)
    return load_settings(find_deployment(str(deployment)))


def find_deployment(name: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """The config in ``folder`` (default ``$HEADRACE_CONFIG_DIR`` or ``./configs``) whose
    ``pipeline.name`` is ``name``; UnknownDeployment lists the names found and the folder."""
    where = Path(folder or os.environ.get(CONFIG_DIR_ENV) or _DEFAULT_DIR)
    found: dict[str, list[Path]] = {}
    for path in sorted(where.glob("*")) if where.is_dir() else ():
        if path.suffix in _SUFFIXES and path.is_file():
            pipeline_name = _pipeline_name(path)
            if pipeline_name is not None:
                found.setdefault(pipeline_name, []).append(path)
    matches = found.get(name, [])
    if len(matches) == 1:
        return matches[0]
    searched = f"{where.resolve()} (${CONFIG_DIR_ENV} or ./configs)"
    if matches:
        files = ", ".join(str(path) for path in matches)
        raise UnknownDeployment(f"deployment {name!r} is defined twice in {searched}: {files}")
    names = ", ".join(sorted(found)) or "none"
    raise UnknownDeployment(
        f"no deployment named {name!r} in {searched}; deployments found: {names}"
    )


def _is_path(deployment: str | os.PathLike[str]) -> bool:
    if not isinstance(deployment, str):
        return True
    return deployment.endswith(_SUFFIXES) or os.sep in deployment or Path(deployment).is_file()


def _pipeline_name(path: Path) -> str | None:
    """``pipeline.name`` of a config file, read without validating the rest; None if absent."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    pipeline = raw.get("pipeline") if isinstance(raw, dict) else None
    name = pipeline.get("name") if isinstance(pipeline, dict) else None
    return name if isinstance(name, str) else None
