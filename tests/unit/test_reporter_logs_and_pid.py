"""agent/api/reporter.py: what the reporter tells Prefect besides states: the run log
line a proposal's message makes, and the infrastructure pid, kept in the outbox when the
API cannot take it now.

A fake API client (a PrefectClient whose transport is a script) and an outbox of real
files in tmp_path; no process, no server."""

from __future__ import annotations

import logging

import pytest

from agent.api.outbox import PID, Outbox
from agent.api.reporter import Reporter
from agent.core import lifecycle
from agent.core.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    TransientApiError,
)
from tests.unit.reporter_support import (
    CANCELLED,
    CRASHED,
    RUN,
    URL,
    FakeApi,
    RecordedRunLogs,
    kept,
)

# Pytest fixtures, found by their names in this module: imported as themselves.
from tests.unit.reporter_support import api as api
from tests.unit.reporter_support import outbox as outbox
from tests.unit.reporter_support import reporter as reporter
from tests.unit.reporter_support import runlogs as runlogs

# -- the run log ---------------------------------------------------------------------------


def test_a_proposal_with_a_message_says_it_in_the_runs_log(
    reporter: Reporter, runlogs: RecordedRunLogs
) -> None:
    reporter.propose(RUN, CRASHED)
    reporter.propose(RUN, CANCELLED)
    assert runlogs.lines == [
        (RUN, CRASHED.message, logging.WARNING),
        (RUN, CANCELLED.message, logging.INFO),
    ]


def test_without_cloud_logs_or_a_message_nothing_goes_to_the_runs_log(
    reporter: Reporter, runlogs: RecordedRunLogs
) -> None:
    reporter.propose(RUN, CRASHED, cloud_logs=False)
    reporter.propose(RUN, lifecycle.crashed(""))
    assert runlogs.lines == []
    reporter.run_log(RUN, "Submitted for execution")
    assert runlogs.lines == [(RUN, "Submitted for execution", logging.INFO)]


def test_the_runs_log_line_is_written_even_when_the_api_is_away(
    reporter: Reporter, api: FakeApi, runlogs: RecordedRunLogs
) -> None:
    """Run logs have their own outbox path (agent/api/runlogs.py)."""
    api.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "timed out")
    reporter.propose(RUN, CRASHED)
    assert runlogs.lines == [(RUN, CRASHED.message, logging.WARNING)]


# -- the infrastructure pid ---------------------------------------------------------------


def test_the_infrastructure_pid_is_set(reporter: Reporter, api: FakeApi, outbox: Outbox) -> None:
    reporter.infrastructure_pid(RUN, "host-1:4242")
    assert api.named("update_flow_run") == [
        ("update_flow_run", f"/flow_runs/{RUN}", {"infrastructure_pid": "host-1:4242"})
    ]
    assert outbox.count() == 0


@pytest.mark.parametrize(
    ("error", "is_kept"),
    [
        (TransientApiError("update_flow_run", f"cannot reach {URL}"), True),
        (AuthError("update_flow_run", "HTTP 403", 403), True),
        (NotFoundError("update_flow_run", "HTTP 404", 404), False),
        (ApiError("update_flow_run", "HTTP 422", 422), False),
    ],
    ids=["unreachable", "403", "404", "422"],
)
def test_an_infrastructure_pid_the_api_cannot_take_now_waits_in_the_outbox(
    reporter: Reporter, api: FakeApi, outbox: Outbox, error: ApiError, is_kept: bool
) -> None:
    api.errors["update_flow_run"] = error
    reporter.infrastructure_pid(RUN, "host-1:4242")  # never raises
    reports = kept(outbox)
    if not is_kept:
        assert reports == []
        return
    [report] = reports
    assert (report.kind, report.flow_run_id, report.infrastructure_pid, report.source) == (
        PID,
        RUN,
        "host-1:4242",
        "worker w1",
    )
