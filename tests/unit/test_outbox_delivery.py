"""The delivery of the reports kept in agent/api/outbox.py (`Reporter.deliver`,
agent/api/reporter.py), once, to a fake API client that keeps each flow run's state and
records every call: state reports sent only over what they may replace, pid and log
reports, and the counts of what was kept and delivered."""

from __future__ import annotations

from typing import Any

import pytest

from agent.api.outbox import LOGS, PID, STATE, Outbox, Report, logs_report
from tests.unit.outbox_support import (
    CANCELLED,
    CRASHED,
    ENTRIES,
    FakeApi,
    api,
    deliver,
    delivered,
    kept,
    outbox,
    run_id,
)

__all__ = ["api", "outbox"]  # the fixtures, imported for pytest to find

# -- delivering state reports once ------------------------------------------------------------


def test_a_state_report_for_a_running_run_is_sent_and_removed(outbox: Outbox, api: FakeApi) -> None:
    rid = run_id()
    api.states[rid] = "RUNNING"
    path = outbox.put(Report(STATE, rid, state=CRASHED, force=False, source="worker w1"))
    assert deliver(outbox, api) == 1
    assert api.calls == [
        ("read_flow_run", "GET", f"/flow_runs/{rid}", None),
        (
            "set_flow_run_state",
            "POST",
            f"/flow_runs/{rid}/set_state",
            {"state": CRASHED, "force": False},
        ),
    ]
    assert not path.exists()
    assert outbox.count() == 0
    assert api.states[rid] == "CRASHED"


def test_the_same_report_again_is_not_sent_a_second_time(outbox: Outbox, api: FakeApi) -> None:
    """A report the server took just before a crash, whose file was not yet deleted."""
    rid = run_id()
    report = Report(STATE, rid, state=CRASHED, force=False, source="worker w1")
    outbox.put(report)
    assert deliver(outbox, api) == 1
    again = outbox.put(report)
    assert deliver(outbox, api) == 1  # done with: looked at and removed
    assert not again.exists()
    assert len(api.named("set_flow_run_state")) == 1
    assert len(api.named("read_flow_run")) == 2


@pytest.mark.parametrize(
    ("current", "state", "force", "sent"),
    [
        ("RUNNING", CRASHED, False, True),
        ("PENDING", CRASHED, False, True),
        ("CRASHED", CRASHED, False, False),  # has it already
        ("CANCELLING", CANCELLED, True, True),
        ("CRASHED", CANCELLED, True, True),  # the engine's Crashed on SIGTERM is replaced
        ("COMPLETED", CANCELLED, True, False),  # the flow's own outcome is kept
        ("FAILED", CANCELLED, True, False),
        ("CANCELLED", CANCELLED, True, False),
        ("COMPLETED", CRASHED, False, False),  # a late Crashed never replaces Completed
        ("CANCELLED", CRASHED, False, False),
        ("FAILED", CRASHED, False, False),
        ("PAUSED", CRASHED, False, False),  # a suspended run is never a crash
        ("PAUSED", CANCELLED, True, False),  # Prefect resumes it; the agent never ends it
    ],
)
def test_a_state_report_is_sent_only_over_what_it_may_replace(
    outbox: Outbox, api: FakeApi, current: str, state: dict[str, Any], force: bool, sent: bool
) -> None:
    rid = run_id()
    api.states[rid] = current
    path = outbox.put(Report(STATE, rid, state=state, force=force, source="worker w1"))
    before = delivered(STATE)
    assert deliver(outbox, api) == 1
    proposed = [c[3] for c in api.named("set_flow_run_state")]
    assert proposed == ([{"state": state, "force": force}] if sent else [])
    assert api.states[rid] == (state["type"] if sent else current)
    assert not path.exists()
    assert delivered(STATE) == before + 1


def test_a_refused_answer_still_removes_the_report(outbox: Outbox, api: FakeApi) -> None:
    class Aborting(FakeApi):
        def request(
            self,
            call: str,
            method: str,
            path: str,
            json: Any = None,
            deadline: float | None = None,
        ) -> Any:
            if call == "set_flow_run_state":
                self.calls.append((call, method, path, json))
                return {"status": "ABORT", "state": {"type": "COMPLETED"}}
            return super().request(call, method, path, json, deadline)

    aborting = Aborting()
    path = outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    assert deliver(outbox, aborting) == 1
    assert len(aborting.named("set_flow_run_state")) == 1
    assert not path.exists()


# -- pid and log reports ------------------------------------------------------------------------


def test_a_pid_report_sets_the_infrastructure_pid(outbox: Outbox, api: FakeApi) -> None:
    rid = run_id()
    outbox.put(Report(PID, rid, infrastructure_pid="host-1:4242", source="worker w1"))
    assert deliver(outbox, api) == 1
    assert api.calls == [
        ("update_flow_run", "PATCH", f"/flow_runs/{rid}", {"infrastructure_pid": "host-1:4242"})
    ]  # no read first: a pid is set again harmlessly


def test_a_logs_report_posts_its_entries(outbox: Outbox, api: FakeApi) -> None:
    outbox.put(logs_report(ENTRIES, "worker w1"))
    assert deliver(outbox, api) == 1
    assert api.calls == [("create_logs", "POST", "/logs/", ENTRIES)]


# -- metrics ------------------------------------------------------------------------------------


def test_kept_and_delivered_are_counted_by_kind(outbox: Outbox, api: FakeApi) -> None:
    before = {kind: (kept(kind), delivered(kind)) for kind in (STATE, PID, LOGS)}
    outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    outbox.put(Report(STATE, run_id(), state=CANCELLED, force=True, source="poller"))
    outbox.put(Report(PID, run_id(), infrastructure_pid="h:1", source="worker w1"))
    outbox.put(logs_report(ENTRIES, "worker w1"))
    assert {k: kept(k) - before[k][0] for k in (STATE, PID, LOGS)} == {STATE: 2, PID: 1, LOGS: 1}
    assert {k: delivered(k) - before[k][1] for k in (STATE, PID, LOGS)} == {
        STATE: 0,
        PID: 0,
        LOGS: 0,
    }
    assert deliver(outbox, api) == 4
    assert {k: delivered(k) - before[k][1] for k in (STATE, PID, LOGS)} == {
        STATE: 2,
        PID: 1,
        LOGS: 1,
    }
    assert {k: kept(k) - before[k][0] for k in (STATE, PID, LOGS)} == {STATE: 2, PID: 1, LOGS: 1}
