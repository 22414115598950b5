"""What a flow run sees, how failures end, and what bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import demo
from tests.integration.conftest import AUTH, Agent, executions
from tests.integration.harness import cmdlines, execution, free_port, tagged_pids, wait_for


@pytest.mark.launches
def test_env_and_import_paths_reach_the_flow_in_order_and_no_secret_leaks(agent: Agent) -> None:
    libs = agent.tmp / "libs"
    libs.mkdir()
    (libs / "helper_mod.py").write_text("VALUE = 'imported from --import-path'\n")
    deployment = agent.deploy(
        "show_env", job_variables={"env": {"SHARED": "deployment", "DEP_ONLY": "d"}}
    )
    agent.start_poller("-e", "SHARED=agent", "-e", "AGENT_ONLY=a", "-p", str(libs))
    agent.start_worker(env={"SHARED": "worker", "WORKER_ONLY": "w"})
    out = agent.tmp / "env.json"
    keys = [
        "SHARED",
        "AGENT_ONLY",
        "DEP_ONLY",
        "WORKER_ONLY",
        "RUN_ONLY",
        "PREFECT_API_URL",
        "PREFECT__FLOW_RUN_ID",
        "PROMETHEUS_MULTIPROC_DIR",
        "PREFECT_API_AUTH_STRING",
    ]
    run_id = agent.run(
        deployment,
        {"out": str(out), "keys": keys, "pause": 4},
        job_variables={
            "env": {
                "SHARED": "run",
                "RUN_ONLY": "r",
                "PREFECT_API_URL": "http://127.0.0.1:9/not-the-api",
            }
        },
    )
    wait_for(out.exists, 90, "the flow to write what it sees")
    # While the flow runs: no process started for this test has the secret in its argv.
    ours = set(tagged_pids(agent.procs.tag))
    assert len(ours) >= 4  # poller, worker, shim, flow
    assert not [c for c in cmdlines() if AUTH in c]
    assert agent.wait([run_id], timeout=60)[run_id]["type"] == "COMPLETED"

    seen = json.loads(out.read_text())
    assert seen["env"] == {
        "SHARED": "run",  # worker < agent --env < deployment < run
        "AGENT_ONLY": "a",
        "DEP_ONLY": "d",
        "WORKER_ONLY": "w",
        "RUN_ONLY": "r",
        "PREFECT_API_URL": agent.env["PREFECT_API_URL"],  # a run cannot redirect it
        "PREFECT__FLOW_RUN_ID": run_id,
        "PROMETHEUS_MULTIPROC_DIR": None,
        "PREFECT_API_AUTH_STRING": AUTH,  # the flow gets it, through its environment
    }
    assert seen["helper"] == "imported from --import-path"
    # Nothing in the spool holds the secret; spec files are readable by their owner only.
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 20, "the run to be settled")
    for path in agent.spool.rglob("*"):
        if path.is_file():
            assert AUTH.encode() not in path.read_bytes(), path
    spec = agent.spool / "done" / f"{run_id}.json"
    assert spec.stat().st_mode & 0o077 == 0
    assert (execution(agent.spool, run_id) / "output.log").read_text().count("show_env ran") == 1


@pytest.mark.launches
def test_failures_end_in_the_right_state_and_the_agent_keeps_going(
    agent: Agent, marker: Path
) -> None:
    sup = agent.supervisor(workers=2, AGENT_SHOW_FLOW_LOGS="1")
    assert sup.ctl("start", "agent").returncode == 0
    failing = agent.run(agent.deploy("boom"))
    crashing = agent.run(agent.deploy("hard_exit"), {"code": 3})
    missing = "/nonexistent/dir-for-test"
    lost = agent.run(
        agent.deploy("record"), {"marker": str(marker)}, job_variables={"working_dir": missing}
    )
    fine = agent.run(agent.deploy("record", name="ok"), {"marker": str(marker)})
    states = agent.wait([failing, crashing, lost, fine], timeout=150)

    assert states[failing]["type"] == "FAILED"
    assert states[crashing]["type"] == "CRASHED"
    assert "status code 3" in str(states[crashing]["message"])
    assert states[lost]["type"] == "FAILED"
    assert states[lost]["message"] == (
        f"Flow run {lost} cannot start: nonexistent `working_dir` configured: {missing}"
    )
    assert states[fine]["type"] == "COMPLETED"
    assert executions(marker) == [fine]
    # --show-flow-logs: the flow's output reaches a worker's log, prefixed with the run name.
    logs = sup.log("agent-worker_00") + sup.log("agent-worker_01")
    assert "ValueError: boom: this flow fails on purpose" in logs
    name = demo.read_run(agent.client, failing)["name"]
    assert any(line.startswith(f"[{name}] ") for line in logs.splitlines())
    assert sup.status()["agent"] == "RUNNING"


def test_bad_flags_are_usage_errors(agent: Agent) -> None:
    result = agent.procs.run(["agent", "local", "start", "--env", "FOO"])
    assert result.returncode == 2
    assert "--env: expected KEY=VALUE, found no '=' in it" in result.stderr
    assert "FOO" not in result.stderr  # a malformed setting is never echoed (it may be a secret)
    assert "Traceback" not in result.stderr

    result = agent.procs.run(["agent", "local", "start", "--agent-address", "http://127.0.0.1"])
    assert result.returncode == 2
    assert "Must specify port in agent address" in result.stderr

    env = {"PREFECT__CLOUD__AGENT__LABELS": "[not, a list"}
    result = agent.procs.run(["agent", "local", "start", "--max-polls", "1"], env)
    assert result.returncode == 78
    assert "PREFECT__CLOUD__AGENT__LABELS" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_api_is_logged_and_retried_not_fatal(agent: Agent) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    agent.start_poller("--api-retry-seconds", "1", env={"PREFECT_API_URL": dead})
    # The first round retries for its deadline, then the poller says the API is away
    # (once) and keeps trying, one attempt per round.
    wait_for(
        lambda: agent.procs.log("poller").count("the Prefect API is still unavailable") >= 2,
        60,
        "two more failed rounds",
    )
    assert agent.procs.log("poller").count("the Prefect API is unavailable: claiming") == 1
    assert agent.procs.popens[-1].poll() is None  # still running
    assert f"cannot reach {dead}" in agent.procs.log("poller")
    assert "Traceback" not in agent.procs.log("poller")
