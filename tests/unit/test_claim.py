"""agent/core/claim.py: reading the server's answer to our Pending proposal."""

from __future__ import annotations

from typing import Any

import pytest

from agent.api import parse
from agent.api.reporter import state_body
from agent.core import lifecycle
from agent.core.claim import Claim, ClaimResult, interpret
from agent.core.errors import ApiShapeError

TRANSITION = "tid-ours"


def pending_state(transition_id: str) -> dict[str, Any]:
    return {"type": "PENDING", "name": "Pending", "state_details": {"transition_id": transition_id}}


def read(answer: dict[str, Any], transition_id: str = TRANSITION) -> ClaimResult:
    """The server's raw answer, through the API boundary, then interpreted."""
    return interpret(parse.state_answer("set_flow_run_state", answer), transition_id)


def test_accept_is_accepted() -> None:
    answer = {"status": "ACCEPT", "state": pending_state(TRANSITION)}
    assert read(answer).claim is Claim.ACCEPTED


def test_abort_is_taken() -> None:
    answer = {"status": "ABORT", "details": {"reason": "run is not SCHEDULED"}}
    result = read(answer)
    assert result.claim is Claim.TAKEN
    assert result.reason == "run is not SCHEDULED"


def test_abort_without_reason_still_explains() -> None:
    assert read({"status": "ABORT"}).reason


def test_reject_to_awaiting_concurrency_slot_is_concurrency_limit() -> None:
    answer = {
        "status": "REJECT",
        "state": {"type": "SCHEDULED", "name": "AwaitingConcurrencySlot"},
        "details": {"reason": "deployment concurrency limit reached"},
    }
    result = read(answer)
    assert result.claim is Claim.CONCURRENCY_LIMIT
    assert result.reason == "deployment concurrency limit reached"


def test_reject_with_our_own_pending_is_accepted_lost_reply() -> None:
    answer = {"status": "REJECT", "state": pending_state(TRANSITION)}
    assert read(answer).claim is Claim.ACCEPTED


def test_reject_with_someone_elses_pending_is_rejected() -> None:
    answer = {"status": "REJECT", "state": pending_state("tid-theirs")}
    result = read(answer)
    assert result.claim is Claim.REJECTED
    assert "Pending" in result.reason


def test_reject_pending_without_transition_id_is_rejected() -> None:
    answer = {"status": "REJECT", "state": {"type": "PENDING", "name": "Pending"}}
    assert read(answer).claim is Claim.REJECTED


def test_reject_to_other_state_is_rejected_naming_it() -> None:
    answer = {"status": "REJECT", "state": {"type": "CANCELLED", "name": "Cancelled"}}
    result = read(answer)
    assert result.claim is Claim.REJECTED
    assert "Cancelled" in result.reason


def test_wait_takes_delay_from_details() -> None:
    answer = {"status": "WAIT", "details": {"delay_seconds": 12.5, "reason": "slow down"}}
    result = read(answer)
    assert result.claim is Claim.WAIT
    assert result.delay == 12.5
    assert result.reason == "slow down"


def test_wait_without_delay_is_zero_delay() -> None:
    result = read({"status": "WAIT"})
    assert result.claim is Claim.WAIT
    assert result.delay == 0.0


def test_unknown_status_is_an_api_shape_error_naming_it() -> None:
    with pytest.raises(ApiShapeError, match="MAYBE"):
        read({"status": "MAYBE"})


def test_empty_answer_is_an_api_shape_error() -> None:
    with pytest.raises(ApiShapeError, match="unknown answer status"):
        read({})


def test_pending_proposal_is_named_pending_with_transition_id() -> None:
    assert state_body(lifecycle.pending("tid-1")) == pending_state("tid-1")
