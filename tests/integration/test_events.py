"""Push wake-ups from the real server's events stream: a run made ad hoc wakes the idle
poller at once, a Cancelling starts the cancellation at once, and the stream's state
shows in health and metrics."""

from __future__ import annotations

import time

import requests

from examples import demo
from tests.integration.conftest import Agent
from tests.integration.harness import wait_for


def metric(agent: Agent, line_start: str) -> float:
    text = requests.get(f"{agent.env['AGENT_ADDRESS']}/metrics", timeout=5).text
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(line_start)]
    return sum(values)


def test_an_ad_hoc_run_and_its_cancellation_wake_the_idle_poller_through_the_stream(
    agent: Agent,
) -> None:
    # Idle polls a minute apart (hidden setting): only a push picks the run up quickly.
    slow = {"AGENT_ADDRESS": agent.env["AGENT_ADDRESS"], "AGENT_POLL_INTERVAL_MAX": "60"}
    agent.start_poller(env=slow)
    agent.start_worker("--cancel-grace-seconds", "2")
    wait_for(lambda: "events stream connected" in agent.procs.log("poller"), 60, "the stream")
    health = requests.get(f"{agent.env['AGENT_ADDRESS']}/api/health?verbose", timeout=5).json()
    assert health["checks"]["events"]["connected"] is True
    assert metric(agent, "agent_events_stream_connected") == 1.0
    deployment = agent.deploy("sleeper")
    time.sleep(18)  # idle: polls at 15.5 s and 31.5 s after start (0.5 s doubling)

    created = time.monotonic()
    run_id = agent.run(deployment, {"pause": 60})
    wait_for(
        lambda: demo.read_run(agent.client, run_id)["state"]["type"] != "SCHEDULED",
        10,
        "the run to be claimed",
    )
    # The next idle poll was about 10 s away: the event woke the poller.
    assert time.monotonic() - created < 6
    wait_for(
        lambda: (
            f"event prefect.flow-run.Scheduled for flow run {run_id}" in agent.procs.log("poller")
        ),
        10,
        "the Scheduled event to reach the poller",
    )
    wait_for(
        lambda: demo.read_run(agent.client, run_id)["state"]["type"] == "RUNNING", 90, "Running"
    )
    assert metric(agent, 'agent_events_received_total{kind="wake"}') >= 1

    demo.set_state(agent.client, run_id, {"type": "CANCELLING", "name": "Cancelling"}, True)
    wait_for(
        lambda: metric(agent, 'agent_events_received_total{kind="cancel"}') >= 1,
        10,
        "the Cancelling event",
    )
    assert agent.wait([run_id], 60)[run_id]["type"] in ("CANCELLED", "CRASHED")
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 30, "the run to be settled")
    assert demo.read_run(agent.client, run_id)["state"]["type"] == "CANCELLED"


def test_with_no_events_the_poller_does_not_subscribe(agent: Agent) -> None:
    agent.start_poller("--no-events")
    agent.start_worker()
    marker = agent.tmp / "ran.txt"
    run_id = agent.run(agent.deploy("record"), {"marker": str(marker)})
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"
    assert "events stream" not in agent.procs.log("poller")
