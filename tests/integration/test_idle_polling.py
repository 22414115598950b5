"""Idle polling against the real server (issue 12): with the events stream connected the
idle poller polls every 30 s (poll_interval_max_pushed) instead of every 10 s, yet an
ad-hoc run is still picked up at once (push) and a deployment's scheduled run starts on
time (a deployment event, then look-ahead)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from examples import demo
from tests.integration.conftest import FLOWS_DIR, Agent
from tests.integration.harness import wait_for

PUSHED_CAP = 30.0  # the default poll_interval_max_pushed
# The first scheduled run falls due this long after its deployment is made. Later than
# the fast polls the deployment event starts reach with prefetch (0.5+1+2+4+8 s, then
# 16 s more: a poll at 15.5 s sees runs due by 25.5 s), earlier than the one after (at
# 31.5 s): only the look-ahead has the run claimed as its prefetch window opens.
FIRST_DUE = 28.0


def metric(agent: Agent, line_start: str) -> float:
    text = requests.get(f"{agent.env['AGENT_ADDRESS']}/metrics", timeout=5).text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line_start))


def polls(agent: Agent) -> float:
    return metric(agent, "agent_polls_total")


def poll_check(agent: Agent) -> dict[str, Any]:
    url = f"{agent.env['AGENT_ADDRESS']}/api/health?verbose"
    check: dict[str, Any] = requests.get(url, timeout=5).json()["checks"]["poll"]
    return check


def start_idle_agent(agent: Agent) -> None:
    agent.start_poller(env={"AGENT_ADDRESS": agent.env["AGENT_ADDRESS"]})
    agent.start_worker()
    wait_for(lambda: "events stream connected" in agent.procs.log("poller"), 60, "the stream")


def moment(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def entered(agent: Agent, run_id: str, state_type: str) -> float:
    """When the run first entered a state of this type, by the server's clock."""
    history = agent.client.request("states", "GET", f"/flow_run_states/?flow_run_id={run_id}")
    return min(moment(s["timestamp"]) for s in history if s["type"] == state_type)


def test_idle_with_the_stream_polls_every_30s_and_still_takes_an_ad_hoc_run_at_once(
    agent: Agent,
) -> None:
    # Made first: a deployment made later would wake the poller by its own event.
    deployment = agent.deploy("record")
    start_idle_agent(agent)
    # Doubling from 0.5 s reaches the cap after 0.5+1+2+4+8+16 = 31.5 s.
    wait_for(lambda: poll_check(agent)["interval_seconds"] == PUSHED_CAP, 60, "the 30 s cap")
    assert poll_check(agent)["interval_cap_seconds"] == PUSHED_CAP
    assert "30s while the events stream is connected" in agent.procs.log("poller")
    before, began = polls(agent), time.monotonic()
    wait_for(lambda: polls(agent) > before, PUSHED_CAP + 20, "the next idle poll")
    gap = time.monotonic() - began
    # Not 10 s apart (the cap without the stream); the upper margin is for a loaded
    # machine's slow answer to the poll itself.
    assert PUSHED_CAP - 3 < gap < PUSHED_CAP + 15, f"idle polls {gap:.1f}s apart"
    assert polls(agent) == before + 1

    # Idle, the next poll 30 s away: the run's event wakes the poller.
    run_id = agent.run(deployment, {"marker": str(agent.tmp / "ran.txt")})
    created = moment(demo.read_run(agent.client, run_id)["created"])
    wait_for(lambda: agent.states(run_id)[-1] != "SCHEDULED", 10, "the run to be claimed")
    picked_up = entered(agent, run_id, "PENDING") - created
    assert picked_up < 2.0, f"claimed {picked_up:.2f}s after it was made"
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"


def test_a_new_deployments_first_scheduled_run_starts_on_time(agent: Agent) -> None:
    start_idle_agent(agent)
    wait_for(lambda: poll_check(agent)["interval_seconds"] >= 8, 30, "idle polls")
    flow = agent.client.request("create_flow", "POST", "/flows/", {"name": "record"})
    anchor = datetime.now(UTC) + timedelta(seconds=FIRST_DUE)
    body = {
        "name": "scheduled",
        "flow_id": flow["id"],
        "work_pool_name": agent.pool,
        "entrypoint": "agent_test_flows.py:record",
        "pull_steps": [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(FLOWS_DIR)}}
        ],
        "parameters": {"marker": str(agent.tmp / "scheduled.txt")},
        "enforce_parameter_schema": False,
        "schedules": [
            {
                "schedule": {"interval": 3600, "anchor_date": anchor.isoformat()},
                "active": True,
            }
        ],
    }
    before = polls(agent)
    deployment = agent.client.request("create_deployment", "POST", "/deployments/", body)["id"]
    try:
        # The deployment event: a poll at once, then polls from the shortest interval.
        wait_for(lambda: polls(agent) > before, 10, "a poll on the deployment event")
        # Back from 8 s or more to the shortest, doubling again since (0.5, 1, 2 ...).
        assert poll_check(agent)["interval_seconds"] < 8
        assert "event prefect.deployment.created" in agent.procs.log("poller")

        def first_run() -> dict[str, Any] | None:
            query = {
                "flow_runs": {"deployment_id": {"any_": [deployment]}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 1,
            }
            runs = agent.client.request("filter_flow_runs", "POST", "/flow_runs/filter", query)
            return runs[0] if runs else None

        wait_for(first_run, 15, "Prefect's scheduler to make the run")
        run = first_run()
        assert run is not None
        due = moment(run["expected_start_time"])
        assert abs(due - anchor.timestamp()) < 1
        wait_for(lambda: "RUNNING" in agent.states(run["id"]), FIRST_DUE + 30, "the run to start")
        late = entered(agent, run["id"], "RUNNING") - due
        assert -1.0 < late < 2.0, f"Running {late:+.2f}s from its scheduled time"
        assert agent.wait([run["id"]])[run["id"]]["type"] == "COMPLETED"
    finally:
        agent.client.request("delete_deployment", "DELETE", f"/deployments/{deployment}")
