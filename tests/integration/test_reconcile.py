"""Stranded runs against a real Prefect server: runs claimed by this agent on this host
(Pending or Running, with its labels) that its spool has no record of, as after a
poller crash right after a claim with the spool lost."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest

from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import wait_for

NAME = "stranded-agent"


def claim_as_the_poller(agent: Agent, run_id: str, host: str, name: str = NAME) -> str:
    """What `Poller._claim` and `_label` send, without any spec written anywhere."""
    transition_id = str(uuid.uuid4())
    answer = demo.set_state(agent.client, run_id, demo.pending_state(transition_id))
    assert answer["status"] == "ACCEPT", answer
    agent.client.update_flow_run_labels(
        run_id,
        {
            "prefect.worker.name": name,
            "prefect.work-pool.name": agent.pool,
            "local-agent.host": host,
        },
    )
    return transition_id


@pytest.mark.backends
def test_stranded_runs_are_run_once_if_never_started_else_reported_crashed(
    agent: Agent, marker: Path
) -> None:
    host = socket.gethostname()
    deployment = agent.deploy("record")
    params: dict[str, object] = {"marker": str(marker)}
    pending, running, elsewhere, other_name = (agent.run(deployment, params) for _ in range(4))
    transition_id = claim_as_the_poller(agent, pending, host)
    claim_as_the_poller(agent, running, host)
    answer = demo.set_state(agent.client, running, {"type": "RUNNING", "name": "Running"})
    assert answer["status"] == "ACCEPT", answer
    claim_as_the_poller(agent, elsewhere, "another-host")
    claim_as_the_poller(agent, other_name, host, name="another-agent")

    # The Pending states are seconds old: the threshold is 0 so the first look acts.
    agent.start_poller("-n", NAME, env={"AGENT_STRANDED_AFTER_SECONDS": "0"})
    agent.start_worker()
    states = agent.wait([pending, running], timeout=120)

    assert states[pending]["type"] == "COMPLETED", states[pending]
    assert executions(marker) == [pending]
    # Run under the claim already made: one Pending, no second claim.
    assert agent.states(pending) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    wait_for((agent.spool / "done" / f"{pending}.json").exists, 20, "the run to be settled")
    spec = json.loads((agent.spool / "done" / f"{pending}.json").read_bytes())
    assert spec["transition_id"] == transition_id
    assert spec["agent_name"] == NAME

    assert states[running]["type"] == "CRASHED", states[running]
    assert states[running]["message"] == (
        f"Flow run {running} was claimed by agent {NAME} on {host}, which has no record of "
        "it running (spec lost); marked Crashed instead of running it again."
    )
    assert agent.states(running) == ["SCHEDULED", "PENDING", "RUNNING", "CRASHED"]

    # Runs claimed by another host, or another agent on this host, are not ours to settle.
    for run_id in (elsewhere, other_name):
        assert demo.read_run(agent.client, run_id)["state"]["type"] == "PENDING"
        assert not list(agent.spool.rglob(f"{run_id}*"))
    log = agent.procs.log("poller")
    assert f"flow run {pending} (" in log and "spooled again" in log
    assert f"Flow run {running} was claimed by agent {NAME}" in log
