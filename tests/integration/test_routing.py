"""Label routing, and two agents sharing one pool: every run executes exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.claim import WORKER_LABEL
from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import wait_for


def test_run_needing_gpu_goes_only_to_an_agent_with_that_label(agent: Agent, marker: Path) -> None:
    deployment = agent.deploy("record", job_variables={"labels": ["gpu"]})
    plain = agent.tmp / "plain-spool"
    agent.start_poller("-n", "plain", "-l", "cpu", "--no-hostname-label", spool=plain, name="plain")
    agent.start_worker(spool=plain, name="plain-worker")
    run_id = agent.run(deployment, {"marker": str(marker)})
    skipped = f"flow run {run_id} needs labels ['gpu']: not for us"
    wait_for(
        lambda: agent.procs.log("plain").count(skipped) >= 2,
        60,
        "the plain agent to see the run twice and leave it",
    )
    assert demo.read_run(agent.client, run_id)["state"]["type"] == "SCHEDULED"
    assert executions(marker) == []

    agent.start_poller("-n", "gpu-box", "-l", "gpu", spool=agent.spool, name="gpu")
    agent.start_worker(name="gpu-worker")
    state = agent.wait([run_id], timeout=60)[run_id]
    assert state["type"] == "COMPLETED"
    assert executions(marker) == [run_id]
    assert claimed_by(agent, run_id) == "gpu-box"


@pytest.mark.backends
def test_two_agents_on_one_pool_run_each_run_exactly_once(agent: Agent, marker: Path) -> None:
    deployment = agent.deploy("record")
    for side in ("a", "b"):
        spool = agent.tmp / f"spool-{side}"
        agent.start_poller("-n", f"agent-{side}", spool=spool, name=f"poller-{side}")
        for i in range(2):
            agent.start_worker(spool=spool, name=f"worker-{side}{i}")
    run_ids = [agent.run(deployment, {"marker": str(marker)}) for _ in range(12)]
    states = agent.wait(run_ids, timeout=240)

    assert [states[r]["type"] for r in run_ids] == ["COMPLETED"] * 12
    ran = executions(marker)
    assert sorted(ran) == sorted(run_ids), "a run executed twice or not at all"
    for run_id in run_ids:
        assert agent.states(run_id).count("PENDING") == 1
    assert {claimed_by(agent, r) for r in run_ids} == {"agent-a", "agent-b"}  # both took part


def claimed_by(agent: Agent, run_id: str) -> str:
    """The agent a run's labels name. A loaded server may answer the labels call with
    503 past the client's retries; the poller's labels duty then labels it a round or
    two later, perhaps after the run has finished: waited for, not assumed."""
    labels: dict[str, str] = {}

    def labelled() -> bool:
        labels.update(demo.read_run(agent.client, run_id)["labels"])
        return WORKER_LABEL in labels

    wait_for(labelled, 30, f"flow run {run_id} to be labelled")
    return labels[WORKER_LABEL]
