"""Cancellation in Prefect (a run set to Cancelling through the API, as the UI does):
a running run's process group is stopped (SIGTERM, SIGKILL after the grace period) and
the run marked Cancelled; a waiting run leaves the spool unrun. Real processes, real server."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from agent.worker.procid import ProcessId
from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import execution, wait_for


def status_file(agent: Agent, run_id: str) -> dict[str, Any]:
    try:
        body: dict[str, Any] = json.loads(
            (execution(agent.spool, run_id) / "status.json").read_text()
        )
    except (OSError, ValueError):
        return {}
    return body


def cancel(agent: Agent, run_id: str) -> float:
    """What the UI's Cancel button does; returns when it was asked (monotonic)."""
    body = {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}
    agent.client.request("set_state", "POST", f"/flow_runs/{run_id}/set_state", body)
    return time.monotonic()


def settled(agent: Agent, run_id: str) -> dict[str, Any]:
    """The run's state once its worker has settled it (the engine's Crashed on SIGTERM
    comes first and is final too, so waiting for a final state is not enough)."""
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 30, "the run to be settled")
    state: dict[str, Any] = demo.read_run(agent.client, run_id)["state"]
    return state


def outcome(agent: Agent, run_id: str) -> dict[str, Any]:
    note: dict[str, Any] = json.loads((agent.spool / "done" / f"{run_id}.outcome").read_text())
    return note


def start_running(
    agent: Agent, marker: Path, flow: str, *worker_args: str
) -> tuple[str, ProcessId]:
    deployment = agent.deploy(flow)
    agent.start_poller()
    agent.start_worker(*worker_args)
    run_id = agent.run(deployment, {"marker": str(marker), "pause": 60})
    wait_for(lambda: status_file(agent, run_id).get("phase") == "running", 90, "the flow to run")
    flow_id = ProcessId.from_json(status_file(agent, run_id).get("flow"))
    assert flow_id is not None and flow_id.alive()
    wait_for(
        lambda: demo.read_run(agent.client, run_id)["state"]["type"] == "RUNNING", 60, "Running"
    )
    return run_id, flow_id


@pytest.mark.backends
@pytest.mark.launches
def test_running_run_cancelled_in_prefect_is_stopped_and_marked_cancelled(
    agent: Agent, marker: Path
) -> None:
    run_id, flow = start_running(agent, marker, "slow_record")
    asked = cancel(agent, run_id)
    wait_for(lambda: not flow.alive(), 10, "the flow's process to be stopped")
    assert time.monotonic() - asked < 10
    state = settled(agent, run_id)
    assert state["type"] == "CANCELLED"
    message = str(state.get("message"))
    assert "stopped by agent worker worker (SIGTERM)" in message, message
    assert outcome(agent, run_id)["outcome"] == "cancelled"
    assert executions(marker) == []  # stopped before it recorded
    # Prefect's engine answers SIGTERM by forcing Crashed itself; the worker's forced
    # Cancelled comes last.
    assert agent.states(run_id) == [
        *("SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "CRASHED", "CANCELLED")
    ]
    assert not (agent.spool / "runs" / run_id / "cancel").exists()  # the request ended with it


def test_flow_ignoring_sigterm_is_killed_after_the_grace_period(agent: Agent, marker: Path) -> None:
    run_id, flow = start_running(agent, marker, "stubborn", "--cancel-grace-seconds", "2")
    asked = cancel(agent, run_id)
    wait_for(lambda: "SIGTERM sent" in agent.procs.log("worker"), 10, "SIGTERM")
    time.sleep(1)
    assert flow.alive(), "the flow should have outlived SIGTERM"
    wait_for(lambda: not flow.alive(), 10, "SIGKILL after the grace period")
    assert time.monotonic() - asked < 12
    state = settled(agent, run_id)
    assert state["type"] == "CANCELLED"
    assert "SIGTERM, then SIGKILL after 2 s" in str(state.get("message")), state
    assert outcome(agent, run_id)["outcome"] == "cancelled"
    assert executions(marker) == []


def test_waiting_run_cancelled_leaves_the_spool_unrun(agent: Agent, marker: Path) -> None:
    deployment = agent.deploy("slow_record")
    agent.start_worker()
    agent.start_poller()
    wait_for((agent.spool / "workers" / "worker.json").exists, 30, "the worker to register")
    worker_pid = json.loads((agent.spool / "workers" / "worker.json").read_text())["pid"]
    # A worker that is alive (it holds its registry lock) but takes nothing: the poller
    # claims one run for it, and the run waits in new/.
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        run_id = agent.run(deployment, {"marker": str(marker), "pause": 0})
        waiting = agent.spool / "new" / f"{run_id}.json"
        wait_for(waiting.exists, 60, "the run to be claimed and wait in new/")
        assert demo.read_run(agent.client, run_id)["state"]["type"] == "PENDING"
        asked = cancel(agent, run_id)
        wait_for(lambda: not waiting.exists(), 10, "the waiting run to leave new/")
        assert time.monotonic() - asked < 10
        assert (agent.spool / "done" / f"{run_id}.json").exists()
        assert outcome(agent, run_id)["outcome"] == "cancelled"
        state = agent.wait([run_id], timeout=30)[run_id]
        assert state["type"] == "CANCELLED"
        assert "before it started" in str(state.get("message"))
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    time.sleep(3)  # the worker, free again, must find nothing to run
    assert executions(marker) == []
    assert not (agent.spool / "cur" / f"{run_id}.json").exists()
    assert agent.states(run_id) == ["SCHEDULED", "PENDING", "CANCELLING", "CANCELLED"]
    assert f"flow run {run_id} started" not in agent.procs.log("worker")
