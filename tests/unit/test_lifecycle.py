"""agent/core/lifecycle.py: every named rule, and one test per row of `AFTER_EXIT`.

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
    Start,
)
from agent.core.states import FlowRun, Outcome, RunState, StateType

OURS = "tid-ours"
THEIRS = "tid-theirs"
WHO = "agent worker w1"
DEPLOYMENT = "d0000000-0000-4000-8000-000000000001"
EXIT_1 = "exited with status code 1"

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED)
NOT_FINAL = (
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
)
FLOW_ENDS = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED)
STOPPING = (Cancel.ASKED, Cancel.SIGNALLED)
SCHEDULED_NAMES = (
    "Scheduled",
    "AwaitingRetry",
    "Resuming",
    "AwaitingConcurrencySlot",
    "Late",
    "Rescheduled",
)


def state(kind: StateType | None, name: str = "", transition_id: str | None = None) -> RunState:
    return RunState(
        kind, name or (kind.title() if kind else "Mystery"), transition_id=transition_id
    )


def run(
    kind: StateType | None = StateType.PENDING,
    transition_id: str | None = OURS,
    deployment_id: str | None = DEPLOYMENT,
) -> FlowRun:
    return FlowRun("r1", "sleepy-otter", state(kind, transition_id=transition_id), 1, deployment_id)


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
