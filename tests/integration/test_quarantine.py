"""A poison spec under the repository's supervisord.conf, against a real server: a spec
whose taking kills the worker (the hidden AGENT_TEST_KILL_ON_SPEC seam: SIGKILL, as the
OOM killer or a segfault) kills two workers, is then quarantined to failed/ and its run
marked Failed saying how each died, while the other runs on the host complete and no
agent program ends FATAL."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Agent, executions
from tests.integration.harness import wait_for

POLLER = "agent"
WORKERS = ("agent-worker:agent-worker_00", "agent-worker:agent-worker_01")


def metric(agent: Agent, name: str) -> float | None:
    text = requests.get(f"{agent.env['AGENT_ADDRESS']}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def test_a_spec_that_kills_its_workers_is_quarantined_and_the_other_runs_complete(
    agent: Agent, marker: Path
) -> None:
    deployment = agent.deploy("record")
    poison = agent.run(deployment, {"marker": str(marker)})
    good = [agent.run(deployment, {"marker": str(marker)}) for _ in range(3)]
    sup = agent.supervisor(workers=2, AGENT_TEST_KILL_ON_SPEC=poison)
    result = sup.ctl("start", POLLER)
    assert result.returncode == 0, result.stdout + result.stderr

    finals = agent.wait([poison, *good], timeout=80)

    # What a user of Prefect sees: the run Failed, saying why and how each worker died.
    state = finals[poison]
    assert state["type"] == "FAILED", state
    message = str(state["message"])
    assert message.startswith(
        "Quarantined: taking this run killed 2 worker processes before its flow started: "
        "worker agent-worker_0"
    ), message
    assert (
        len(re.findall(r"\(PID \d+, took it at [\d:]+\) ended: terminated by SIGKILL", message))
        == 2
    ), message
    assert message.endswith("Its spec is in failed/ and no worker takes it again.")
    assert agent.states(poison) == ["SCHEDULED", "PENDING", "FAILED"]
    # What an operator finds on the host: the spec in failed/ with the same reason.
    failed = agent.spool / "failed"
    assert (failed / f"{poison}.reason").read_text() == message
    assert (failed / f"{poison}.json").is_file()
    assert not (agent.spool / "cur" / f"{poison}.json").exists()
    assert not (agent.spool / "cur" / f"{poison}.takes").exists()

    # The other runs flowed on; the poison one never ran.
    assert {run_id: finals[run_id]["type"] for run_id in good} == dict.fromkeys(good, "COMPLETED")
    assert sorted(executions(marker)) == sorted(good)

    # Two kills, then no more: every program RUNNING, none FATAL, and the alert's counter.
    wait_for(
        lambda: [sup.status().get(n) for n in (POLLER, *WORKERS)] == ["RUNNING"] * 3,
        30,
        "the poller and both workers RUNNING",
    )
    supervisord_log = (agent.run_dir / "supervisord.log").read_text()
    assert (
        len(re.findall(r"exited: agent-worker_0\d \(terminated by SIGKILL", supervisord_log)) == 2
    )
    assert "FATAL" not in supervisord_log
    wait_for(lambda: metric(agent, "agent_specs_quarantined_total") == 1, 20, "the metric")
