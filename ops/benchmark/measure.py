"""What every part shares: the server, the benchmark's own client (straight to the
server, so that its requests are never counted against a side), the processes started,
and the REST calls the parts make: deployments, runs, states, workers."""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.api.client import PrefectClient
from examples import demo
from ops.benchmark.results import Json, ts
from tests.integration.harness import REPO, Procs

AUTH = "bench:bench-auth-string"
TESTS_FLOWS = REPO / "tests" / "flows"
HERE = Path(__file__).resolve().parent
# (flow name, entrypoint, the directory the engine imports it from)
RECORD = ("record", "agent_test_flows.py:record", TESTS_FLOWS)  # appends its run id to a file
HOLD = ("hold", "flows.py:hold", HERE)  # records its pid, then sleeps until cancelled


@dataclass
class World:
    url: str  # the server's API, for the benchmark itself
    client: PrefectClient
    procs: Procs
    tmp: Path
    args: argparse.Namespace

    def env(self, home: Path, api_url: str) -> dict[str, str]:
        """What a side's processes get: its own PREFECT_HOME, its proxy, the auth string."""
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PREFECT_API_URL": api_url,
            "PREFECT_API_AUTH_STRING": AUTH,
            "PREFECT_HOME": str(home),
        }

    def deploy(
        self,
        pool: str,
        flow: tuple[str, str, Path],
        name: str,
        schedules: list[Json] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        """Create or update a deployment (as examples/demo.py does, plus schedules and
        the parameters a schedule's runs get)."""
        flow_name, entrypoint, directory = flow
        created = self.client.request("create_flow", "POST", "/flows/", {"name": flow_name})
        body: Json = {
            "name": name,
            "flow_id": created["id"],
            "work_pool_name": pool,
            "entrypoint": entrypoint,
            "pull_steps": [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}
            ],
            "enforce_parameter_schema": False,
        }
        if schedules is not None:
            body["schedules"] = schedules
        if parameters is not None:
            body["parameters"] = parameters
        deployment = self.client.request("create_deployment", "POST", "/deployments/", body)
        return str(deployment["id"])

    def delete_deployment(self, deployment_id: str) -> None:
        """Its scheduled runs go with it; runs already made are kept."""
        self.client.request("delete_deployment", "DELETE", f"/deployments/{deployment_id}")

    def create(self, deployment_id: str, parameters: dict[str, Any]) -> str:
        return demo.create_run(self.client, deployment_id, parameters)

    def runs(self, ids: list[str]) -> list[Json]:
        if not ids:
            return []
        body = {"flow_runs": {"id": {"any_": ids}}, "limit": 200}
        runs: list[Json] = self.client.request(
            "filter_flow_runs", "POST", "/flow_runs/filter", body
        )
        return runs

    def runs_of(self, deployment_id: str) -> list[Json]:
        body = {
            "flow_runs": {"deployment_id": {"any_": [deployment_id]}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200,
        }
        runs: list[Json] = self.client.request(
            "filter_flow_runs", "POST", "/flow_runs/filter", body
        )
        return runs

    def run(self, run_id: str) -> Json:
        return demo.read_run(self.client, run_id)

    def history(self, run_id: str) -> list[Json]:
        path = f"/flow_run_states/?flow_run_id={run_id}"
        states: list[Json] = self.client.request("states", "GET", path)
        return sorted(states, key=lambda s: str(s["timestamp"]))

    def wait_final(self, ids: list[str], timeout: float) -> dict[str, Json]:
        return demo.wait_final(self.client, ids, timeout=timeout)

    def wait_state(self, run_id: str, types: tuple[str, ...], timeout: float) -> str:
        """Poll the run until its state type is one of ``types``; the last type seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = str((self.run(run_id).get("state") or {}).get("type"))
            if seen in types or time.monotonic() > deadline:
                return seen
            time.sleep(0.1)

    def claim(self, run_id: str) -> bool:
        """Propose Pending, as a worker's claim does; True if the server accepted it."""
        answer = demo.set_state(self.client, run_id, demo.pending_state(uuid.uuid4().hex))
        return answer.get("status") == "ACCEPT"

    def cancel(self, run_id: str) -> tuple[float, str]:
        """What the UI's Cancel does (a forced Cancelling). Returns when Cancelling was set
        (the server's timestamp; our clock just before the request if the server put
        another state instead) and the state type the server answered with: a run that
        is still Scheduled goes straight to Cancelled (Prefect's
        BypassCancellingFlowRunsWithNoInfra)."""
        asked = time.time()
        state = {"type": "CANCELLING", "name": "Cancelling"}
        answer = demo.set_state(self.client, run_id, state, force=True)
        answered = answer.get("state") or {}
        stamp = ts(answered.get("timestamp"))
        kind = str(answered.get("type"))
        return (stamp if stamp is not None and kind == "CANCELLING" else asked), kind

    def heartbeat_since(self, pool: str, since: float) -> bool:
        """A worker of ``pool`` has sent a heartbeat at or after ``since``."""
        path = f"/work_pools/{pool}/workers/filter"
        workers: list[Json] = self.client.request("workers", "POST", path, {})
        beats = [ts(w.get("last_heartbeat_time")) for w in workers]
        return any(b is not None and b >= since - 1.0 for b in beats)
