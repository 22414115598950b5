"""agent/api/reporter.py: `finished` counting what Prefect shows, whatever the agent
proposed, and a kept proposal only once it is delivered.

A fake API client (a PrefectClient whose transport is a script) and an outbox of real
files in tmp_path; no process, no server."""

from __future__ import annotations

import pytest

from agent.api.outbox import Outbox
from agent.api.reporter import Reporter
from agent.core import lifecycle
from agent.core.errors import TransientApiError
from agent.core.states import Outcome, StateType
from tests.unit.reporter_support import (
    CRASHED,
    RUN,
    FakeApi,
    all_finished,
    counted_since,
)

# Pytest fixtures, found by their names in this module: imported as themselves.
from tests.unit.reporter_support import api as api
from tests.unit.reporter_support import outbox as outbox
from tests.unit.reporter_support import reporter as reporter
from tests.unit.reporter_support import runlogs as runlogs

# -- finished: what Prefect shows ------------------------------------------------------------


@pytest.mark.parametrize("kind", [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED])
def test_finished_counts_the_flows_own_end_not_the_crashed_the_agent_proposed(
    reporter: Reporter, api: FakeApi, kind: StateType
) -> None:
    api.states[RUN] = kind.value
    api.answers = [{"status": "ABORT"}]
    before = all_finished()
    reporter.finished(reporter.propose(RUN, CRASHED).shown)
    assert counted_since(before) == {lifecycle.outcome_of(kind): 1}


def test_finished_counts_an_accepted_proposal_as_itself(reporter: Reporter) -> None:
    before = all_finished()
    reporter.finished(reporter.propose(RUN, CRASHED).shown)
    assert counted_since(before) == {Outcome.CRASHED: 1}


@pytest.mark.parametrize(
    "shown", [None, StateType.RUNNING, StateType.PAUSED, StateType.SCHEDULED, StateType.PENDING]
)
def test_finished_counts_nothing_that_is_not_final(
    reporter: Reporter, shown: StateType | None
) -> None:
    before = all_finished()
    reporter.finished(shown)
    assert counted_since(before) == {}


def test_a_kept_proposal_is_counted_when_delivered_not_when_kept(
    reporter: Reporter, api: FakeApi, outbox: Outbox
) -> None:
    api.errors["set_flow_run_state"] = TransientApiError("set_flow_run_state", "timed out")
    before = all_finished()
    reporter.finished(reporter.propose(RUN, CRASHED).shown)
    assert counted_since(before) == {}
    del api.errors["set_flow_run_state"]
    assert reporter.deliver() == 1
    assert counted_since(before) == {Outcome.CRASHED: 1}
