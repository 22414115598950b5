"""Shared by the outbox unit tests (test_outbox_files, test_outbox_delivery,
test_outbox_failures): the reports' contents, a fake API client that keeps each flow
run's state and records every call, the outbox (real files in tmp_path) and the api as
fixtures, and the outbox's counters."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox
from agent.api.reporter import Reporter
from agent.core.errors import ApiError
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
