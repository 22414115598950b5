"""Claiming a flow run (Scheduled -> Pending): reading the server's answer. Pure.

See prefect3-protocol.md, step 5; the Pending itself is `lifecycle.pending`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.core.lifecycle import is_our_pending
from agent.core.states import Answer, StateAnswer


class Claim(enum.Enum):
    ACCEPTED = "accepted"  # the run is ours
    TAKEN = "taken"  # ABORT: another agent has it
    CONCURRENCY_LIMIT = "concurrency_limit"  # REJECT to AwaitingConcurrencySlot
    REJECTED = "other"  # REJECT to some other state (e.g. CANCEL_NEW's Cancelled)
    WAIT = "wait"  # try again after delay


# Label values of agent_claim_conflicts_total: every claim that did not take the run.
CONFLICT_REASONS = (Claim.TAKEN.value, Claim.CONCURRENCY_LIMIT.value, Claim.REJECTED.value)


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    reason: str = ""
    delay: float = 0.0


def interpret(answer: StateAnswer, transition_id: str) -> ClaimResult:
    state = answer.state
    if answer.status is Answer.ACCEPT:
        return ClaimResult(Claim.ACCEPTED)
    if answer.status is Answer.REJECT:
        # A retry of a claim whose reply was lost comes back REJECT with our own Pending.
        if is_our_pending(state, transition_id):
            return ClaimResult(Claim.ACCEPTED, "our earlier claim had succeeded")
        name = (state.name or state.type or "?") if state else "?"
        if name == "AwaitingConcurrencySlot":
            return ClaimResult(Claim.CONCURRENCY_LIMIT, answer.reason or name)
        return ClaimResult(Claim.REJECTED, answer.reason or f"server chose state {name}")
    if answer.status is Answer.WAIT:
        return ClaimResult(Claim.WAIT, answer.reason, answer.delay)
    return ClaimResult(Claim.TAKEN, answer.reason or "claimed by another agent")


# The labels a claim puts on its run: which agent, pool and host hold it. The stranded
# duty finds this host's own runs by them, the reap duty another host's.
WORKER_LABEL = "prefect.worker.name"
POOL_LABEL = "prefect.work-pool.name"
HOST_LABEL = "local-agent.host"
