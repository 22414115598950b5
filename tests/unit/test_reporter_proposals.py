"""agent/api/reporter.py: proposing states. The state body, claims, the server's answers
(ACCEPT, ABORT, REJECT, WAIT), and the outbox when the API is away.

A fake API client (a PrefectClient whose transport is a script) and an outbox of real
files in tmp_path; no process, no server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.api.outbox import STATE, Outbox, Report
from agent.api.reporter import Reported, Reporter, proposal_from, state_body
from agent.core import lifecycle
from agent.core.claim import Claim
from agent.core.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    SpoolError,
    TransientApiError,
)
from agent.core.states import StateType
from tests.unit.reporter_support import (
    CANCELLED,
    CRASHED,
    RUN,
    URL,
    FakeApi,
    all_finished,
    counted_since,
    kept,
)

# Pytest fixtures, found by their names in this module: imported as themselves.
from tests.unit.reporter_support import api as api
from tests.unit.reporter_support import outbox as outbox
from tests.unit.reporter_support import reporter as reporter
from tests.unit.reporter_support import runlogs as runlogs


class BrokenOutbox(Outbox):
    def put(self, report: Report) -> Path:
        raise SpoolError(f"cannot keep a report in {self.dir}: No space left on device")


# -- the state body ---------------------------------------------------------------------------


def test_state_body_has_the_message_and_transition_id_only_when_set() -> None:
    assert state_body(lifecycle.pending("tid-1")) == {
        "type": "PENDING",
        "name": "Pending",
        "state_details": {"transition_id": "tid-1"},
    }
    assert state_body(CRASHED) == {"type": "CRASHED", "name": "Crashed", "message": CRASHED.message}


def test_a_proposal_read_back_from_the_outbox_is_the_one_kept() -> None:
    assert proposal_from(state_body(CANCELLED), force=True) == CANCELLED
    with pytest.raises(ValueError):
        proposal_from({"type": "HIBERNATING"}, force=False)


# -- claims ------------------------------------------------------------------------------


def test_claim_proposes_our_pending_and_interprets_the_answer(
    reporter: Reporter, api: FakeApi
) -> None:
    result = reporter.claim(RUN, "tid-1")
    assert result.claim is Claim.ACCEPTED
    [(_, path, body)] = api.named("set_flow_run_state")
    assert path == f"/flow_runs/{RUN}/set_state"
    assert body == {"state": state_body(lifecycle.pending("tid-1")), "force": False}


def test_claim_abort_is_taken_by_someone_else(reporter: Reporter, api: FakeApi) -> None:
    api.answers = [{"status": "ABORT", "details": {"reason": "run is not SCHEDULED"}}]
    result = reporter.claim(RUN, "tid-1")
    assert result.claim is Claim.TAKEN and result.reason == "run is not SCHEDULED"


def test_a_claim_whose_reply_is_lost_raises_and_is_never_kept(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    """Settled from the spool's write-ahead copy, never from the outbox."""
    api.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "timed out")
    with pytest.raises(TransientApiError):
        reporter.claim(RUN, "tid-1")
    assert outbox.count() == 0


# -- the server's answers ------------------------------------------------------------------


def test_accept_shows_the_proposed_state_and_keeps_nothing(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    before = all_finished()
    reported = reporter.propose(RUN, CANCELLED)
    assert reported == Reported(StateType.CANCELLED, accepted=True)
    [(_, _, body)] = api.named("set_flow_run_state")
    assert body == {"state": state_body(CANCELLED), "force": True}
    assert outbox.count() == 0
    assert counted_since(before) == {}  # the caller counts, once its spec is retired


@pytest.mark.parametrize("status", ["ABORT", "REJECT"])
def test_abort_and_reject_show_the_state_the_run_holds(
    reporter: Reporter, api: FakeApi, outbox: Outbox, status: str
) -> None:
    """The run is elsewhere (the engine got there first): what it holds is what Prefect
    shows, and that is what counts."""
    api.states[RUN] = "COMPLETED"
    api.answers = [{"status": status, "details": {"reason": "run is already COMPLETED"}}]
    reported = reporter.propose(RUN, CRASHED)
    assert reported == Reported(StateType.COMPLETED, accepted=False)
    assert api.states[RUN] == "COMPLETED"
    assert outbox.count() == 0


def test_an_answer_without_a_state_shows_nothing(reporter: Reporter, api: FakeApi) -> None:
    api.answers = [{"status": "ABORT", "state": None}]
    assert reporter.propose(RUN, CRASHED) == Reported(None, accepted=False)


def test_wait_keeps_the_proposal_in_the_outbox_to_try_again(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    api.answers = [{"status": "WAIT", "details": {"delay_seconds": 5}}]
    reported = reporter.propose(RUN, CRASHED, settles=False)
    assert reported == Reported(None, accepted=False, kept=True)
    [report] = kept(outbox)
    assert (report.kind, report.flow_run_id, report.force, report.settles) == (
        STATE,
        RUN,
        False,
        False,
    )
    assert report.state == state_body(CRASHED)
    assert report.source == "worker w1"


# -- the outbox when the API is away -----------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        TransientApiError("set_flow_run_state", f"cannot reach {URL}"),
        TransientApiError("set_flow_run_state", "HTTP 503: Service Unavailable", 503),
        AuthError("set_flow_run_state", "HTTP 401, the API key is wrong", 401),
        ApiError("set_flow_run_state", "HTTP 500: Internal Server Error", 500),
        ApiError("set_flow_run_state", "no answer"),
    ],
    ids=["unreachable", "503", "401", "500", "no-status"],
)
def test_a_proposal_the_api_cannot_take_now_waits_in_the_outbox(
    reporter: Reporter, api: FakeApi, outbox: Outbox, error: ApiError
) -> None:
    api.errors["set_flow_run_state"] = error
    reported = reporter.propose(RUN, CANCELLED)
    assert reported == Reported(None, accepted=False, kept=True)
    [report] = kept(outbox)
    assert (report.kind, report.flow_run_id, report.force, report.settles) == (
        STATE,
        RUN,
        True,
        True,
    )
    assert report.state == state_body(CANCELLED)


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("set_flow_run_state", "HTTP 404: Flow run not found", 404),
        ApiError("set_flow_run_state", "HTTP 422: Unprocessable Entity", 422),
    ],
    ids=["404", "422"],
)
def test_a_proposal_the_server_refuses_is_not_kept(
    reporter: Reporter, api: FakeApi, outbox: Outbox, error: ApiError
) -> None:
    api.errors["set_flow_run_state"] = error
    assert reporter.propose(RUN, CRASHED) == Reported()
    assert outbox.count() == 0


def test_with_the_api_known_to_be_away_a_proposal_goes_straight_to_the_outbox(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    reported = reporter.propose(RUN, CANCELLED, send=False)
    assert reported == Reported(None, accepted=False, kept=True)
    assert api.calls == []
    assert [r.state for r in kept(outbox)] == [state_body(CANCELLED)]


def test_a_proposal_that_cannot_even_be_kept_is_said_lost(
    api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = Reporter(api, BrokenOutbox(tmp_path), source="poller")
    api.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "timed out")
    with caplog.at_level(logging.ERROR, logger="agent.api.reporter"):
        assert reporter.propose(RUN, CRASHED) == Reported(None, accepted=False, kept=False)
    assert f"CRASHED for flow run {RUN} is lost" in caplog.text
