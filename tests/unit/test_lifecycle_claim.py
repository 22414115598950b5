"""agent/core/lifecycle.py: from a claim to a start: which runs are claimed, which
Pending is ours, which stranded runs are spooled again, and whether a claimed run starts
(`claimable`, `is_our_pending`, `respool_stranded`, `before_start`).

Plain data in, a decision out: no API, no spool, no process."""

from __future__ import annotations

import pytest

from agent.core import lifecycle
from agent.core.lifecycle import Start
from agent.core.states import FlowRun, StateType
from tests.unit.lifecycle_support import FINAL, NOT_FINAL, OURS, THEIRS, WHO, state

DEPLOYMENT = "d0000000-0000-4000-8000-000000000001"

SCHEDULED_NAMES = (
    "Scheduled",
    "AwaitingRetry",
    "Resuming",
    "AwaitingConcurrencySlot",
    "Late",
    "Rescheduled",
)


def run(
    kind: StateType | None = StateType.PENDING,
    transition_id: str | None = OURS,
    deployment_id: str | None = DEPLOYMENT,
) -> FlowRun:
    return FlowRun("r1", "sleepy-otter", state(kind, transition_id=transition_id), 1, deployment_id)


# -- claimable ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULED_NAMES)
def test_claimable_every_scheduled_type_state_even_one_this_host_ran_before(name: str) -> None:
    assert lifecycle.claimable(state(StateType.SCHEDULED, name))


@pytest.mark.parametrize("kind", [*FINAL, *NOT_FINAL[1:], None])
def test_claimable_no_other_state(kind: StateType | None) -> None:
    assert not lifecycle.claimable(state(kind))


def test_claimable_not_a_run_without_a_state() -> None:
    assert not lifecycle.claimable(None)


# -- is_our_pending ----------------------------------------------------------------------


def test_is_our_pending_only_the_pending_with_our_transition_id() -> None:
    assert lifecycle.is_our_pending(state(StateType.PENDING, transition_id=OURS), OURS)
    assert not lifecycle.is_our_pending(state(StateType.PENDING, transition_id=THEIRS), OURS)
    assert not lifecycle.is_our_pending(state(StateType.PENDING), OURS)
    assert not lifecycle.is_our_pending(state(StateType.RUNNING, transition_id=OURS), OURS)
    assert not lifecycle.is_our_pending(None, OURS)


# -- respool_stranded ------------------------------------------------------------------------


def test_respool_stranded_a_pending_run_is_always_spooled_again() -> None:
    assert lifecycle.respool_stranded(StateType.PENDING)


@pytest.mark.parametrize("kind", [StateType.RUNNING, StateType.SCHEDULED, *FINAL, None])
def test_respool_stranded_a_running_run_is_not_it_may_have_run_in_part(
    kind: StateType | None,
) -> None:
    assert not lifecycle.respool_stranded(kind)


# -- before_start -----------------------------------------------------------------------------


def test_before_start_our_pending_starts() -> None:
    decision = lifecycle.before_start(run(), OURS, False, WHO)
    assert decision.action is Start.START and decision.proposal is None


def test_before_start_a_deleted_run_is_left_alone() -> None:
    decision = lifecycle.before_start(None, OURS, False, WHO)
    assert decision.action is Start.LEAVE and decision.proposal is None
    assert "deleted" in decision.why


@pytest.mark.parametrize("gone", [False, True])
@pytest.mark.parametrize("kind", FINAL)
def test_before_start_a_final_run_is_left_with_its_outcome(kind: StateType, gone: bool) -> None:
    decision = lifecycle.before_start(run(kind), OURS, gone, WHO)
    assert decision.action is Start.LEAVE and decision.proposal is None
    assert decision.outcome == lifecycle.outcome_of(kind)


@pytest.mark.parametrize("gone", [False, True])
def test_before_start_a_cancelling_run_is_cancelled_forced_not_started(gone: bool) -> None:
    decision = lifecycle.before_start(run(StateType.CANCELLING), OURS, gone, WHO)
    assert decision.action is Start.PROPOSE
    assert decision.proposal == lifecycle.cancelled(f"Cancelled by {WHO} before it started")
    assert decision.proposal.force


def test_before_start_deployment_gone_is_cancelled_saying_so_not_started() -> None:
    """The engine could not load the flow of a deleted deployment: Cancelled, unforced,
    with a message that says why, instead of a start that ends Crashed."""
    decision = lifecycle.before_start(run(), OURS, True, WHO)
    assert decision.action is Start.PROPOSE and decision.proposal is not None
    assert decision.proposal.type is StateType.CANCELLED
    assert not decision.proposal.force
    assert decision.proposal.message == (
        f"Deployment {DEPLOYMENT} was deleted; flow run cancelled, not run."
    )


def test_before_start_a_pending_of_another_claim_is_left_to_it() -> None:
    decision = lifecycle.before_start(run(transition_id=THEIRS), OURS, False, WHO)
    assert decision.action is Start.LEAVE and decision.proposal is None
    assert "no longer our Pending" in decision.why


@pytest.mark.parametrize("kind", [StateType.SCHEDULED, StateType.RUNNING, StateType.PAUSED, None])
def test_before_start_a_run_no_longer_our_pending_is_left_alone(kind: StateType | None) -> None:
    decision = lifecycle.before_start(run(kind), OURS, False, WHO)
    assert decision.action is Start.LEAVE and decision.proposal is None
    assert decision.outcome is None
