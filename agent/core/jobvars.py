"""The pool's job template, job-variable merging and validation, label matching. Pure."""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.core.environment import check_env, check_text
from agent.core.errors import JobVariableError
from agent.core.limits import Limits, parse_limits


def _optional(kind: str) -> dict[str, Any]:
    return {"anyOf": [{"type": kind}, {"type": "null"}], "default": None}


_OPTIONAL_STRING = _optional("string")

# Every {{ placeholder }} of job_configuration is a property of variables, as the
# server requires for a custom pool type.
BASE_JOB_TEMPLATE: dict[str, Any] = {
    "job_configuration": {
        "command": "{{ command }}",
        "env": "{{ env }}",
        "working_dir": "{{ working_dir }}",
        "labels": "{{ labels }}",
        "memory_limit": "{{ memory_limit }}",
        "cpu_limit": "{{ cpu_limit }}",
        "pids_limit": "{{ pids_limit }}",
        "timeout_seconds": "{{ timeout_seconds }}",
    },
    "variables": {
        "type": "object",
        "properties": {
            "command": {
                **_OPTIONAL_STRING,
                "title": "Command",
                "description": "Command to run instead of `python -m prefect.engine`.",
            },
            "env": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "default": {},
                "title": "Environment variables",
                "description": "Added to the flow run's environment.",
            },
            "working_dir": {
                **_OPTIONAL_STRING,
                "title": "Working directory",
                "description": "The flow run process's working directory; must exist.",
            },
            "labels": {
                "type": "array",
                "items": {"type": "string"},
                "default": [],
                "title": "Labels",
                "description": "Only agents having every one of these labels run the flow.",
            },
            "memory_limit": {
                **_OPTIONAL_STRING,
                "title": "Memory limit",
                "description": "Memory of the whole run, e.g. 512MiB or 2GiB, enforced by its "
                "cgroup: the OOM killer ends the run at it.",
            },
            "cpu_limit": {
                **_optional("number"),
                "title": "CPU limit",
                "description": "Cores the run may use, e.g. 1.5; enforced by its cgroup.",
            },
            "pids_limit": {
                **_optional("integer"),
                "title": "Process limit",
                "description": "Processes and threads the run may have at once, e.g. 256.",
            },
            "timeout_seconds": {
                **_optional("number"),
                "title": "Timeout (seconds)",
                "description": "Wall time from the flow process start; then SIGTERM to the "
                "whole run, SIGKILL after the grace period; the run ends Failed.",
            },
        },
    },
}


def base_job_template() -> dict[str, Any]:
    return copy.deepcopy(BASE_JOB_TEMPLATE)


def template_defaults(template: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``default`` of each variable of a pool's base job template."""
    props = ((template or {}).get("variables") or {}).get("properties") or {}
    return {
        name: copy.deepcopy(prop["default"])
        for name, prop in props.items()
        if isinstance(prop, Mapping) and "default" in prop
    }


def merge_job_variables(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers win: ``env`` merges key by key, every other key is replaced.

    Call as ``merge_job_variables(pool_defaults, deployment_vars, flow_run_vars)``.
    JobVariableError if a layer is neither an object nor None. The result shares nothing
    with the layers.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is not None and not isinstance(layer, Mapping):
            raise JobVariableError(f"job variables must be an object, got {type(layer).__name__}")
        for key, value in (layer or {}).items():
            if key == "env" and isinstance(value, Mapping) and isinstance(merged.get("env"), dict):
                merged["env"] = {**merged["env"], **copy.deepcopy(dict(value))}
            else:
                merged[key] = copy.deepcopy(value)
    return merged


@dataclass(frozen=True)
class JobVariables:
    """Job variables after type checks; what the worker runs from."""

    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    labels: frozenset[str] = frozenset()
    limits: Limits = field(default_factory=Limits)


def parse_labels(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise JobVariableError(
            f"job variable `labels` must be a list of strings, got {type(value).__name__}"
        )
    return frozenset(value)


def validate_job_variables(raw: Mapping[str, Any]) -> JobVariables:
    """Type-check the merged job variables, and that each value can reach exec;
    JobVariableError names the variable at fault (never an ``env`` value)."""
    if not isinstance(raw, Mapping):
        raise JobVariableError(f"job variables must be an object, got {type(raw).__name__}")
    command = raw.get("command")
    argv: tuple[str, ...] | None = None
    if command is not None:
        if not isinstance(command, str):
            raise JobVariableError(
                f"job variable `command` must be a string, got {type(command).__name__}"
            )
        check_text(command, "job variable `command`")
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise JobVariableError(f"job variable `command` cannot be parsed: {exc}") from None
        argv = argv or None
    env = raw.get("env") or {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise JobVariableError("job variable `env` must be a mapping of strings to strings")
    check_env(env, "job variable `env`")
    working_dir = raw.get("working_dir")
    if working_dir is not None and not isinstance(working_dir, str):
        raise JobVariableError(
            f"job variable `working_dir` must be a string, got {type(working_dir).__name__}"
        )
    if working_dir:
        check_text(working_dir, "job variable `working_dir`")
    return JobVariables(
        command=argv,
        env=dict(env),
        working_dir=working_dir or None,
        labels=parse_labels(raw.get("labels")),
        limits=parse_limits(raw),
    )


def labels_match(run_labels: frozenset[str], agent_labels: frozenset[str]) -> bool:
    """A run is eligible when every label it asks for is one of the agent's."""
    return run_labels <= agent_labels
