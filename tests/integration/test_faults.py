"""Fault injection against a real server: the poller killed (kill -9) while it claims a
burst, killed between a claim and its publish, and the agent stopped and started (and its
workers restarted) mid-burst. Afterwards every run is final in Prefect, each executed
exactly once, and nothing is left behind in the spool."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import Supervisor, wait_for

# After its Scheduled (and the server's Late, also SCHEDULED, for a run that waited in a
# long burst): one claim, one run, one outcome.
ONE_CLAIM_ONE_RUN = ["PENDING", "RUNNING", "COMPLETED"]


def history(agent: Agent, run_id: str) -> list[str]:
    states = agent.states(run_id)
    assert states[0] == "SCHEDULED", states
    return [s for s in states if s != "SCHEDULED"]


def start_agent(agent: Agent, workers: int) -> Supervisor:
    sup = agent.supervisor(workers=workers)
    result = sup.ctl("start", "agent")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(
        lambda: list(sup.status().values()) == ["RUNNING"] * (workers + 1),
        30,
        f"agent and {workers} workers RUNNING",
    )
    return sup


def poller_pid(sup: Supervisor) -> int:
    out = sup.ctl("pid", "agent").stdout.strip()
    return int(out) if out.isdigit() else 0


def wait_restarted(sup: Supervisor, killed: int) -> None:
    """Supervisor restarts a killed poller (autorestart=unexpected); a kill during its
    startsecs counts as a failed start, and after startretries of those supervisor gives
    up (FATAL): then it is started again, as an operator would."""
    wait_for(
        lambda: poller_pid(sup) not in (0, killed) or sup.status()["agent"] == "FATAL",
        30,
        "supervisor to restart the poller",
    )
    if sup.status()["agent"] == "FATAL":
        result = sup.ctl("start", "agent")
        assert result.returncode == 0, result.stdout + result.stderr


def claim_in_flight(agent: Agent, within: float) -> bool:
    """Wait (polling tmp/ every millisecond) up to ``within`` s for a write-ahead spec."""
    deadline = time.monotonic() + within
    tmp = agent.spool / "tmp"
    while time.monotonic() < deadline:
        if any(p.name.endswith(".json") for p in tmp.iterdir()):
            return True
        time.sleep(0.001)
    return False


def spool_files(agent: Agent, state: str) -> list[str]:
    folder = agent.spool / state
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))


def assert_all_completed_once(agent: Agent, marker: Path, run_ids: list[str]) -> None:
    states = agent.wait(run_ids, timeout=150)
    assert {rid: states[rid].get("type") for rid in run_ids} == dict.fromkeys(run_ids, "COMPLETED")
    assert sorted(executions(marker)) == sorted(run_ids)  # each exactly once, none missing
    for run_id in run_ids:
        assert history(agent, run_id) == ONE_CLAIM_ONE_RUN, (run_id, agent.states(run_id))


def test_poller_killed_at_random_points_of_a_burst_loses_and_repeats_nothing(
    agent: Agent, marker: Path
) -> None:
    rng = random.Random(5)
    sup = start_agent(agent, workers=2)
    # Runs of 3 s: a warm launch finishes a run of `record` so fast that the burst would
    # be claimed before the last kill (as 12 runs of 2 s once were, on CI).
    deployment = agent.deploy("slow_record")
    run_ids = [agent.run(deployment, {"marker": str(marker), "pause": 3}) for _ in range(16)]

    pids_killed: list[int] = []
    for _ in range(3):
        wait_for(lambda: poller_pid(sup) > 0, 30, "a poller to kill")
        pid = poller_pid(sup)
        time.sleep(rng.uniform(0.2, 1.5))
        # Then at a random moment of the next claim in flight (a spec written ahead, not
        # yet published or discarded), if one comes soon: a window a plain random kill
        # rarely hits. Before the server commits the claim, or after (reply unseen).
        if claim_in_flight(agent, within=6.0):
            time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        pids_killed.append(pid)
        wait_restarted(sup, pid)
    wait_for(lambda: sup.status()["agent"] == "RUNNING", 30, "the poller RUNNING again")
    assert poller_pid(sup) not in pids_killed
    # The kills landed while the burst was being claimed, not after it.
    claimed_before_end = [
        rid for rid in run_ids if demo.read_run(agent.client, rid)["state"]["type"] == "SCHEDULED"
    ]
    assert claimed_before_end, "the burst was claimed before the last kill: kill earlier"

    assert_all_completed_once(agent, marker, run_ids)
    # Write-ahead specs of claims cut short are settled by the next poller's reconcile.
    wait_for(lambda: not spool_files(agent, "tmp"), 20, "tmp/ to be empty")
    assert spool_files(agent, "new") == []
    wait_for(
        lambda: spool_files(agent, "done") == sorted(f"{rid}.json" for rid in run_ids),
        30,
        "every run settled in done/",
    )
    assert sup.status()["agent"] == "RUNNING"


def test_poller_killed_between_claim_and_publish_recovers_the_claim(
    agent: Agent, marker: Path
) -> None:
    deployment = agent.deploy("record")
    agent.start_worker()  # a live worker: the poller claims only for free workers
    agent.start_poller(env={"AGENT_TEST_CRASH_AFTER_CLAIM": "1"})
    crashing = agent.procs.popens[-1]
    run_id = agent.run(deployment, {"marker": str(marker)})

    wait_for(lambda: crashing.poll() is not None, 60, "the poller to die after its claim")
    assert crashing.returncode == 70, agent.procs.log("poller")
    # Claimed on the server, but only written ahead here: nothing a worker can take.
    assert demo.read_run(agent.client, run_id)["state"]["type"] == "PENDING"
    assert spool_files(agent, "tmp") == [f"{run_id}.json"]
    assert spool_files(agent, "new") == []
    time.sleep(2)  # the worker keeps polling new/: it must not have run anything
    assert executions(marker) == []

    agent.start_poller(name="poller2")
    assert agent.wait([run_id], timeout=60)[run_id]["type"] == "COMPLETED"
    assert executions(marker) == [run_id]
    assert history(agent, run_id) == ONE_CLAIM_ONE_RUN  # one claim: no second Pending
    assert "claimed: the earlier claim had succeeded" in agent.procs.log("poller2")
    assert spool_files(agent, "tmp") == []
    assert spool_files(agent, "new") == []


def test_stop_and_start_agent_mid_burst_loses_and_repeats_nothing(
    agent: Agent, marker: Path
) -> None:
    sup = start_agent(agent, workers=2)
    quick, slow = agent.deploy("record"), agent.deploy("slow_record")
    run_ids = [
        agent.run(slow, {"marker": str(marker), "pause": 2})
        if i % 2
        else agent.run(quick, {"marker": str(marker)})
        for i in range(10)
    ]

    def started() -> int:
        return sum(
            demo.read_run(agent.client, rid)["state"]["type"] != "SCHEDULED" for rid in run_ids
        )

    wait_for(lambda: started() >= 3, 90, "the burst to be under way")
    assert sup.ctl("stop", "agent").returncode == 0
    assert sup.status()["agent"] == "STOPPED"
    time.sleep(2)
    assert sup.ctl("start", "agent").returncode == 0
    wait_for(lambda: sup.status()["agent"] == "RUNNING", 30, "the poller RUNNING again")

    wait_for(lambda: started() >= 6, 90, "more of the burst under way")
    assert started() < len(run_ids), "the burst was claimed before the restart: restart earlier"
    # Workers drain on TERM (they finish their flows), then start again.
    result = sup.ctl("restart", "agent-worker:*")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(
        lambda: list(sup.status().values()) == ["RUNNING"] * 3, 30, "agent and workers RUNNING"
    )

    assert_all_completed_once(agent, marker, run_ids)
    wait_for(lambda: not spool_files(agent, "tmp"), 20, "tmp/ to be empty")
    assert spool_files(agent, "new") == []
