"""The run lifecycle: every rule that decides which Prefect state the agent proposes, and
when it leaves a run alone. Pure: the worker and the poller gather the facts, these
functions decide, and the reporter (agent/api/reporter.py) sends. docs/lifecycle.md lists
each rule with its name here.

The rules, by name:
- ``is_final``: COMPLETED, FAILED, CANCELLED and CRASHED are final; nothing else is.
- ``supersedes``: the flow's own final state wins over anything the agent would report;
  the one exception is the engine's Crashed on SIGTERM during a cancellation, which the
  agent's Cancelled replaces. PAUSED (Suspended) is never replaced: a suspended run is
  not a crash.
- ``claimable``: a run is claimed from a SCHEDULED-type state, whatever ran before on this
  host (AwaitingRetry, Resuming, AwaitingConcurrencySlot, Late, Rescheduled): "never
  twice" holds per claim, and each claim's execution is kept apart (runs/<id>/<claim>/).
- ``respool_stranded``: a claimed run with no spec and no process here is spooled again
  while PENDING, and reported Crashed once RUNNING.
- ``before_start``: what to do with a claimed run just before its process starts.
- ``after_exit``: what to propose once its process has ended: the table `AFTER_EXIT`.
  A process that exits while its run is still our PENDING never ran user code (the
  engine proposes RUNNING before any): it is started again, up to
  ``MAX_PENDING_RESTARTS`` times, never reported Crashed for that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.core.states import FlowRun, Outcome, RunState, StateType

FINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED})
# A forced Cancelled replaces what the engine said on its way down (Crashed on SIGTERM),
# never an end the flow reached by itself.
FLOW_ENDS = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED})
MAX_PENDING_RESTARTS = 3


def is_final(state_type: StateType | None) -> bool:
    return state_type in FINAL


def outcome_of(state_type: StateType | None) -> Outcome | None:
    """The finished-runs label of a final state type; None for any other."""
    if state_type is None or state_type not in FINAL:
        return None
    return Outcome(state_type.lower())


def claimable(state: RunState | None) -> bool:
    """Prefect hands out SCHEDULED-type runs only; any of them may be claimed, including
    one this host ran before (a retry, a resume): the new claim is a new execution."""
    return state is not None and state.type is StateType.SCHEDULED


# -- proposals -----------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """A state the agent proposes. Built only here; sent only by the reporter."""

    type: StateType
    name: str
    message: str = ""
    force: bool = False
    transition_id: str | None = None  # our Pending's: proves a claim is ours

    @property
    def outcome(self) -> Outcome | None:
        return outcome_of(self.type)


def pending(transition_id: str) -> Proposal:
    # Always the name "Pending": another name is accepted on top of an existing Pending.
    return Proposal(StateType.PENDING, "Pending", transition_id=transition_id)


def crashed(message: str, transition_id: str | None = None) -> Proposal:
    """``transition_id``: set by the reap duty, so that two agents' reports are one."""
    return Proposal(StateType.CRASHED, "Crashed", message, transition_id=transition_id)


def failed(message: str, force: bool = False) -> Proposal:
    """Forced only for a timeout: it replaces the engine's Crashed on SIGTERM."""
    return Proposal(StateType.FAILED, "Failed", message, force=force)


def cancelled(message: str, force: bool = True) -> Proposal:
    """Forced by default: from Cancelling the server takes nothing else unforced, and on
    SIGTERM the engine forces Crashed itself."""
    return Proposal(StateType.CANCELLED, "Cancelled", message, force=force)


def supersedes(proposal: Proposal, current: StateType | None) -> bool:
    """Whether ``proposal`` should be sent to a run now in ``current`` (None: unknown,
    e.g. deleted or of a type this agent does not know)."""
    if current is None or current is proposal.type:
        return False
    if current in FINAL:
        # Only what the agent itself stopped (a cancellation, a timeout) replaces the
        # engine's Crashed on SIGTERM; an end the flow reached stands.
        return proposal.force and current not in FLOW_ENDS
    # PAUSED (suspended) is resumed by Prefect, never ended by the agent.
    return current is not StateType.PAUSED


def is_our_pending(state: RunState | None, transition_id: str) -> bool:
    """The run's current state is the Pending we proposed (same transition id)."""
    return (
        state is not None
        and state.type is StateType.PENDING
        and state.transition_id == transition_id
    )


def respool_stranded(kind: StateType | None) -> bool:
    """A run this host claimed, with no spec and no live process here (a lost spool):
    PENDING never ran user code (the engine proposes RUNNING before any), so it is
    spooled again; RUNNING may have run in part, and is reported Crashed instead."""
    return kind is StateType.PENDING


# -- before the process starts -----------------------------------------------------------


class Start(enum.Enum):
    START = "start"
    PROPOSE = "propose"  # do not start; propose `proposal`
    LEAVE = "leave"  # do not start; Prefect's state stands


@dataclass(frozen=True)
class StartDecision:
    action: Start
    why: str = ""
    proposal: Proposal | None = None
    outcome: Outcome | None = None  # what Prefect shows, when final


def before_start(
    run: FlowRun | None,
    claim: str,
    deployment_gone: bool,
    who: str,
) -> StartDecision:
    """``run`` as read just now (None: deleted), ``claim`` our Pending's transition id,
    ``deployment_gone`` whether its deployment was read and is no more (404), ``who``
    names the agent process for messages."""
    if run is None:
        return StartDecision(Start.LEAVE, "it was deleted in Prefect before it started")
    kind = run.state_type
    if is_final(kind):
        return StartDecision(Start.LEAVE, f"it is {kind} already", outcome=outcome_of(kind))
    if kind is StateType.CANCELLING:
        message = f"Cancelled by {who} before it started"
        return StartDecision(Start.PROPOSE, message, cancelled(message))
    if not is_our_pending(run.state, claim):
        return StartDecision(
            Start.LEAVE, f"it is {kind or 'in an unknown state'}, no longer our Pending"
        )
    if deployment_gone:
        # Prefect deletes a deployment's scheduled runs with it, but not one already
        # Pending: its engine could not load the flow. Say so instead of starting it.
        message = f"Deployment {run.deployment_id} was deleted; flow run cancelled, not run."
        return StartDecision(Start.PROPOSE, message, cancelled(message, force=False))
    return StartDecision(Start.START)


# -- after the process exits -------------------------------------------------------------


class Cancel(enum.Enum):
    """How far a cancellation got while the process ran."""

    NONE = "none"
    ASKED = "asked"  # Prefect shows Cancelling, or the poller asked; no signal sent yet
    SIGNALLED = "signalled"  # the worker sent SIGTERM (and maybe SIGKILL)


class After(enum.Enum):
    KEEP = "keep"  # report nothing: Prefect's state stands
    PROPOSE = "propose"
    RESTART = "restart"  # never ran user code: start the process again
    WAIT = "wait"  # the state cannot be read: decide once the API answers


@dataclass(frozen=True)
class AfterExit:
    action: After
    why: str
    proposal: Proposal | None = None
    outcome: Outcome | None = None  # KEEP of a final state: what Prefect shows


# The table `after_exit` implements, row by row (state the server holds -> action):
AFTER_EXIT: tuple[tuple[str, str, str], ...] = (
    # (server holds, cancellation, the agent does)
    ("unknown (API away)", "signalled", "propose Cancelled (kept in the outbox)"),
    ("unknown (API away)", "none/asked", "wait for the API, then decide"),
    ("unknown (API away)", "timed out", "propose Failed (kept in the outbox)"),
    ("COMPLETED, FAILED, CANCELLED", "any", "keep: the flow's own end wins"),
    ("PENDING ours, RUNNING, CRASHED", "timed out", "propose Failed: exceeded timeout_seconds"),
    ("CRASHED", "signalled/asked", "propose Cancelled (forced over the engine's Crashed)"),
    ("CRASHED", "none", "keep"),
    ("CANCELLING", "any", "propose Cancelled"),
    ("PAUSED (Suspended)", "any", "keep: resumed later by Prefect, never a crash"),
    ("SCHEDULED (retry, resume, reschedule)", "any", "keep: it is claimed again later"),
    ("PENDING, ours", "signalled/asked", "propose Cancelled"),
    ("PENDING, ours", "none", "start again (never ran), after the bound: Crashed"),
    ("PENDING, ours", "none, OOM-killed", "propose Crashed: a start past the limit recurs"),
    ("PENDING, another claim", "any", "keep: that claim owns it"),
    ("RUNNING", "signalled/asked", "propose Cancelled"),
    ("RUNNING", "none", "propose Crashed with the exit status"),
    ("a type this agent does not know", "any", "keep"),
)


def after_exit(
    exit_text: str,
    current: RunState | None,
    claim: str,
    cancel: Cancel,
    restarts: int,
    who: str,
    api_away: bool = False,
    stopped_how: str = "SIGTERM",
    timed_out: float | None = None,
    oom: bool = False,
) -> AfterExit:
    """``exit_text`` describes how the process ended ("exited with status code 1"),
    ``current`` the run's state read after the exit, ``restarts`` how often this claim's
    process was started again already, ``who`` names the agent process, ``timed_out``
    the timeout_seconds after which the worker stopped it (None: it did not), ``oom``
    whether the OOM killer ended it."""
    late = timed_out is not None and cancel is Cancel.NONE  # a cancellation wins
    if api_away:
        if cancel is Cancel.SIGNALLED:
            message = f"Cancelled: the flow run's process was stopped by {who} ({stopped_how})"
            return AfterExit(After.PROPOSE, "stopped for a cancellation", cancelled(message))
        if late and timed_out is not None:
            return AfterExit(After.PROPOSE, "timed out", _timeout(timed_out, who, stopped_how))
        return AfterExit(After.WAIT, "its state cannot be read while the API is away")
    kind = current.type if current else None
    stopping = cancel is not Cancel.NONE
    if kind in FLOW_ENDS:
        return AfterExit(After.KEEP, f"it is {kind}: its own end", outcome=outcome_of(kind))
    ours = kind is not StateType.PENDING or is_our_pending(current, claim)
    if late and timed_out is not None and ours and kind in _TIMEABLE:
        return AfterExit(After.PROPOSE, "timed out", _timeout(timed_out, who, stopped_how))
    if kind is StateType.CRASHED and not stopping:
        return AfterExit(After.KEEP, "it is CRASHED already", outcome=Outcome.CRASHED)
    if kind is StateType.PENDING and not is_our_pending(current, claim):
        return AfterExit(After.KEEP, "it is Pending for another claim")
    if kind is StateType.CANCELLING or (stopping and kind in _LIVE_OR_CRASHED):
        if cancel is Cancel.SIGNALLED:
            message = f"Cancelled: the flow run's process was stopped by {who} ({stopped_how})"
        else:
            message = f"Cancelled: the flow run's process {exit_text} while cancelling"
        return AfterExit(After.PROPOSE, "it was being cancelled", cancelled(message))
    if kind is StateType.PAUSED:
        return AfterExit(After.KEEP, "it is suspended (PAUSED): Prefect resumes it")
    if kind is StateType.SCHEDULED:
        name = current.name if current else ""
        return AfterExit(After.KEEP, f"it is Scheduled again ({name}): claimed again later")
    if kind is StateType.PENDING:
        if oom:
            # Killed at its memory limit before Running: starting it again only repeats that.
            message = f"Flow run infrastructure {exit_text} before the flow run reached Running."
            return AfterExit(After.PROPOSE, "OOM-killed before Running", crashed(message))
        if restarts < MAX_PENDING_RESTARTS:
            return AfterExit(
                After.RESTART, f"its process {exit_text} while it was still Pending: never ran"
            )
        message = (
            f"Flow run infrastructure {exit_text} {restarts + 1} times before the flow "
            "run reached Running."
        )
        return AfterExit(After.PROPOSE, "it never reached Running", crashed(message))
    if kind is StateType.RUNNING:
        message = f"Flow run infrastructure {exit_text} without reporting a final state."
        return AfterExit(After.PROPOSE, "its process ended while Running", crashed(message))
    return AfterExit(After.KEEP, f"it is in a state this agent does not know ({kind})")


def _timeout(seconds: float, who: str, stopped_how: str) -> Proposal:
    shown = int(seconds) if float(seconds).is_integer() else seconds
    message = (
        f"Flow run exceeded timeout_seconds={shown}: its processes were stopped by {who} "
        f"({stopped_how})"
    )
    return failed(message, force=True)


_LIVE_OR_CRASHED = frozenset(
    {StateType.PENDING, StateType.RUNNING, StateType.CRASHED, StateType.CANCELLING}
)
_TIMEABLE = _LIVE_OR_CRASHED - {StateType.CANCELLING}
