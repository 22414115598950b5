"""The API boundary: what the Prefect server answers, checked once and turned into typed
values (agent/core/states.py). A body of another shape is an ApiShapeError that names
the call, never a KeyError or AttributeError deep in the agent."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agent.core.errors import ApiShapeError
from agent.core.reap import Beat
from agent.core.states import (
    Answer,
    Deployment,
    FlowRun,
    RunState,
    StateAnswer,
    StateType,
    WorkPool,
)


def parse_api_time(value: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time from the API (naive = UTC), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _object(call: str, body: object, what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ApiShapeError(call, f"expected {what} as a JSON object, got {_kind(body)}")
    return body


def _list(call: str, body: object, what: str) -> list[Any]:
    if not isinstance(body, list):
        raise ApiShapeError(call, f"expected a JSON list of {what}, got {_kind(body)}")
    return body


def _kind(body: object) -> str:
    if body is None:
        return "nothing"
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(body), type(body).__name__)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def state(call: str, body: object) -> RunState | None:
    if body is None:
        return None
    raw = _object(call, body, "a state")
    try:
        kind: StateType | None = StateType(str(raw.get("type")))
    except ValueError:
        kind = None
    details = raw.get("state_details")
    transition = details.get("transition_id") if isinstance(details, Mapping) else None
    return RunState(
        type=kind,
        name=_text(raw.get("name")),
        message=_text(raw.get("message")),
        timestamp=parse_api_time(raw.get("timestamp")),
        transition_id=transition if isinstance(transition, str) else None,
        id=raw["id"] if isinstance(raw.get("id"), str) else None,
    )


def flow_run(call: str, body: object) -> FlowRun:
    raw = _object(call, body, "a flow run")
    run_id = raw.get("id")
    if not isinstance(run_id, str) or not run_id:
        raise ApiShapeError(call, "a flow run without an id")
    count = raw.get("run_count")
    labels, job_variables = raw.get("labels"), raw.get("job_variables")
    deployment, pool = raw.get("deployment_id"), raw.get("work_pool_name")
    run_state = state(call, raw.get("state"))
    if run_state is None and raw.get("state_type"):
        # get_scheduled_flow_runs leaves `state` out and gives its type and name only.
        run_state = state(call, {"type": raw.get("state_type"), "name": raw.get("state_name")})
    return FlowRun(
        id=run_id,
        name=_text(raw.get("name")),
        state=run_state,
        run_count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
        deployment_id=deployment if isinstance(deployment, str) and deployment else None,
        work_pool_name=pool if isinstance(pool, str) and pool else None,
        labels=dict(labels) if isinstance(labels, Mapping) else {},
        job_variables=dict(job_variables) if isinstance(job_variables, Mapping) else {},
        scheduled_start=_text(raw.get("next_scheduled_start_time"))
        or _text(raw.get("expected_start_time"))
        or None,
    )


def flow_runs(call: str, body: object) -> list[FlowRun]:
    return [flow_run(call, item) for item in _list(call, body, "flow runs")]


def scheduled_runs(call: str, body: object) -> list[FlowRun]:
    """get_scheduled_flow_runs: a list of ``{"flow_run": {...}, ...}``."""
    return [
        flow_run(call, _object(call, item, "a scheduled run").get("flow_run"))
        for item in _list(call, body, "scheduled runs")
    ]


def state_answer(call: str, body: object) -> StateAnswer:
    raw = _object(call, body, "an orchestration result")
    try:
        status = Answer(str(raw.get("status")))
    except ValueError:
        raise ApiShapeError(call, f"unknown answer status {raw.get('status')!r}") from None
    details = raw.get("details")
    details = details if isinstance(details, Mapping) else {}
    delay = details.get("delay_seconds")
    return StateAnswer(
        status=status,
        state=state(call, raw.get("state")),
        reason=_text(details.get("reason")),
        delay=float(delay) if isinstance(delay, (int, float)) else 0.0,
    )


def deployment(call: str, body: object) -> Deployment:
    raw = _object(call, body, "a deployment")
    job_variables = raw.get("job_variables")
    return Deployment(
        id=_text(raw.get("id")),
        job_variables=dict(job_variables) if isinstance(job_variables, Mapping) else {},
    )


def work_pool(call: str, body: object) -> WorkPool:
    raw = _object(call, body, "a work pool")
    template = raw.get("base_job_template")
    return WorkPool(
        name=_text(raw.get("name")),
        type=_text(raw.get("type")),
        base_job_template=dict(template) if isinstance(template, Mapping) else {},
        id=raw["id"] if isinstance(raw.get("id"), str) else None,
    )


def variable(call: str, body: object) -> object:
    """A Prefect Variable's value (any JSON); its meaning is the backend config's."""
    return _object(call, body, "a variable").get("value")


def workers(call: str, body: object) -> list[Beat]:
    """The pool's workers (each agent's heartbeat record)."""
    beats = []
    for raw in _list(call, body, "a list of workers"):
        row = _object(call, raw, "a worker")
        interval = row.get("heartbeat_interval_seconds")
        beats.append(
            Beat(
                name=_text(row.get("name")),
                last=parse_api_time(row.get("last_heartbeat_time")),
                interval=float(interval) if isinstance(interval, (int, float)) else None,
            )
        )
    return beats
