"""Backend config (``--agent-config-id``): the agent's settings kept on the Prefect
server as a Variable holding a JSON object, applied above flags and environment.

Parsing and applying are pure; the poller fetches the variable at start (a missing or
malformed one stops the agent) and again every refresh interval, applying what changed
to the runs it claims from then on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agent.core.environment import check_env, check_text
from agent.core.errors import ConfigError, JobVariableError, NotFoundError
from agent.core.redact import redact_url
from agent.settings.config import PollerConfig, agent_labels

if TYPE_CHECKING:
    from agent.api.client import PrefectClient

# key -> (expected kind for the message, check). Dashes and underscores are the same key.
_KINDS: dict[str, str] = {
    "labels": "a list of strings",
    "env_vars": "an object of strings",
    "import_paths": "a list of strings",
    "name": "a non-empty string",
    "show_flow_logs": "true or false",
    "hostname_label": "true or false",
    "work_queues": "a list of strings",
}


def _valid(key: str, value: Any) -> bool:
    if key in ("labels", "import_paths", "work_queues"):
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    if key == "env_vars":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if key == "name":
        return isinstance(value, str) and bool(value.strip())
    return isinstance(value, bool)


@dataclass(frozen=True)
class BackendSettings:
    """What the variable defines; None means "not set there: keep flags/env"."""

    labels: tuple[str, ...] | None = None
    env_vars: Mapping[str, str] | None = None
    import_paths: tuple[str, ...] | None = None
    name: str | None = None
    show_flow_logs: bool | None = None
    hostname_label: bool | None = None
    work_queues: tuple[str, ...] | None = None


def fetch(client: PrefectClient, variable: str) -> BackendSettings:
    """Read and parse the variable. ConfigError if it is missing or malformed; ApiError
    (the API is down, say) is left to the caller, which retries."""
    try:
        value = client.read_variable(variable)
    except NotFoundError:
        where = redact_url(client.settings.url)
        raise ConfigError(
            f"agent config variable {variable!r} does not exist on {where} "
            "(--agent-config-id takes a Prefect Variable's name or id)"
        ) from None
    return parse(value, variable)


def defined(settings: BackendSettings) -> set[str]:
    """Names of the settings the variable defines."""
    return {k for k in _KINDS if getattr(settings, k) is not None}


def parse(value: Any, variable: str) -> BackendSettings:
    """The variable's value (an object, or a string holding one) -> settings."""
    where = f"agent config variable {variable!r}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{where} does not hold valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{where} does not hold valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must hold a JSON object, not {type(value).__name__}")
    fields: dict[str, Any] = {}
    for raw_key, item in value.items():
        key = str(raw_key).replace("-", "_")
        if key not in _KINDS:
            raise ConfigError(f"{where}: unknown key {raw_key!r} (known keys: {', '.join(_KINDS)})")
        if not _valid(key, item):
            raise ConfigError(f"{where}: key {raw_key!r} must be {_KINDS[key]}")
        try:  # env vars and import paths reach exec: refuse there what exec would refuse
            if key == "env_vars":
                check_env(item, f"{where}: key {raw_key!r}")
            elif key == "import_paths":
                for path in item:
                    check_text(path, f"{where}: key {raw_key!r}")
        except JobVariableError as exc:
            raise ConfigError(str(exc)) from None
        fields[key] = tuple(item) if isinstance(item, list) else item
    return BackendSettings(**fields)


def apply(base: PollerConfig, settings: BackendSettings) -> PollerConfig:
    """``base`` (from flags, env and file) with every setting the variable defines on top."""
    labels = base.label_list if settings.labels is None else settings.labels
    hostname_label = (
        base.hostname_label if settings.hostname_label is None else settings.hostname_label
    )
    changes: dict[str, Any] = {
        "label_list": tuple(labels),
        "hostname_label": hostname_label,
        "labels": agent_labels(labels, base.hostname, hostname_label),
    }
    if settings.env_vars is not None:
        changes["env_vars"] = dict(settings.env_vars)
    if settings.import_paths is not None:
        changes["import_paths"] = settings.import_paths
    if settings.name is not None:
        changes["name"] = settings.name
    if settings.show_flow_logs is not None:
        changes["show_flow_logs"] = settings.show_flow_logs
    if settings.work_queues is not None:
        changes["work_queues"] = settings.work_queues
    return replace(base, **changes)


def describe_changes(old: PollerConfig, new: PollerConfig) -> list[str]:
    """Human lines for what differs; env var *values* are never shown (may be secrets)."""
    lines: list[str] = []
    if old.labels != new.labels:
        lines.append(f"labels {sorted(old.labels)} -> {sorted(new.labels)}")
    if old.env_vars != new.env_vars:
        added = sorted(set(new.env_vars) - set(old.env_vars))
        removed = sorted(set(old.env_vars) - set(new.env_vars))
        changed = sorted(
            k for k in set(old.env_vars) & set(new.env_vars) if old.env_vars[k] != new.env_vars[k]
        )
        parts = [
            f"{what} {', '.join(keys)}"
            for what, keys in (("added", added), ("removed", removed), ("changed", changed))
            if keys
        ]
        lines.append(f"env vars: {'; '.join(parts)}")
    for attr in ("import_paths", "work_queues", "show_flow_logs", "name"):
        if getattr(old, attr) != getattr(new, attr):
            lines.append(f"{attr} {getattr(old, attr)!r} -> {getattr(new, attr)!r}")
    return lines
