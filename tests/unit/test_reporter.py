"""agent/api/reporter.py: the one proposer of states. The server's answers (ACCEPT, ABORT,
REJECT, WAIT), the outbox when the API is away, `finished` counting what Prefect shows,
the run log, and delivery of the outbox skipping what `lifecycle.supersedes` forbids.

A fake API client (a PrefectClient whose transport is a script) and an outbox of real
files in tmp_path; no process, no server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.outbox import LOGS, PID, STATE, Outbox, Report, logs_report
from agent.api.reporter import Reported, Reporter, proposal_from, state_body
from agent.core import lifecycle
from agent.core.causes import Cause
from agent.core.claim import Claim
from agent.core.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    SpoolError,
    TransientApiError,
)
from agent.core.states import Outcome, StateType
from agent.settings.config import ApiSettings

URL = "http://prefect.invalid/api"
RUN = "3f1c0f9e-0000-4000-8000-000000000001"
CRASHED = lifecycle.crashed("Flow run infrastructure exited with status code 1")
CANCELLED = lifecycle.cancelled("Cancelled by agent worker w1 before it started")


class FakeApi(PrefectClient):
    """The server. ``states`` holds each run's state type (RUNNING unless set); an
    accepted proposal becomes it. ``answers`` scripts set_flow_run_state's answers in
    turn (then ACCEPT); ``errors`` maps a call name to what it raises."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.states: dict[str, str] = {}
        self.answers: list[dict[str, Any]] = []
        self.errors: dict[str, ApiError] = {}
        self.calls: list[tuple[str, str, Any]] = []

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, path, json))
        if call in self.errors:
            raise self.errors[call]
        if call == "read_flow_run":
            run_id = path.rsplit("/", 1)[1]
            return {"id": run_id, "state": {"type": self.states.get(run_id, "RUNNING")}}
        if call == "set_flow_run_state":
            run_id = path.split("/")[2]
            answer = self.answers.pop(0) if self.answers else {"status": "ACCEPT"}
            if answer["status"] == "ACCEPT":
                self.states[run_id] = json["state"]["type"]
                return {**answer, "state": json["state"]}
            return {"state": {"type": self.states.get(run_id, "RUNNING")}, **answer}
        return None

    def named(self, call: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] == call]


class RecordedRunLogs:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int]] = []

    def emit(self, flow_run_id: str, message: str, level: int = logging.INFO) -> None:
        self.lines.append((flow_run_id, message, level))

    def close(self, timeout: float = 2.0) -> None:
        pass


class BrokenOutbox(Outbox):
    def put(self, report: Report) -> Path:
        raise SpoolError(f"cannot keep a report in {self.dir}: No space left on device")


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "spool")


@pytest.fixture
def runlogs() -> RecordedRunLogs:
    return RecordedRunLogs()


@pytest.fixture
def reporter(api: FakeApi, outbox: Outbox, runlogs: RecordedRunLogs) -> Reporter:
    return Reporter(api, outbox, runlogs, source="worker w1")


def finished(outcome: Outcome) -> float:
    """Runs finished with ``outcome``, whatever ended their process."""
    return sum(
        REGISTRY.get_sample_value(
            "agent_flow_runs_finished_total", {"outcome": outcome.value, "cause": c.value}
        )
        or 0.0
        for c in Cause
    )


def all_finished() -> dict[Outcome, float]:
    return {outcome: finished(outcome) for outcome in Outcome}


def counted_since(before: dict[Outcome, float]) -> dict[Outcome, float]:
    return {o: n - before[o] for o, n in all_finished().items() if n != before[o]}


def kept(outbox: Outbox) -> list[Report]:
    found = []
    for _, report, problem in outbox.pending():
        assert report is not None, problem
        found.append(report)
    return found


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
