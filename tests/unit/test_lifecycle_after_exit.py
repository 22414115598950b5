"""agent/core/lifecycle.py: what the agent does after a run's process exits
(`after_exit`): one test per row of `AFTER_EXIT`, and a check that every row has its test.

Plain data in, a decision out: no API, no spool, no process."""

from __future__ import annotations

import pytest

from agent.core import lifecycle
from agent.core.lifecycle import (
    AFTER_EXIT,
    MAX_PENDING_RESTARTS,
    After,
    AfterExit,
    Cancel,
)
from agent.core.states import Outcome, RunState, StateType
from tests.unit.lifecycle_support import FLOW_ENDS, OURS, THEIRS, WHO, state

EXIT_1 = "exited with status code 1"

STOPPING = (Cancel.ASKED, Cancel.SIGNALLED)


def after(
    current: RunState | None,
    cancel: Cancel = Cancel.NONE,
    restarts: int = 0,
    api_away: bool = False,
    stopped_how: str = "SIGTERM",
    timed_out: float | None = None,
    oom: bool = False,
) -> AfterExit:
    return lifecycle.after_exit(
        EXIT_1, current, OURS, cancel, restarts, WHO, api_away, stopped_how, timed_out, oom
    )


# -- after_exit: one test per row of AFTER_EXIT ----------------------------------------------


def test_after_exit_api_away_and_signalled_proposes_cancelled_kept_for_the_outbox() -> None:
    decision = after(None, Cancel.SIGNALLED, api_away=True, stopped_how="SIGTERM")
    assert decision.action is After.PROPOSE
    assert decision.proposal == lifecycle.cancelled(
        f"Cancelled: the flow run's process was stopped by {WHO} (SIGTERM)"
    )


@pytest.mark.parametrize("cancel", [Cancel.NONE, Cancel.ASKED])
def test_after_exit_api_away_without_a_signal_waits_for_the_api(cancel: Cancel) -> None:
    # Whatever the last read said: it is not what the server holds now.
    for current in (None, state(StateType.RUNNING)):
        decision = after(current, cancel, api_away=True)
        assert decision.action is After.WAIT and decision.proposal is None


@pytest.mark.parametrize("cancel", list(Cancel))
@pytest.mark.parametrize("kind", FLOW_ENDS)
def test_after_exit_the_flows_own_end_is_kept_whatever_the_cancellation(
    kind: StateType, cancel: Cancel
) -> None:
    decision = after(state(kind), cancel)
    assert decision.action is After.KEEP and decision.proposal is None
    assert decision.outcome == lifecycle.outcome_of(kind)


@pytest.mark.parametrize("cancel", STOPPING)
def test_after_exit_crashed_while_cancelling_is_replaced_by_a_forced_cancelled(
    cancel: Cancel,
) -> None:
    decision = after(state(StateType.CRASHED), cancel, stopped_how="SIGTERM, then SIGKILL")
    assert decision.action is After.PROPOSE and decision.proposal is not None
    assert decision.proposal.type is StateType.CANCELLED and decision.proposal.force
    assert lifecycle.supersedes(decision.proposal, StateType.CRASHED)
    if cancel is Cancel.SIGNALLED:
        assert decision.proposal.message.endswith(f"by {WHO} (SIGTERM, then SIGKILL)")
    else:
        assert decision.proposal.message == (
            f"Cancelled: the flow run's process {EXIT_1} while cancelling"
        )


def test_after_exit_crashed_without_a_cancellation_is_kept() -> None:
    decision = after(state(StateType.CRASHED))
    assert decision.action is After.KEEP and decision.proposal is None
    assert decision.outcome is Outcome.CRASHED


@pytest.mark.parametrize("cancel", list(Cancel))
def test_after_exit_cancelling_proposes_cancelled(cancel: Cancel) -> None:
    decision = after(state(StateType.CANCELLING), cancel)
    assert decision.action is After.PROPOSE and decision.proposal is not None
    assert decision.proposal.type is StateType.CANCELLED and decision.proposal.force


@pytest.mark.parametrize("cancel", list(Cancel))
@pytest.mark.parametrize("code", ["exited with status code 0", EXIT_1])
def test_after_exit_paused_suspended_is_kept_never_a_crash(code: str, cancel: Cancel) -> None:
    current = state(StateType.PAUSED, "Suspended")
    decision = lifecycle.after_exit(code, current, OURS, cancel, 0, WHO)
    assert decision.action is After.KEEP and decision.proposal is None
    assert decision.outcome is None  # not finished: Prefect resumes it


@pytest.mark.parametrize("cancel", list(Cancel))
@pytest.mark.parametrize("name", ["AwaitingRetry", "Resuming", "Rescheduled"])
def test_after_exit_scheduled_again_is_kept_to_be_claimed_again(name: str, cancel: Cancel) -> None:
    decision = after(state(StateType.SCHEDULED, name), cancel)
    assert decision.action is After.KEEP and decision.proposal is None
    assert decision.outcome is None
    assert name in decision.why


@pytest.mark.parametrize("cancel", STOPPING)
def test_after_exit_our_pending_while_cancelling_proposes_cancelled(cancel: Cancel) -> None:
    decision = after(state(StateType.PENDING, transition_id=OURS), cancel)
    assert decision.action is After.PROPOSE and decision.proposal is not None
    assert decision.proposal.type is StateType.CANCELLED and decision.proposal.force


def test_after_exit_our_pending_restarts_never_ran_then_crashed_after_the_bound() -> None:
    """No user code ran (the engine proposes Running before any): start it again, up to
    MAX_PENDING_RESTARTS times; after that, Crashed saying how often it was tried."""
    assert MAX_PENDING_RESTARTS == 3
    ours = state(StateType.PENDING, transition_id=OURS)
    for restarts in range(MAX_PENDING_RESTARTS):
        decision = after(ours, restarts=restarts)
        assert decision.action is After.RESTART and decision.proposal is None
    decision = after(ours, restarts=MAX_PENDING_RESTARTS)
    assert decision.action is After.PROPOSE
    assert decision.proposal == lifecycle.crashed(
        f"Flow run infrastructure {EXIT_1} 4 times before the flow run reached Running."
    )


@pytest.mark.parametrize("cancel", list(Cancel))
def test_after_exit_pending_of_another_claim_is_kept_that_claim_owns_it(cancel: Cancel) -> None:
    for transition_id in (THEIRS, None):
        decision = after(state(StateType.PENDING, transition_id=transition_id), cancel)
        assert decision.action is After.KEEP and decision.proposal is None


@pytest.mark.parametrize("cancel", STOPPING)
def test_after_exit_running_while_cancelling_proposes_cancelled(cancel: Cancel) -> None:
    decision = after(state(StateType.RUNNING), cancel)
    assert decision.action is After.PROPOSE and decision.proposal is not None
    assert decision.proposal.type is StateType.CANCELLED and decision.proposal.force


def test_after_exit_running_without_a_cancellation_proposes_crashed_with_the_exit_status() -> None:
    decision = after(state(StateType.RUNNING), restarts=MAX_PENDING_RESTARTS)
    assert decision.action is After.PROPOSE
    assert decision.proposal == lifecycle.crashed(
        f"Flow run infrastructure {EXIT_1} without reporting a final state."
    )
    assert not decision.proposal.force


@pytest.mark.parametrize("cancel", list(Cancel))
def test_after_exit_a_state_type_this_agent_does_not_know_is_kept(cancel: Cancel) -> None:
    for current in (state(None), None):
        decision = after(current, cancel)
        assert decision.action is After.KEEP and decision.proposal is None


def test_after_exit_api_away_after_a_timeout_proposes_failed_kept_for_the_outbox() -> None:
    decision = after(None, api_away=True, timed_out=3, stopped_how="SIGTERM")
    assert decision.action is After.PROPOSE
    assert decision.proposal == lifecycle.failed(
        f"Flow run exceeded timeout_seconds=3: its processes were stopped by {WHO} (SIGTERM)",
        force=True,
    )


@pytest.mark.parametrize(
    "current",
    [
        state(StateType.PENDING, transition_id=OURS),
        state(StateType.RUNNING),
        state(StateType.CRASHED),  # the engine's Crashed on our SIGTERM
    ],
)
def test_after_exit_a_timed_out_run_is_failed_over_the_engines_crashed(current: RunState) -> None:
    decision = after(current, timed_out=2.5, stopped_how="SIGTERM, then SIGKILL after 2 s")
    assert decision.action is After.PROPOSE and decision.proposal is not None
    assert decision.proposal.type is StateType.FAILED and decision.proposal.force
    assert decision.proposal.message.startswith("Flow run exceeded timeout_seconds=2.5:")
    assert lifecycle.supersedes(decision.proposal, StateType.CRASHED)


@pytest.mark.parametrize("kind", FLOW_ENDS)
def test_after_exit_a_timeout_never_replaces_the_flows_own_end(kind: StateType) -> None:
    decision = after(state(kind), timed_out=3)
    assert decision.action is After.KEEP and decision.proposal is None
    assert not lifecycle.supersedes(lifecycle.failed("late", force=True), kind)


def test_after_exit_a_cancellation_wins_over_a_timeout() -> None:
    decision = after(state(StateType.RUNNING), Cancel.ASKED, timed_out=3)
    assert decision.proposal is not None and decision.proposal.type is StateType.CANCELLED


def test_after_exit_our_pending_oom_killed_is_crashed_not_started_again() -> None:
    decision = after(state(StateType.PENDING, transition_id=OURS), oom=True)
    assert decision.action is After.PROPOSE
    assert decision.proposal == lifecycle.crashed(
        f"Flow run infrastructure {EXIT_1} before the flow run reached Running."
    )


# Each row of the table and the test above that checks it: a row added without a test, or
# a row changed, fails here.
ROWS = {
    ("unknown (API away)", "signalled"): (
        test_after_exit_api_away_and_signalled_proposes_cancelled_kept_for_the_outbox
    ),
    (
        "unknown (API away)",
        "none/asked",
    ): test_after_exit_api_away_without_a_signal_waits_for_the_api,
    ("unknown (API away)", "timed out"): (
        test_after_exit_api_away_after_a_timeout_proposes_failed_kept_for_the_outbox
    ),
    ("COMPLETED, FAILED, CANCELLED", "any"): (
        test_after_exit_the_flows_own_end_is_kept_whatever_the_cancellation
    ),
    ("PENDING ours, RUNNING, CRASHED", "timed out"): (
        test_after_exit_a_timed_out_run_is_failed_over_the_engines_crashed
    ),
    ("CRASHED", "signalled/asked"): (
        test_after_exit_crashed_while_cancelling_is_replaced_by_a_forced_cancelled
    ),
    ("CRASHED", "none"): test_after_exit_crashed_without_a_cancellation_is_kept,
    ("CANCELLING", "any"): test_after_exit_cancelling_proposes_cancelled,
    ("PAUSED (Suspended)", "any"): test_after_exit_paused_suspended_is_kept_never_a_crash,
    ("SCHEDULED (retry, resume, reschedule)", "any"): (
        test_after_exit_scheduled_again_is_kept_to_be_claimed_again
    ),
    ("PENDING, ours", "signalled/asked"): (
        test_after_exit_our_pending_while_cancelling_proposes_cancelled
    ),
    ("PENDING, ours", "none"): (
        test_after_exit_our_pending_restarts_never_ran_then_crashed_after_the_bound
    ),
    ("PENDING, ours", "none, OOM-killed"): (
        test_after_exit_our_pending_oom_killed_is_crashed_not_started_again
    ),
    ("PENDING, another claim", "any"): (
        test_after_exit_pending_of_another_claim_is_kept_that_claim_owns_it
    ),
    ("RUNNING", "signalled/asked"): test_after_exit_running_while_cancelling_proposes_cancelled,
    ("RUNNING", "none"): (
        test_after_exit_running_without_a_cancellation_proposes_crashed_with_the_exit_status
    ),
    ("a type this agent does not know", "any"): (
        test_after_exit_a_state_type_this_agent_does_not_know_is_kept
    ),
}


def test_after_exit_every_row_of_the_table_has_its_test() -> None:
    assert [(holds, cancel) for holds, cancel, _ in AFTER_EXIT] == list(ROWS)
