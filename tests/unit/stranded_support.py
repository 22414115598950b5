"""Shared by the stranded-runs unit tests (test_stranded_acted_on,
test_stranded_left_alone, test_stranded_query), of the poller's "stranded runs" duty
(agent/poller/stranded.py): flow runs as /flow_runs/filter returns them, a fake API
client that answers /flow_runs/filter with what the test lists (unfiltered, as a server
that ignored the filter would) and records every call, a real Poller and a real Spool in
tmp_path, and the fixtures: the world they make and an empty stand-in for /proc."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.core.errors import ApiError, NotFoundError
from agent.core.jobvars import base_job_template
from agent.poller.loop import Poller
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import RUNS, Spool
from agent.worker import procid
from tests.unit.test_health import FakeRegistry

URL = "http://prefect.invalid/api"
POOL = "pool"
NAME = "agent-7"
HOST = "host-a"
DEPLOYMENT = "d0000000-0000-4000-8000-000000000001"
OLD = 3600.0  # seconds since a stranded run's state was set: well past the threshold


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, UTC).isoformat()


def flow_run(
    state_type: str = "PENDING",
    age: float = OLD,
    transition_id: str | None = "tid-of-our-claim",
    worker: str | None = NAME,
    host: str | None = HOST,
    pool: str = POOL,
    **fields: Any,
) -> dict[str, Any]:
    """A flow run as POST /flow_runs/filter returns it (the shape checked on a 3.8.8 server)."""
    run_id = str(uuid.uuid4())
    labels = {"prefect.flow.id": "f1", "prefect.deployment.id": DEPLOYMENT}
    if worker is not None:
        labels["prefect.worker.name"] = worker
    if host is not None:
        labels["local-agent.host"] = host
    labels["prefect.work-pool.name"] = pool
    return {
        "id": run_id,
        "name": "sleepy-otter",
        "deployment_id": DEPLOYMENT,
        "work_pool_name": pool,
        "labels": labels,
        "job_variables": {"env": {"RUN": "r"}},
        "next_scheduled_start_time": None,
        "expected_start_time": "2026-01-02T03:04:05.000006Z",
        "state_type": state_type,
        "state": {
            "type": state_type,
            "name": state_type.title(),
            "timestamp": iso(age),
            "state_details": {"flow_run_id": run_id, "transition_id": transition_id},
        },
        **fields,
    }


class FakeClient(PrefectClient):
    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.live: list[dict[str, Any]] = []  # what /flow_runs/filter answers, unfiltered
        self.deployments: dict[str, dict[str, Any]] = {
            DEPLOYMENT: {"id": DEPLOYMENT, "job_variables": {"env": {"DEP": "d", "RUN": "d"}}}
        }
        self.calls: list[tuple[str, str, Any]] = []
        self.filter_error: ApiError | None = None
        self.state_answer: dict[str, Any] = {"status": "ACCEPT"}

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, path, json))
        if call == "read_work_pool":
            template = base_job_template()
            template["variables"]["properties"]["working_dir"]["default"] = "/srv/flows"
            return {"name": POOL, "type": "local-agent", "base_job_template": template}
        if call == "filter_flow_runs":
            if self.filter_error is not None:
                raise self.filter_error
            return self.live[json["offset"] : json["offset"] + json["limit"]]
        if call == "read_deployment":
            found = self.deployments.get(path.rsplit("/", 1)[1])
            if found is None:
                raise NotFoundError(call, "HTTP 404: Deployment not found", 404)
            return found
        if call == "set_flow_run_state":
            return {**self.state_answer, "state": json["state"]}
        if call in ("get_scheduled_flow_runs", "cancelling_flow_runs"):
            return []
        return None

    def named(self, call: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] == call]

    def states_set(self) -> dict[str, dict[str, Any]]:
        """Run id -> the state proposed for it."""
        return {
            path.split("/")[2]: body["state"] for _, path, body in self.named("set_flow_run_state")
        }


class World:
    def __init__(self, root: Path) -> None:
        self.client = FakeClient()
        self.spool = Spool(root / "spool")
        self.spool.ensure()
        config = PollerConfig(
            api=ApiSettings(url=URL),
            pool=POOL,
            spool_dir=self.spool.root,
            name=NAME,
            hostname=HOST,
            env_vars={"AGENT_ENV": "a"},
            import_paths=("/opt/libs",),
            show_flow_logs=True,
            cloud_logs=False,
        )
        self.poller = Poller(config, self.client, self.spool, FakeRegistry(idle=0))
        self.poller.claiming.setup_pool()

    def add(self, **kwargs: Any) -> str:
        run = flow_run(**kwargs)
        self.client.live.append(run)
        return str(run["id"])

    def spec_in(self, state: str, run_id: str) -> None:
        (self.spool.dir(state) / f"{run_id}.json").write_bytes(b"{}")

    def run_folder(self, run_id: str) -> None:
        (self.spool.dir(RUNS) / run_id).mkdir()


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty stand-in for /proc: no process runs any flow run unless a test says so."""
    path = tmp_path / "proc"
    path.mkdir()
    monkeypatch.setattr(procid, "PROC", path)
    return path


@pytest.fixture
def world(tmp_path: Path, proc: Path) -> World:
    return World(tmp_path)
