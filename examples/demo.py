"""Demo driver: register a deployment of a flow kept in this repository, trigger flow
runs, and wait until Prefect shows them final. Uses only the REST API (no prefect
import), through the agent's own client. Tests use these helpers too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from agent.api.client import PrefectClient
from agent.core.jobvars import base_job_template
from agent.settings.config import ApiSettings

HERE = Path(__file__).resolve().parent


def client_from_env(url: str | None = None) -> PrefectClient:
    return PrefectClient(
        ApiSettings(
            url=(url or os.environ["PREFECT_API_URL"]).rstrip("/"),
            key=os.environ.get("PREFECT_API_KEY") or None,
            auth_string=os.environ.get("PREFECT_API_AUTH_STRING") or None,
        )
    )


def ensure_pool(client: PrefectClient, pool: str) -> None:
    client.ensure_work_pool(pool, "local-agent", base_job_template())


def ensure_deployment(
    client: PrefectClient,
    pool: str,
    flow_name: str,
    entrypoint: str,
    directory: Path,
    name: str = "demo",
    job_variables: dict[str, Any] | None = None,
) -> str:
    """Create or update a deployment whose flow code is read from ``directory``."""
    flow = client.request("create_flow", "POST", "/flows/", {"name": flow_name})
    body = {
        "name": name,
        "flow_id": flow["id"],
        "work_pool_name": pool,
        "entrypoint": entrypoint,
        # The engine changes into this directory, then imports the entrypoint from it.
        "pull_steps": [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}
        ],
        "job_variables": job_variables or {},
        "enforce_parameter_schema": False,
    }
    deployment = client.request("create_deployment", "POST", "/deployments/", body)
    return str(deployment["id"])


def create_run(
    client: PrefectClient,
    deployment_id: str,
    parameters: dict[str, Any] | None = None,
    job_variables: dict[str, Any] | None = None,
) -> str:
    body = {"parameters": parameters or {}, "job_variables": job_variables or {}}
    run = client.request(
        "create_flow_run", "POST", f"/deployments/{deployment_id}/create_flow_run", body
    )
    return str(run["id"])


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def read_run(client: PrefectClient, run_id: str) -> dict[str, Any]:
    """A flow run as the API returns it (raw JSON): for tests and ops scripts, which
    look at fields the agent itself never reads."""
    body: dict[str, Any] = client.request("read_flow_run", "GET", f"/flow_runs/{run_id}")
    return body


def set_state(
    client: PrefectClient, run_id: str, state: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """Propose a state as another worker or the UI would (raw JSON answer)."""
    body = {"state": state, "force": force}
    path = f"/flow_runs/{run_id}/set_state"
    answer: dict[str, Any] = client.request("set_flow_run_state", "POST", path, body)
    return answer


def pending_state(transition_id: str) -> dict[str, Any]:
    """The Pending a claim proposes (as lifecycle.pending builds it)."""
    return {"type": "PENDING", "name": "Pending", "state_details": {"transition_id": transition_id}}


def wait_final(
    client: PrefectClient, run_ids: list[str], timeout: float = 120.0
) -> dict[str, dict[str, Any]]:
    """Wait until every run is in a final state; returns each run's last state."""
    deadline = time.monotonic() + timeout
    states: dict[str, dict[str, Any]] = {}
    while True:
        body = {"flow_runs": {"id": {"any_": run_ids}}}
        runs = client.request("filter_flow_runs", "POST", "/flow_runs/filter", body)
        states = {r["id"]: r.get("state") or {} for r in runs}
        if all((states.get(i) or {}).get("type") in FINAL for i in run_ids):
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", default=os.environ.get("AGENT_POOL", "local-agent-demo"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    client = client_from_env()
    ensure_pool(client, args.pool)
    deployment_id = ensure_deployment(
        client, args.pool, "hello", "demo_flows.py:hello", HERE / "flows"
    )
    print(f"deployment hello/demo ({deployment_id}) in pool {args.pool!r}")
    run_ids = [
        create_run(client, deployment_id, {"name": f"demo run {i + 1}"}) for i in range(args.runs)
    ]
    print(f"triggered {len(run_ids)} flow runs; waiting for them to finish ...")
    states = wait_final(client, run_ids, args.timeout)
    ok = True
    for run_id in run_ids:
        state = states.get(run_id) or {}
        print(f"  {run_id}  {state.get('name', 'unknown')}")
        ok = ok and state.get("type") == "COMPLETED"
    print("all flow runs Completed" if ok else "some flow runs did not complete")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
