"""Shared by the outage unit tests (test_outage_enter_leave, test_outage_sleep,
test_outage_outbox, test_outage_object): a real Poller with a fake API client (each
call recorded with whether it was made as a single attempt; ``reachable()`` answers
from a script), a fake worker registry and a spool whose outbox is real files in
tmp_path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox
from agent.core.errors import ApiError, TransientApiError
from agent.core.jobvars import base_job_template
from agent.poller.loop import Poller
from agent.settings import defaults
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import CUR, NEW, Spool
from agent.spool.registry import BUSY, DEAD, IDLE, Registry

URL = "http://prefect.invalid/api"
DOWN = TransientApiError("get_scheduled_flow_runs", f"cannot reach {URL}")
CRASHED = {"type": "CRASHED", "name": "Crashed", "message": "Flow run infrastructure died"}


class OutageClient(PrefectClient):
    """Answers a tick's calls. ``error`` is raised by every call, or only by those in
    ``failing`` when that is set. ``probes`` scripts `reachable()`: one answer per
    probe, the last repeated."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.error: ApiError | None = None
        self.failing: set[str] | None = None
        self.calls: list[tuple[str, bool]] = []  # (call, made as a single attempt)
        self.runs: list[dict[str, Any]] = []
        self.states: dict[str, str] = {}
        self.probes: list[bool] = [False]
        self.probed = 0
        self.cancelling: set[str] = set()  # shown Cancelling, of the runs asked about

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, self._single_attempt))
        if self.error is not None and (self.failing is None or call in self.failing):
            raise self.error
        if call == "read_work_pool":
            return {"name": "pool", "type": "local-agent", "base_job_template": base_job_template()}
        if call == "get_scheduled_flow_runs":
            return self.runs
        if call == "cancelling_flow_runs":
            asked = json["flow_runs"]["id"]["any_"]
            return [
                {"id": i, "state": {"type": "CANCELLING"}} for i in asked if i in self.cancelling
            ]
        if call == "filter_flow_runs":
            return []
        if call == "read_flow_run":
            run_id = path.rsplit("/", 1)[1]
            return {"id": run_id, "state": {"type": self.states.get(run_id, "RUNNING")}}
        if call == "set_flow_run_state":
            self.states[path.split("/")[2]] = json["state"]["type"]
            return {"status": "ACCEPT", "state": json["state"]}
        return None

    def reachable(self) -> bool:
        answer = self.probes[min(self.probed, len(self.probes) - 1)]
        self.probed += 1
        return answer

    def names(self) -> list[str]:
        return [call for call, _ in self.calls]

    def fail(self, error: ApiError | None, *calls: str) -> None:
        self.error = error
        self.failing = set(calls) or None


class FakeSpool(Spool):
    """An empty spool (no spec waiting or running unless a test lists some) at a real
    path: the outbox is real."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.running: list[str] = []
        self.waiting: list[str] = []

    def run_ids(self, state: str) -> list[str]:
        return {CUR: self.running, NEW: self.waiting}.get(state, [])

    def probe(self) -> str | None:
        return None

    def writable(self) -> bool:
        return True


class FakeRegistry(Registry):
    def counts(self) -> dict[str, int]:
        return {IDLE: 1, BUSY: 0, DEAD: 0}


class World:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.client = OutageClient()
        self.spool = FakeSpool(root)
        config = PollerConfig(api=ApiSettings(url=URL), pool="pool", spool_dir=root, name="a1")
        self.poller = Poller(config, self.client, self.spool, FakeRegistry(root))
        self.outbox = Outbox(root)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "spool")


@pytest.fixture
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "API_PROBE_SECONDS", 0.02)
    monkeypatch.setattr(defaults, "LOCAL_CHECK_SECONDS", 0.005)


def go_down(world: World, error: ApiError = DOWN) -> None:
    """A good tick (pool set up), then one whose calls fail: the outage starts."""
    world.poller.tick()
    world.client.fail(error)
    world.poller.tick()
    assert world.poller.s.outage.down_since is not None


def timed_sleep(poller: Poller, seconds: float) -> float:
    started = time.monotonic()
    poller._sleep(seconds)
    return time.monotonic() - started
