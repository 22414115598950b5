"""agent/api/reporter.py: delivery of the outbox: reading each run first and skipping
what `lifecycle.supersedes` forbids, counting what the run shows, a WAIT that holds up
only its own report, and stopping while the API is away.

A fake API client (a PrefectClient whose transport is a script) and an outbox of real
files in tmp_path; no process, no server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.api.outbox import LOGS, PID, STATE, Outbox, Report, logs_report
from agent.api.reporter import Reporter, proposal_from, state_body
from agent.core import lifecycle
from agent.core.errors import TransientApiError
from agent.core.states import Outcome, StateType
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

# -- delivering the outbox ------------------------------------------------------------------


def keep(outbox: Outbox, proposal: lifecycle.Proposal, settles: bool = True) -> Path:
    return outbox.put(
        Report(
            STATE,
            RUN,
            state=state_body(proposal),
            force=proposal.force,
            settles=settles,
            source="worker w1",
        )
    )


@pytest.mark.parametrize(
    ("current", "proposal"),
    [
        ("COMPLETED", CRASHED),  # the flow's own end wins
        ("FAILED", CANCELLED),
        ("CANCELLED", CANCELLED),  # has it already
        ("CRASHED", CRASHED),
        ("PAUSED", CRASHED),  # suspended: never a crash
        ("PAUSED", CANCELLED),
    ],
)
def test_delivery_reads_the_run_and_skips_what_supersedes_forbids(
    reporter: Reporter, api: FakeApi, outbox: Outbox, current: str, proposal: lifecycle.Proposal
) -> None:
    assert not lifecycle.supersedes(proposal, StateType(current))
    api.states[RUN] = current
    path = keep(outbox, proposal)
    before = all_finished()
    assert reporter.deliver() == 1
    assert api.named("set_flow_run_state") == []
    assert [c[0] for c in api.calls] == ["read_flow_run"]
    assert not path.exists()  # done with
    assert api.states[RUN] == current
    # Counted as what Prefect shows (a suspended run is not finished).
    outcome = lifecycle.outcome_of(StateType(current))
    assert counted_since(before) == ({outcome: 1} if outcome else {})


@pytest.mark.parametrize(
    ("current", "proposal"),
    [
        ("RUNNING", CRASHED),
        ("PENDING", CRASHED),
        ("CANCELLING", CANCELLED),
        ("CRASHED", CANCELLED),  # forced over the engine's Crashed on SIGTERM
        ("SCHEDULED", lifecycle.cancelled("Deployment d was deleted", force=False)),
    ],
)
def test_delivery_sends_what_supersedes_allows_and_counts_it(
    reporter: Reporter, api: FakeApi, outbox: Outbox, current: str, proposal: lifecycle.Proposal
) -> None:
    api.states[RUN] = current
    keep(outbox, proposal)
    before = all_finished()
    assert reporter.deliver() == 1
    [(_, _, body)] = api.named("set_flow_run_state")
    assert body == {"state": state_body(proposal), "force": proposal.force}
    assert api.states[RUN] == proposal.type.value
    assert counted_since(before) == {proposal.outcome: 1}


def test_delivery_of_a_report_that_does_not_settle_its_run_counts_nothing(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    """E.g. the poller's Cancelled for a run whose deployment is gone: no spec of it was
    ever retired here, so it is no run this host finished."""
    api.states[RUN] = "SCHEDULED"
    keep(outbox, lifecycle.cancelled("gone", force=False), settles=False)
    api.states["other"] = "COMPLETED"
    outbox.put(Report(STATE, "other", state=state_body(CRASHED), settles=False))
    before = all_finished()
    assert reporter.deliver() == 2
    assert counted_since(before) == {}


def test_delivery_counts_what_the_run_shows_when_the_server_aborts(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    """Read Running, then the engine's Completed landed first: ABORT; Completed counts."""
    keep(outbox, CRASHED)
    api.answers = [{"status": "ABORT", "state": {"type": "COMPLETED"}}]
    before = all_finished()
    assert reporter.deliver() == 1
    assert outbox.count() == 0
    assert counted_since(before) == {Outcome.COMPLETED: 1}


def test_a_wait_during_delivery_keeps_that_report_and_the_rest_go_on(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    """The server asks this one run's report to wait: it is kept and tried again at the
    next delivery; it holds up no other report (and so no claim after them)."""
    path = keep(outbox, CRASHED)
    later = outbox.put(Report(PID, RUN, infrastructure_pid="h:1"))
    api.answers = [{"status": "WAIT", "details": {"delay_seconds": 2}}]
    before = all_finished()
    assert reporter.deliver() == 1
    assert path.exists() and not later.exists()
    assert len(api.named("update_flow_run")) == 1
    assert counted_since(before) == {}
    assert reporter.deliver() == 1  # the next try goes through
    assert not path.exists()
    assert counted_since(before) == {Outcome.CRASHED: 1}


def test_delivery_stops_while_the_api_is_away_and_goes_on_when_it_is_back(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    first = keep(outbox, CRASHED)
    second = outbox.put(logs_report([{"message": "x"}], "worker w1"))
    api.errors["read_flow_run"] = TransientApiError("read_flow_run", f"cannot reach {URL}")
    with pytest.raises(TransientApiError):
        reporter.deliver()
    assert first.exists() and second.exists()
    assert api.named("create_logs") == []
    del api.errors["read_flow_run"]
    assert reporter.deliver() == 2
    assert [c[0] for c in api.calls][-3:] == ["read_flow_run", "set_flow_run_state", "create_logs"]


def test_a_state_of_a_type_this_agent_does_not_know_is_dropped(
    reporter: Reporter, api: FakeApi, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    outbox.put(Report(STATE, RUN, state={"type": "HIBERNATING", "name": "Zzz"}))
    with caplog.at_level(logging.INFO, logger="agent.api.reporter"):
        assert reporter.deliver() == 1
    assert api.calls == []
    assert "dropped, unknown state type 'HIBERNATING'" in caplog.text


def test_delivery_sends_pid_and_log_reports_without_reading_the_run(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    outbox.put(Report(PID, RUN, infrastructure_pid="h:7"))
    outbox.put(Report(LOGS, entries=[{"message": "x"}]))
    assert reporter.deliver() == 2
    assert [c[0] for c in api.calls] == ["update_flow_run", "create_logs"]


def test_a_kept_proposal_keeps_its_transition_id_when_read_back_and_delivered(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    """The reap duty's Crashed carries a transition id so that two reapers of one run
    propose the same transition (Prefect rejects the second as a duplicate): kept in the
    outbox while the API is down, it must come back and go out with that id."""
    proposal = lifecycle.Proposal(
        StateType.CRASHED, "Crashed", "host h1 lost", transition_id="tid-reap-r1-s1"
    )
    api.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "timed out")
    assert reporter.propose(RUN, proposal, settles=False, cloud_logs=False).kept
    [report] = kept(outbox)
    assert report.state is not None
    assert report.state["state_details"] == {"transition_id": "tid-reap-r1-s1"}
    assert proposal_from(report.state, report.force) == proposal
    del api.errors["set_flow_run_state"]
    assert reporter.deliver() == 1
    [_, (_, _, body)] = api.named("set_flow_run_state")
    assert body["state"]["state_details"] == {"transition_id": "tid-reap-r1-s1"}
