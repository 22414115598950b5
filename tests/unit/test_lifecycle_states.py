"""agent/core/lifecycle.py: which states are final and what they count as, the proposals
the agent sends, and which of them supersedes the state a run is in (`is_final`,
`outcome_of`, `pending`, `crashed`, `failed`, `cancelled`, `supersedes`).

Plain data in, a decision out: no API, no spool, no process."""

from __future__ import annotations

import pytest

from agent.core import lifecycle
from agent.core.states import Outcome, StateType
from tests.unit.lifecycle_support import FINAL, FLOW_ENDS, NOT_FINAL, OURS

# -- is_final and outcome_of ---------------------------------------------------------------


@pytest.mark.parametrize("kind", FINAL)
def test_is_final_completed_failed_cancelled_and_crashed_are_final(kind: StateType) -> None:
    assert lifecycle.is_final(kind)
    assert lifecycle.outcome_of(kind) == Outcome(kind.value.lower())


@pytest.mark.parametrize("kind", [*NOT_FINAL, None])
def test_is_final_nothing_else_is_final_nor_an_outcome(kind: StateType | None) -> None:
    assert not lifecycle.is_final(kind)
    assert lifecycle.outcome_of(kind) is None


# -- the proposals ---------------------------------------------------------------------------


def test_pending_is_named_pending_and_carries_the_claims_transition_id() -> None:
    proposal = lifecycle.pending(OURS)
    assert (proposal.type, proposal.name, proposal.transition_id) == (
        StateType.PENDING,
        "Pending",
        OURS,
    )
    assert not proposal.force and proposal.outcome is None


def test_crashed_and_failed_are_not_forced_and_count_as_their_outcome() -> None:
    crashed, failed = lifecycle.crashed("boom"), lifecycle.failed("bad spec")
    assert (crashed.type, crashed.name, crashed.message, crashed.force) == (
        StateType.CRASHED,
        "Crashed",
        "boom",
        False,
    )
    assert (failed.type, failed.name, failed.message, failed.force) == (
        StateType.FAILED,
        "Failed",
        "bad spec",
        False,
    )
    assert (crashed.outcome, failed.outcome) == (Outcome.CRASHED, Outcome.FAILED)


def test_cancelled_is_forced_unless_told_otherwise() -> None:
    assert lifecycle.cancelled("stop").force is True
    assert lifecycle.cancelled("gone", force=False).force is False
    assert lifecycle.cancelled("stop").outcome is Outcome.CANCELLED


# -- supersedes -----------------------------------------------------------------------------


@pytest.mark.parametrize("current", FLOW_ENDS)
@pytest.mark.parametrize(
    "proposal",
    [lifecycle.crashed("late"), lifecycle.cancelled("late"), lifecycle.failed("late")],
    ids=["crashed", "forced-cancelled", "failed"],
)
def test_supersedes_the_flows_own_final_state_wins(
    current: StateType, proposal: lifecycle.Proposal
) -> None:
    assert not lifecycle.supersedes(proposal, current)


def test_supersedes_a_forced_cancelled_replaces_the_engines_crashed_on_sigterm() -> None:
    assert lifecycle.supersedes(lifecycle.cancelled("stopped"), StateType.CRASHED)


def test_supersedes_an_unforced_cancelled_or_crashed_never_replaces_a_crashed() -> None:
    assert not lifecycle.supersedes(lifecycle.cancelled("gone", force=False), StateType.CRASHED)
    assert not lifecycle.supersedes(lifecycle.crashed("again"), StateType.CRASHED)


@pytest.mark.parametrize(
    "proposal",
    [lifecycle.crashed("exit 0"), lifecycle.cancelled("stop"), lifecycle.failed("x")],
    ids=["crashed", "forced-cancelled", "failed"],
)
def test_supersedes_paused_is_never_replaced_a_suspended_run_is_not_a_crash(
    proposal: lifecycle.Proposal,
) -> None:
    assert not lifecycle.supersedes(proposal, StateType.PAUSED)


def test_supersedes_nothing_is_sent_to_a_run_of_unknown_state_or_of_that_state_already() -> None:
    assert not lifecycle.supersedes(lifecycle.crashed("x"), None)
    assert not lifecycle.supersedes(lifecycle.cancelled("x"), StateType.CANCELLED)


@pytest.mark.parametrize(
    "current",
    [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING],
)
def test_supersedes_a_live_run_takes_the_agents_report(current: StateType) -> None:
    assert lifecycle.supersedes(lifecycle.crashed("x"), current)
    assert lifecycle.supersedes(lifecycle.cancelled("x"), current)
