"""agent/core/claim.py: reading the server's answer to our Pending proposal."""

from __future__ import annotations

from typing import Any

from agent.core.claim import Claim, interpret, pending_state

TRANSITION = "tid-ours"


def test_accept_is_accepted() -> None:
    answer = {"status": "ACCEPT", "state": pending_state(TRANSITION)}
    assert interpret(answer, TRANSITION).claim is Claim.ACCEPTED


def test_abort_is_taken() -> None:
    answer = {"status": "ABORT", "details": {"reason": "run is not SCHEDULED"}}
    result = interpret(answer, TRANSITION)
    assert result.claim is Claim.TAKEN
    assert result.reason == "run is not SCHEDULED"


def test_abort_without_reason_still_explains() -> None:
    assert interpret({"status": "ABORT"}, TRANSITION).reason


def test_reject_to_awaiting_concurrency_slot_is_concurrency_limit() -> None:
    answer = {
        "status": "REJECT",
        "state": {"type": "SCHEDULED", "name": "AwaitingConcurrencySlot"},
        "details": {"reason": "deployment concurrency limit reached"},
    }
    result = interpret(answer, TRANSITION)
    assert result.claim is Claim.CONCURRENCY_LIMIT
    assert result.reason == "deployment concurrency limit reached"


def test_reject_with_our_own_pending_is_accepted_lost_reply() -> None:
    answer = {"status": "REJECT", "state": pending_state(TRANSITION)}
    assert interpret(answer, TRANSITION).claim is Claim.ACCEPTED


def test_reject_with_someone_elses_pending_is_rejected() -> None:
    answer = {"status": "REJECT", "state": pending_state("tid-theirs")}
    result = interpret(answer, TRANSITION)
    assert result.claim is Claim.REJECTED
    assert "Pending" in result.reason


def test_reject_pending_without_transition_id_is_rejected() -> None:
    answer = {"status": "REJECT", "state": {"type": "PENDING", "name": "Pending"}}
    assert interpret(answer, TRANSITION).claim is Claim.REJECTED


def test_reject_to_other_state_is_rejected_naming_it() -> None:
    answer = {"status": "REJECT", "state": {"type": "CANCELLED", "name": "Cancelled"}}
    result = interpret(answer, TRANSITION)
    assert result.claim is Claim.REJECTED
    assert "Cancelled" in result.reason


def test_wait_takes_delay_from_details() -> None:
    answer = {"status": "WAIT", "details": {"delay_seconds": 12.5, "reason": "slow down"}}
    result = interpret(answer, TRANSITION)
    assert result.claim is Claim.WAIT
    assert result.delay == 12.5
    assert result.reason == "slow down"


def test_wait_without_delay_is_zero_delay() -> None:
    result = interpret({"status": "WAIT"}, TRANSITION)
    assert result.claim is Claim.WAIT
    assert result.delay == 0.0


def test_unknown_status_is_rejected_naming_it() -> None:
    result = interpret({"status": "MAYBE"}, TRANSITION)
    assert result.claim is Claim.REJECTED
    assert "MAYBE" in result.reason


def test_empty_answer_is_rejected() -> None:
    answer: dict[str, Any] = {}
    assert interpret(answer, TRANSITION).claim is Claim.REJECTED


def test_pending_state_is_named_pending_with_transition_id() -> None:
    assert pending_state("tid-1") == {
        "type": "PENDING",
        "name": "Pending",
        "state_details": {"transition_id": "tid-1"},
    }
