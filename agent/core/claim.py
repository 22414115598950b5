"""Claiming a flow run (Scheduled -> Pending): the request and the reading of the answer.

Pure functions: the poller does the I/O. See prefect3-protocol.md, step 5.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Claim(enum.Enum):
    ACCEPTED = "accepted"  # the run is ours
    TAKEN = "taken"  # ABORT: another agent has it
    CONCURRENCY_LIMIT = "concurrency_limit"  # REJECT to AwaitingConcurrencySlot
    REJECTED = "other"  # REJECT to some other state
    WAIT = "wait"  # try again after delay


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    reason: str = ""
    delay: float = 0.0


def pending_state(transition_id: str) -> dict[str, Any]:
    # Always the name "Pending": another name is accepted on top of an existing Pending.
    return {
        "type": "PENDING",
        "name": "Pending",
        "state_details": {"transition_id": transition_id},
    }


def is_our_pending(state: dict[str, Any] | None, transition_id: str) -> bool:
    """The run's current state is the Pending we proposed (same transition id)."""
    if not state or state.get("type") != "PENDING":
        return False
    return (state.get("state_details") or {}).get("transition_id") == transition_id


def interpret(answer: dict[str, Any], transition_id: str) -> ClaimResult:
    status = answer.get("status")
    details = answer.get("details") or {}
    reason = str(details.get("reason") or "")
    state = answer.get("state") or {}
    if status == "ACCEPT":
        return ClaimResult(Claim.ACCEPTED)
    if status == "REJECT":
        # A retry of a claim whose reply was lost comes back REJECT with our own Pending.
        if is_our_pending(state, transition_id):
            return ClaimResult(Claim.ACCEPTED, "our earlier claim had succeeded")
        name = state.get("name") or state.get("type") or "?"
        if name == "AwaitingConcurrencySlot":
            return ClaimResult(Claim.CONCURRENCY_LIMIT, reason or name)
        return ClaimResult(Claim.REJECTED, reason or f"server chose state {name}")
    if status == "WAIT":
        return ClaimResult(Claim.WAIT, reason, float(details.get("delay_seconds") or 0.0))
    if status == "ABORT":
        return ClaimResult(Claim.TAKEN, reason or "claimed by another agent")
    return ClaimResult(Claim.REJECTED, f"unexpected answer status {status!r}")
