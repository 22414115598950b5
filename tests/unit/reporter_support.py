"""Shared by the agent/api/reporter.py unit tests (test_reporter_proposals,
test_reporter_finished, test_reporter_logs_and_pid, test_reporter_delivery): a fake API
client (a PrefectClient whose transport is a script), a recorded run log, the fixtures
that make a Reporter of them and of an outbox of real files in tmp_path, and the reading
of the `finished` counter."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox, Report
from agent.api.reporter import Reporter
from agent.core import lifecycle
from agent.core.causes import Cause
from agent.core.errors import ApiError
from agent.core.states import Outcome
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
