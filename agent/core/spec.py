"""The job spec: one JSON file per claimed flow run. Versioned; never holds a secret."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.core.errors import SpecError

SPEC_VERSION = 1
_REQUIRED = ("flow_run_id", "pool", "transition_id", "agent_name")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "flow_run_name": str,
    "deployment_id": (str, type(None)),
    "scheduled_start": (str, type(None)),
    "claimed_at": (int, float),
    "job_variables": dict,
    "env_vars": dict,
    "import_paths": list,
    "show_flow_logs": bool,
    "cloud_logs": bool,
}


@dataclass(frozen=True)
class JobSpec:
    flow_run_id: str
    pool: str
    transition_id: str  # of our Pending: proves the claim is ours after a lost reply
    agent_name: str
    flow_run_name: str = ""
    deployment_id: str | None = None
    scheduled_start: str | None = None  # ISO 8601, for the start-delay metric
    claimed_at: float = 0.0
    job_variables: dict[str, Any] = field(default_factory=dict)  # merged, unvalidated
    # The agent's --env values and settings at claim time (a later config change
    # applies to later claims). The API credential is never stored here.
    env_vars: dict[str, str] = field(default_factory=dict)
    import_paths: list[str] = field(default_factory=list)
    show_flow_logs: bool = False
    # False (--no-cloud-logs): no agent run logs to the API, and the flow's own logging
    # to the API is turned off.
    cloud_logs: bool = True


def dumps(spec: JobSpec) -> bytes:
    body = {"version": SPEC_VERSION, **asdict(spec)}
    return json.dumps(body, indent=1, sort_keys=True).encode()


def loads(data: bytes) -> JobSpec:
    """Parse a spec, or raise SpecError saying what is wrong (with the run id if known)."""
    if not data.strip():
        raise SpecError("spec file is empty")
    try:
        body = json.loads(data)
    except ValueError as exc:  # also bytes that are not UTF-8
        raise SpecError(f"spec file is not valid JSON (truncated?): {exc}") from None
    except RecursionError:
        raise SpecError("spec file is not a spec: JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise SpecError("spec file does not hold a JSON object")
    run_id = body.get("flow_run_id") if isinstance(body.get("flow_run_id"), str) else None
    version = body.pop("version", None)
    if type(version) is not int or version != SPEC_VERSION:  # true == 1 in Python
        raise SpecError(f"unknown spec version {version!r} (expected {SPEC_VERSION})", run_id)
    missing = [k for k in _REQUIRED if not isinstance(body.get(k), str) or not body[k]]
    if missing:
        raise SpecError(f"spec is missing {', '.join(missing)}", run_id)
    for name, kind in _TYPES.items():
        if name in body and not isinstance(body[name], kind):
            raise SpecError(f"spec field {name} has the wrong type", run_id)
    if not all(isinstance(v, str) for v in body.get("env_vars", {}).values()):
        raise SpecError("spec field env_vars must map strings to strings", run_id)
    if not all(isinstance(p, str) for p in body.get("import_paths", [])):
        raise SpecError("spec field import_paths must be a list of strings", run_id)
    known = set(JobSpec.__dataclass_fields__)
    unknown = sorted(set(body) - known)
    if unknown:
        raise SpecError(f"spec has unknown fields {', '.join(unknown)}", run_id)
    try:
        return JobSpec(**body)
    except TypeError as exc:
        raise SpecError(f"spec has bad fields: {exc}", run_id) from None
