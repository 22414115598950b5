"""agent/api/outbox.py: reports kept on disk (real files in tmp_path), and their delivery
(`Reporter.deliver`, agent/api/reporter.py) once to a fake API client that keeps each
flow run's state and records every call."""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.outbox import (
    LOGS,
    OUTBOX,
    PID,
    STATE,
    VERSION,
    Outbox,
    Report,
    logs_report,
    parse,
    worth_keeping,
)
from agent.api.reporter import Reporter
from agent.core.errors import ApiError, AuthError, NotFoundError, SpoolError, TransientApiError
from agent.settings.config import ApiSettings

URL = "http://prefect.invalid/api"
CRASHED = {"type": "CRASHED", "name": "Crashed", "message": "Flow run infrastructure died"}
CANCELLED = {"type": "CANCELLED", "name": "Cancelled", "message": "Cancelled by agent worker w1"}
ENTRIES = [
    {
        "name": "agent.worker.loop",
        "level": 20,
        "message": "Process started by worker w1",
        "timestamp": "2024-05-01T12:00:00+00:00",
        "flow_run_id": "r",
        "task_run_id": None,
    }
]


class FakeApi(PrefectClient):
    """The server: ``states`` is each flow run's state type; an accepted state becomes
    the run's. ``errors`` maps a call name to what it raises."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.states: dict[str, str] = {}
        self.errors: dict[str, ApiError] = {}
        self.calls: list[tuple[str, str, str, Any]] = []

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, method, path, json))
        if call in self.errors:
            raise self.errors[call]
        if call == "read_flow_run":
            run_id = path.rsplit("/", 1)[1]
            return {"id": run_id, "state": {"type": self.states.get(run_id, "RUNNING")}}
        if call == "set_flow_run_state":
            run_id = path.split("/")[2]
            self.states[run_id] = json["state"]["type"]
            return {"status": "ACCEPT", "state": json["state"]}
        return None

    def named(self, call: str) -> list[tuple[str, str, str, Any]]:
        return [c for c in self.calls if c[0] == call]


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "spool")


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def deliver(outbox: Outbox, api: PrefectClient) -> int:
    return Reporter(api, outbox).deliver()


def run_id() -> str:
    return str(uuid.uuid4())


def kept(kind: str) -> float:
    return REGISTRY.get_sample_value("agent_outbox_kept_total", {"kind": kind}) or 0.0


def delivered(kind: str) -> float:
    return REGISTRY.get_sample_value("agent_outbox_delivered_total", {"kind": kind}) or 0.0


def names(outbox: Outbox) -> list[str]:
    return [p.name for p in outbox.paths()]


def write_raw(outbox: Outbox, name: str, content: bytes) -> Path:
    outbox.dir.mkdir(parents=True, exist_ok=True)
    path = outbox.dir / name
    path.write_bytes(content)
    return path


# -- kinds, and reading them back -----------------------------------------------------------


def test_worth_keeping_what_a_later_delivery_can_succeed_after() -> None:
    assert worth_keeping(TransientApiError("c", "cannot reach"))
    assert worth_keeping(TransientApiError("c", "HTTP 503", 503))
    assert worth_keeping(AuthError("c", "HTTP 401", 401))
    assert worth_keeping(ApiError("c", "HTTP 500", 500))
    assert worth_keeping(ApiError("c", "no status"))
    assert not worth_keeping(NotFoundError("c", "HTTP 404", 404))
    assert not worth_keeping(ApiError("c", "HTTP 422", 422))
    assert not worth_keeping(ApiError("c", "HTTP 409", 409))


@pytest.mark.parametrize(
    "report",
    [
        Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"),
        Report(STATE, "r1", state=CANCELLED, force=True, source="poller"),
        Report(PID, "r1", infrastructure_pid="host-1:4242", source="worker w2"),
        logs_report(ENTRIES, "worker w1"),
    ],
    ids=["state", "forced-state", "pid", "logs"],
)
def test_put_and_read_back_round_trip(outbox: Outbox, report: Report) -> None:
    assert parse(json.loads(report.to_json())) == report
    path = outbox.put(report)
    assert path.parent == outbox.dir == outbox.dir.parent / OUTBOX
    assert path.suffix == ".json" and f"-{report.kind}-" in path.name
    assert oct(outbox.dir.stat().st_mode & 0o777) == "0o700"
    body = json.loads(path.read_bytes())
    assert body["version"] == VERSION and body["kind"] == report.kind
    [(found_path, found, problem)] = list(outbox.pending())
    assert (found_path, problem) == (path, "")
    assert found is not None and found.created > 0
    assert found == replace(report, created=found.created)


def test_settles_round_trips_and_a_file_of_an_earlier_version_settles() -> None:
    kept = Report(STATE, "r1", state=CANCELLED, force=False, settles=False, source="poller")
    assert parse(json.loads(kept.to_json())).settles is False
    body = json.loads(kept.to_json())
    del body["settles"]  # written before the field existed
    assert parse(body).settles is True


def test_only_the_fields_of_its_kind_are_written() -> None:
    assert set(json.loads(Report(STATE, "r", state=CRASHED, force=True, source="s").to_json())) == {
        "version",
        "kind",
        "source",
        "created",
        "flow_run_id",
        "state",
        "force",
        "settles",
    }
    assert set(json.loads(Report(PID, "r", infrastructure_pid="h:1", source="s").to_json())) == {
        "version",
        "kind",
        "source",
        "created",
        "flow_run_id",
        "infrastructure_pid",
    }
    assert set(json.loads(logs_report(ENTRIES, "s").to_json())) == {
        "version",
        "kind",
        "source",
        "created",
        "entries",
    }


def test_a_dot_named_half_written_file_is_never_listed(outbox: Outbox, api: FakeApi) -> None:
    whole = outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    half = write_raw(outbox, "." + whole.name, b'{"version": 1, "kind": "pi')
    tmp = write_raw(outbox, f".{whole.name}.{os.getpid()}.tmp", b"{")
    other = write_raw(outbox, "notes.txt", b"not a report")
    assert outbox.paths() == [whole]
    assert outbox.count() == 1
    assert deliver(outbox, api) == 1
    assert outbox.count() == 0
    assert half.exists() and tmp.exists() and other.exists()  # never read, never removed


def test_missing_outbox_is_empty(outbox: Outbox, api: FakeApi) -> None:
    assert not outbox.dir.exists()
    assert outbox.paths() == [] and outbox.count() == 0
    assert deliver(outbox, api) == 0
    assert api.calls == []


def test_reports_are_listed_and_delivered_oldest_first(outbox: Outbox, api: FakeApi) -> None:
    first = outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    second = outbox.put(Report(STATE, "r2", state=CRASHED, force=False, source="worker w2"))
    third = outbox.put(logs_report(ENTRIES, "worker w1"))
    assert outbox.paths() == [first, second, third]
    # By the time in the name, not by when the file was written.
    older = write_raw(
        outbox,
        "00000000000000000001-1-pid-r0.json",
        Report(PID, "r0", infrastructure_pid="h:0", source="x").to_json(),
    )
    assert outbox.paths() == [older, first, second, third]
    assert deliver(outbox, api) == 4
    assert [c[0] for c in api.calls] == [
        "update_flow_run",
        "update_flow_run",
        "read_flow_run",
        "set_flow_run_state",
        "create_logs",
    ]
    assert [c[2] for c in api.named("update_flow_run")] == ["/flow_runs/r0", "/flow_runs/r1"]


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


# -- failures while delivering ------------------------------------------------------------------


def test_a_transient_failure_keeps_the_report_and_stops_delivery(
    outbox: Outbox, api: FakeApi
) -> None:
    rid = run_id()
    first = outbox.put(Report(STATE, rid, state=CRASHED, force=False, source="worker w1"))
    second = outbox.put(Report(PID, rid, infrastructure_pid="h:7", source="worker w1"))
    api.errors["read_flow_run"] = TransientApiError("read_flow_run", f"cannot reach {URL}")
    before = delivered(STATE), delivered(PID)
    with pytest.raises(TransientApiError):
        deliver(outbox, api)
    assert first.exists() and second.exists()
    assert [c[0] for c in api.calls] == ["read_flow_run"]  # the pid report was not tried
    assert (delivered(STATE), delivered(PID)) == before

    del api.errors["read_flow_run"]
    assert deliver(outbox, api) == 2
    assert [c[0] for c in api.calls] == [
        "read_flow_run",
        "read_flow_run",
        "set_flow_run_state",
        "update_flow_run",
    ]
    assert outbox.count() == 0
    assert (delivered(STATE), delivered(PID)) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(
    "error",
    [
        TransientApiError("set_flow_run_state", "HTTP 503: Service Unavailable", 503),
        AuthError("set_flow_run_state", "HTTP 401, the API key or auth string is wrong", 401),
    ],
    ids=["503", "401"],
)
def test_the_api_away_or_refusing_us_keeps_the_report_and_stops_delivery(
    outbox: Outbox, api: FakeApi, error: ApiError
) -> None:
    path = outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    later = outbox.put(Report(PID, run_id(), infrastructure_pid="h:1", source="worker w1"))
    api.errors["set_flow_run_state"] = error
    with pytest.raises(type(error)):
        deliver(outbox, api)
    assert path.exists() and later.exists()
    assert api.named("update_flow_run") == []


def test_an_http_500_keeps_the_report(outbox: Outbox, api: FakeApi) -> None:
    """Kept for a later try (whether the reports after it wait too is the poller's
    concern: see test_outage.py, one report failing for good must not stop claims)."""
    path = outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    api.errors["set_flow_run_state"] = ApiError("set_flow_run_state", "HTTP 500: Oops", 500)
    try:
        deliver(outbox, api)
    except ApiError as exc:
        assert exc.status == 500
    assert path.exists()


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("read_flow_run", "HTTP 404: Flow run not found", 404),
        ApiError("read_flow_run", "HTTP 422: Unprocessable Entity", 422),
    ],
    ids=["404", "422"],
)
def test_a_report_the_server_refuses_is_dropped_and_the_rest_go_on(
    outbox: Outbox, api: FakeApi, error: ApiError, caplog: pytest.LogCaptureFixture
) -> None:
    refused = outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    after = outbox.put(Report(PID, run_id(), infrastructure_pid="h:1", source="worker w1"))
    api.errors["read_flow_run"] = error
    before = delivered(STATE)
    with caplog.at_level(logging.INFO, logger="agent.api.reporter"):
        assert deliver(outbox, api) == 2
    assert not refused.exists() and not after.exists()
    assert api.named("set_flow_run_state") == []
    assert len(api.named("update_flow_run")) == 1
    assert delivered(STATE) == before + 1
    assert "dropped, the server refuses it" in caplog.text
    assert str(error.status) in caplog.text


def test_a_refused_pid_report_is_dropped(outbox: Outbox, api: FakeApi) -> None:
    path = outbox.put(Report(PID, run_id(), infrastructure_pid="h:1", source="worker w1"))
    api.errors["update_flow_run"] = NotFoundError("update_flow_run", "HTTP 404", 404)
    assert deliver(outbox, api) == 1
    assert not path.exists()


# -- unusable files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"version": 1, "kind": "state", "flow_run_', "not a JSON object"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"", "not a JSON object"),
        (
            b'{"version": 99, "kind": "pid", "flow_run_id": "r", "infrastructure_pid": "h:1"}',
            "unknown version 99",
        ),
        (b'{"version": 1, "kind": "bogus", "flow_run_id": "r"}', "unknown kind 'bogus'"),
        (b'{"version": 1, "kind": "pid", "infrastructure_pid": "h:1"}', "no flow_run_id"),
        (
            b'{"version": 1, "kind": "state", "flow_run_id": "", "state": {"type": "CRASHED"}}',
            "no flow_run_id",
        ),
        (
            b'{"version": 1, "kind": "state", "flow_run_id": "r", "state": {"name": "x"}}',
            "state is not an object with a type",
        ),
        (
            b'{"version": 1, "kind": "pid", "flow_run_id": "r", "infrastructure_pid": 7}',
            "infrastructure_pid is not a string",
        ),
        (b'{"version": 1, "kind": "logs", "entries": ["x"]}', "entries is not a list of objects"),
    ],
)
def test_an_unusable_file_is_removed_with_an_error_and_blocks_nothing(
    outbox: Outbox,
    api: FakeApi,
    caplog: pytest.LogCaptureFixture,
    content: bytes,
    problem: str,
) -> None:
    bad = write_raw(outbox, "00000000000000000001-1-x-r.json", content)
    good = outbox.put(Report(PID, "r2", infrastructure_pid="h:2", source="worker w1"))
    assert outbox.paths() == [bad, good]
    with caplog.at_level(logging.ERROR, logger="agent.api.reporter"):
        assert deliver(outbox, api) == 1  # the good one; the bad one is not counted
    assert not bad.exists() and not good.exists()
    assert api.calls == [
        ("update_flow_run", "PATCH", "/flow_runs/r2", {"infrastructure_pid": "h:2"})
    ]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert bad.name in record.getMessage()
    assert problem in record.getMessage()
    assert "removed" in record.getMessage()


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


# -- where a report cannot be kept -------------------------------------------------------------


def test_put_under_a_regular_file_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    outbox = Outbox(blocker / "spool")
    before = kept(PID)
    with pytest.raises(SpoolError, match="cannot keep a report in") as info:
        outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    assert str(outbox.dir) in str(info.value)
    assert isinstance(info.value.__cause__, NotADirectoryError)
    assert kept(PID) == before
    assert blocker.is_file() and blocker.read_bytes() == b""


def test_put_where_the_outbox_is_a_file_is_a_spool_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.dir.write_bytes(b"")  # something else took the name
    with pytest.raises(SpoolError):
        outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_put_into_a_read_only_outbox_is_a_spool_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.dir.mkdir()
    os.chmod(outbox.dir, 0o500)
    try:
        with pytest.raises(SpoolError):
            outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    finally:
        os.chmod(outbox.dir, 0o700)
    assert list(outbox.dir.iterdir()) == []
