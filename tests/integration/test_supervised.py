"""The whole agent under the repository's supervisord.conf, against a real server."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import wait_for


def test_runs_complete_through_supervisord(agent: Agent, marker: Path) -> None:
    sup = agent.supervisor(workers=2)
    result = sup.ctl("start", "agent")
    assert result.returncode == 0, result.stdout + result.stderr
    # One command starts the whole agent: the poller starts its worker group.
    wait_for(
        lambda: list(sup.status().values()) == ["RUNNING"] * 3, 30, "agent and 2 workers RUNNING"
    )
    assert set(sup.status()) == {
        "agent",
        "agent-worker:agent-worker_00",
        "agent-worker:agent-worker_01",
    }

    deployment = agent.deploy("record")
    run_ids = [agent.run(deployment, {"marker": str(marker)}) for _ in range(4)]
    states = agent.wait(run_ids, timeout=150)

    assert {rid: states[rid].get("type") for rid in run_ids} == dict.fromkeys(run_ids, "COMPLETED")
    assert sorted(executions(marker)) == sorted(run_ids)  # each ran exactly once
    for run_id in run_ids:
        history = agent.states(run_id)
        assert history == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"], history

    # The poller heartbeats as a worker of the pool, under its name.
    workers = agent.client.request(
        "workers", "POST", f"/work_pools/{agent.pool}/workers/filter", {}
    )
    assert [w["name"] for w in workers] == ["agent"]
    url = f"{agent.env['AGENT_ADDRESS']}/api/health"
    health = requests.get(url, timeout=5)
    assert health.status_code == 200, health.text
    # Workers go idle once they have settled their run (after Prefect shows it final).
    wait_for(
        lambda: requests.get(f"{url}?verbose", timeout=5).json()["checks"]["workers"]["idle"] == 2,
        20,
        "both workers idle",
    )


def test_stop_agent_stops_claiming_but_claimed_runs_finish(agent: Agent, marker: Path) -> None:
    sup = agent.supervisor(workers=1)
    assert sup.ctl("start", "agent").returncode == 0
    deployment = agent.deploy("show_env")
    out = agent.tmp / "slow.json"
    slow = agent.run(deployment, {"out": str(out), "keys": [], "pause": 6})
    wait_for(
        lambda: demo.read_run(agent.client, slow)["state"]["type"] == "RUNNING",
        60,
        "the slow run to be running",
    )

    result = sup.ctl("stop", "agent")
    assert result.returncode == 0, result.stdout
    status = sup.status()
    assert status["agent"] == "STOPPED"
    assert status["agent-worker:agent-worker_00"] == "RUNNING"  # workers keep going

    later = agent.run(agent.deploy("record"), {"marker": str(marker)})
    states = agent.wait([slow], timeout=60)
    assert states[slow]["type"] == "COMPLETED"
    time.sleep(3)  # time enough for a claim, had anything been polling
    assert demo.read_run(agent.client, later)["state"]["type"] == "SCHEDULED"

    # Starting again picks up where it left off.
    assert sup.ctl("start", "agent").returncode == 0
    assert agent.wait([later], timeout=60)[later]["type"] == "COMPLETED"
    assert executions(marker) == [later]
