"""A worker killed with kill -9 mid-run: the flow outlives it, and a worker adopts the
run and reports it exactly once; nothing runs twice. Real processes, real server."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import execution, wait_for


def worker_pid(agent: Agent) -> int:
    body = json.loads((agent.spool / "workers" / "worker.json").read_text())
    pid: int = body["pid"]
    return pid


def flow_status(agent: Agent, run_id: str) -> dict[str, object]:
    path = execution(agent.spool, run_id) / "status.json"
    try:
        status: dict[str, object] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return status


def start_run(
    agent: Agent, marker: Path, pause: float, code: int = 0, env: dict[str, str] | None = None
) -> str:
    deployment = agent.deploy("slow_record", job_variables={"env": env or {}})
    agent.start_poller()
    agent.start_worker()
    run_id = agent.run(deployment, {"marker": str(marker), "pause": pause, "code": code})
    wait_for(lambda: flow_status(agent, run_id).get("phase") == "running", 90, "the flow to run")
    return run_id


@pytest.mark.launches
def test_flow_outlives_a_killed_worker_and_is_reported_once(agent: Agent, marker: Path) -> None:
    run_id = start_run(agent, marker, pause=8)
    os.kill(worker_pid(agent), signal.SIGKILL)
    agent.start_worker(name="worker")  # what supervisor does: a new worker, same id
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"
    assert executions(marker) == [run_id]  # ran once, to the end
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 30, "the adopter to settle it")
    assert agent.states(run_id) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    # Its shim lived on and held the lease; once the flow ended the new worker took over.
    assert "adopted after its worker died; it ended" in agent.procs.log("worker")


@pytest.mark.launches
def test_flow_outliving_worker_and_shim_is_watched_to_the_end(agent: Agent, marker: Path) -> None:
    # Its output goes through the shim's pipe: with the shim gone, a flow that writes
    # would die of a broken pipe. This flow writes nothing (console logging off).
    run_id = start_run(agent, marker, pause=10, env={"PREFECT_LOGGING_LEVEL": "CRITICAL"})
    shim = flow_status(agent, run_id)["shim"]
    assert isinstance(shim, dict)
    os.kill(worker_pid(agent), signal.SIGKILL)
    os.kill(shim["pid"], signal.SIGKILL)  # nobody holds the lease while the flow runs
    agent.start_worker(name="worker")
    wait_for(
        lambda: "adopted after its worker died; it still running" in agent.procs.log("worker"),
        30,
        "the new worker to watch the running flow",
    )
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"  # the engine reported it
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 30, "the run to be settled")
    assert executions(marker) == [run_id]
    assert agent.states(run_id) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]


def test_worker_and_flow_killed_while_running_is_crashed_once_and_never_rerun(
    agent: Agent, marker: Path
) -> None:
    run_id = start_run(agent, marker, pause=30)
    wait_for(
        lambda: demo.read_run(agent.client, run_id)["state"]["type"] == "RUNNING",
        60,
        "the flow run to be Running (its code runs)",
    )
    flow_pid = flow_status(agent, run_id)["pid"]
    assert isinstance(flow_pid, int)
    os.kill(worker_pid(agent), signal.SIGKILL)
    os.kill(flow_pid, signal.SIGKILL)
    agent.start_worker(name="worker")
    state = agent.wait([run_id])[run_id]
    assert state["type"] == "CRASHED"
    assert "terminated by signal SIGKILL (9)" in str(state.get("message"))
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 30, "the run to be settled")
    assert executions(marker) == []  # killed before it recorded; and not started again
    assert agent.states(run_id).count("CRASHED") == 1


def test_worker_and_flow_killed_before_running_is_started_again_and_completes_once(
    agent: Agent, marker: Path
) -> None:
    """A process killed while its run is still Pending never ran user code (the engine
    proposes Running before any): the adopter starts it again instead of Crashed."""
    first = agent.tmp / "first-start"
    # The first start waits before the engine (the run stays Pending); a second starts
    # the engine at once.
    script = (
        f'test -e {first} || {{ touch {first}; sleep 60; }}; exec "{sys.executable}" '
        "-m prefect.engine"
    )
    command = shlex.join(["/bin/sh", "-c", script])
    deployment = agent.deploy("slow_record", job_variables={"command": command})
    agent.start_poller()
    agent.start_worker()
    run_id = agent.run(deployment, {"marker": str(marker), "pause": 0})
    wait_for(first.exists, 90, "the first start to wait before the engine")
    assert demo.read_run(agent.client, run_id)["state"]["type"] == "PENDING"
    flow_pid = flow_status(agent, run_id)["pid"]
    assert isinstance(flow_pid, int)
    os.kill(worker_pid(agent), signal.SIGKILL)
    os.kill(flow_pid, signal.SIGKILL)
    agent.start_worker(name="worker")
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"
    assert executions(marker) == [run_id]  # ran once
    assert agent.states(run_id) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    assert "while it was still Pending: never ran; starting it again" in agent.procs.log("worker")


def test_flow_ending_while_no_worker_runs_gets_its_real_exit_code(
    agent: Agent, marker: Path
) -> None:
    run_id = start_run(agent, marker, pause=3, code=3)
    os.kill(worker_pid(agent), signal.SIGKILL)
    wait_for(lambda: flow_status(agent, run_id).get("phase") == "ended", 60, "the flow to end")
    assert flow_status(agent, run_id)["returncode"] == 3
    assert demo.read_run(agent.client, run_id)["state"]["type"] == "RUNNING"  # nobody told
    agent.start_worker(name="worker")
    state = agent.wait([run_id])[run_id]
    assert state["type"] == "CRASHED"
    assert "exited with status code 3" in str(state.get("message"))
    assert executions(marker) == [run_id]
