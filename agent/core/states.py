"""Prefect's run states and the API's answers, as small typed values.

The API client parses every response the agent reads into these (agent/api/parse.py);
no module past the client reads a raw response dict. Pure data: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class StateType(enum.StrEnum):
    """Prefect 3's state types (``StateType`` in prefect/client/schemas/objects.py)."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"


class Outcome(enum.StrEnum):
    """How a run ended as far as this host is concerned: the label values of
    ``agent_flow_runs_finished_total`` and the note beside a spec in done/."""

    COMPLETED = "completed"
    FAILED = "failed"
    CRASHED = "crashed"
    CANCELLED = "cancelled"


class Answer(enum.StrEnum):
    """The server's answer to a proposed state (``SetStateStatus``)."""

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    ABORT = "ABORT"
    WAIT = "WAIT"


@dataclass(frozen=True)
class RunState:
    """A flow run's state. ``type`` is None for a type this agent does not know (a newer
    server): such a state is never final and never ours."""

    type: StateType | None
    name: str = ""
    message: str = ""
    timestamp: float | None = None  # seconds since the epoch
    transition_id: str | None = None  # state_details.transition_id: who proposed it
    id: str | None = None  # this state's own id: tells one Running from the next

    def is_(self, *types: StateType) -> bool:
        return self.type in types


@dataclass(frozen=True)
class FlowRun:
    id: str
    name: str = ""
    state: RunState | None = None
    run_count: int = 0
    deployment_id: str | None = None
    work_pool_name: str | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)
    job_variables: Mapping[str, Any] = field(default_factory=dict)
    # ISO 8601 as the server wrote it: kept as text for the spec and the delay metric.
    scheduled_start: str | None = None

    @property
    def state_type(self) -> StateType | None:
        return self.state.type if self.state else None


@dataclass(frozen=True)
class StateAnswer:
    """What ``POST /flow_runs/{id}/set_state`` answered."""

    status: Answer
    state: RunState | None = None  # the run's state after the answer
    reason: str = ""
    delay: float = 0.0  # WAIT: seconds to wait before proposing again


@dataclass(frozen=True)
class Deployment:
    id: str
    job_variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkPool:
    name: str
    type: str
    base_job_template: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None  # the events stream filters on prefect.work-pool.<id>
