"""Shared by the lifecycle unit tests (test_lifecycle_states, test_lifecycle_claim,
test_lifecycle_after_exit): our claim's transition id and another claim's, the agent's
name, the state types grouped as the rules group them, and a run's state from plain data."""

from __future__ import annotations

from agent.core.states import RunState, StateType

OURS = "tid-ours"
THEIRS = "tid-theirs"
WHO = "agent worker w1"

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED)
NOT_FINAL = (
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
)
FLOW_ENDS = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED)


def state(kind: StateType | None, name: str = "", transition_id: str | None = None) -> RunState:
    return RunState(
        kind, name or (kind.title() if kind else "Mystery"), transition_id=transition_id
    )
