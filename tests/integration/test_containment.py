"""Run containment on this host's real cgroups (v1 memory, cpu and pids controllers; the v2
tree for tracking and kill): memory, CPU and process limits, hard timeouts, whole-tree
kill on cancel, the cause of death in Prefect, and honest degradation without cgroups."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.api.parse import parse_api_time
from examples import demo
from tests.integration.cgroupfs import pids_in
from tests.integration.conftest import Agent
from tests.integration.harness import wait_for

GRACE = 2.0  # --cancel-grace-seconds for these tests


@pytest.fixture
def contained(agent: Agent) -> Agent:
    if "AGENT_CGROUP_ROOT" not in agent.env:
        pytest.skip("this host has no cgroup tree this user may write (run as root)")
    return agent


def start(agent: Agent, *worker_args: str) -> list[int]:
    """A poller and one worker; their pids."""
    agent.start_poller()
    agent.start_worker("--cancel-grace-seconds", str(GRACE), *worker_args)
    return [p.pid for p in agent.procs.popens]


def alive(pids: list[int]) -> bool:
    return all(Path(f"/proc/{pid}").exists() for pid in pids)


def final(agent: Agent, run_id: str, timeout: float = 120) -> dict[str, Any]:
    """The run's state once its worker has settled it: the engine's Crashed on SIGTERM
    comes first and is final too, so a final state alone is not enough."""
    agent.wait([run_id], timeout)
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 60, "the run to be settled")
    state: dict[str, Any] = demo.read_run(agent.client, run_id)["state"]
    assert state.get("type") in demo.FINAL, f"run {run_id} not final: {state}"
    return state


def emptied(agent: Agent) -> None:
    """Every run's cgroup is empty and removed once its worker has settled it (a final
    state comes from the engine a moment before its process exits)."""
    root = Path(agent.env["AGENT_CGROUP_ROOT"])
    wait_for(lambda: not pids_in(root) and not list(root.glob("run-*")), 30, "empty cgroups")


def run_logs(agent: Agent, run_id: str, waiting_for: str | None = None) -> str:
    """The run's log in Prefect; with ``waiting_for``, once it holds that text (the
    agent's lines are sent in batches, after the state)."""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}

    def text() -> str:
        rows = agent.client.request("logs", "POST", "/logs/filter", body)
        return "\n".join(str(r["message"]) for r in rows)

    if waiting_for is not None:
        wait_for(lambda: waiting_for in text(), 30, f"{waiting_for!r} in the run's log")
    return text()


def test_a_flow_past_its_memory_limit_is_crashed_by_the_oom_killer_and_the_host_goes_on(
    contained: Agent,
) -> None:
    agent = contained
    pids = start(agent)
    hog = agent.deploy("hog", job_variables={"memory_limit": "128MiB"})
    run_id = agent.run(hog, {"mib": 1024})
    state = final(agent, run_id)
    assert state["type"] == "CRASHED"
    # What the on-call engineer reads in the UI: the OOM killer, at that limit.
    assert "killed by the OOM killer at its memory limit of 128MiB" in str(state["message"])
    logs = run_logs(agent, run_id, waiting_for="Last ")
    assert "peak memory 128MiB" in logs
    # The flight recorder: the flow's last output lines are in the run's log.
    assert "hog: allocating 1024 MiB" in logs
    # The host goes on: the next run completes, on the same agent processes.
    other = agent.deploy("record", name="after-oom")
    marker = agent.tmp / "after.txt"
    second = agent.run(other, {"marker": str(marker)})
    assert final(agent, second)["type"] == "COMPLETED"
    assert alive(pids)
    emptied(agent)


@pytest.mark.launches
def test_cancelling_a_flow_kills_the_daemon_it_left_outside_its_process_group(
    contained: Agent,
) -> None:
    agent = contained
    start(agent)
    pidfile = agent.tmp / "daemon.pid"
    deployment = agent.deploy("daemonize")
    run_id = agent.run(deployment, {"pidfile": str(pidfile)})
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 90, "the daemon to start")
    daemon = int(pidfile.read_text())
    assert os.getpgid(daemon) != os.getpgid(os.getpid())  # it left every group we know
    demo.set_state(agent.client, run_id, {"type": "CANCELLING", "name": "Cancelling"}, True)
    assert final(agent, run_id)["type"] == "CANCELLED"
    ps = subprocess.run(
        ["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True
    )
    # A zombie has ended (it waits for init to reap it): only a live process counts.
    rows = [line.split(None, 2) for line in ps.stdout.splitlines()]
    left = [row for row in rows if row[0] == str(daemon) and not row[1].startswith("Z")]
    assert left == [], f"the daemon survived the cancellation: {left}"
    emptied(agent)


def test_a_run_past_timeout_seconds_is_failed_within_the_timeout_and_the_grace(
    contained: Agent,
) -> None:
    agent = contained
    start(agent)
    deployment = agent.deploy("sleeper", job_variables={"timeout_seconds": 3})
    run_id = agent.run(deployment, {"pause": 60})
    state = final(agent, run_id)
    assert state["type"] == "FAILED"
    assert "exceeded timeout_seconds=3" in str(state["message"])
    history = agent.client.request("states", "GET", f"/flow_run_states/?flow_run_id={run_id}")
    times = {s["type"]: parse_api_time(s["timestamp"]) or 0.0 for s in history}
    # Counted from the process start, which is just before Running.
    took = times["FAILED"] - times["RUNNING"]
    assert took <= 3 + GRACE + 2.0, f"failed {took:.1f}s after Running"
    assert "sleeper: sleeping 60" in run_logs(agent, run_id, "Last ")  # the flight recorder


def test_a_fork_bomb_under_pids_limit_is_contained_and_the_host_keeps_working(
    contained: Agent,
) -> None:
    agent = contained
    pids = start(agent)
    out = agent.tmp / "bomb.json"
    deployment = agent.deploy("fork_bomb", job_variables={"pids_limit": 64})
    run_id = agent.run(deployment, {"out": str(out), "seconds": 4})
    final(agent, run_id)
    seen = json.loads(out.read_text())
    assert seen["refused"] > 0 and seen["started"] < 64, seen
    marker = agent.tmp / "after.txt"
    second = agent.run(agent.deploy("record", name="after-bomb"), {"marker": str(marker)})
    assert final(agent, second)["type"] == "COMPLETED"
    assert alive(pids)


def test_cpu_limit_holds_a_busy_loop_to_half_a_core(contained: Agent) -> None:
    agent = contained
    start(agent)
    out = agent.tmp / "busy.json"
    deployment = agent.deploy("busy", job_variables={"cpu_limit": 0.5})
    run_id = agent.run(deployment, {"out": str(out), "seconds": 5})
    assert final(agent, run_id)["type"] == "COMPLETED"
    share = json.loads(out.read_text())["share"]
    assert 0.4 <= share <= 0.6, f"the busy loop got {share:.2f} of a core"


def test_a_bad_limit_or_one_above_the_ceiling_fails_that_run_alone(contained: Agent) -> None:
    agent = contained
    start(agent, "--max-memory-limit", "1GiB")
    bad = agent.run(agent.deploy("record", job_variables={"memory_limit": "lots"}), {"marker": "x"})
    above = agent.run(
        agent.deploy("record", job_variables={"memory_limit": "4GiB"}, name="above"),
        {"marker": "x"},
    )
    marker = agent.tmp / "ok.txt"
    fine = agent.run(agent.deploy("record", name="fine"), {"marker": str(marker)})
    states = {run: final(agent, run) for run in (bad, above, fine)}
    assert states[bad]["type"] == "FAILED"
    assert "job variable `memory_limit` 'lots'" in str(states[bad]["message"])
    assert states[above]["type"] == "FAILED"
    ceiling = "memory_limit=4GiB is above this host's ceiling --max-memory-limit=1GiB"
    assert ceiling in str(states[above]["message"])
    assert states[fine]["type"] == "COMPLETED"


@pytest.mark.parametrize("mode", ["strict", "best-effort"])
def test_without_containment_the_agent_says_so_and_runs_limits_only_best_effort(
    agent: Agent, mode: str
) -> None:
    not_cgroup = agent.tmp / "not-a-cgroup"
    not_cgroup.mkdir()
    agent.start_poller()
    agent.start_worker("--cgroup-root", str(not_cgroup), "--containment", mode)
    wait_for(lambda: "containment:" in agent.procs.log("worker"), 30, "the containment line")
    assert f"containment: none: --cgroup-root {not_cgroup} is not in a cgroup filesystem" in (
        agent.procs.log("worker")
    )
    marker = agent.tmp / "ran.txt"
    limited = agent.run(
        agent.deploy("record", job_variables={"memory_limit": "256MiB"}), {"marker": str(marker)}
    )
    state = final(agent, limited)
    message = str(state.get("message"))
    if mode == "strict":
        assert state["type"] == "FAILED"
        assert "memory_limit=256MiB cannot be enforced: this host has no cgroup" in message
        assert not marker.exists()
    else:
        assert state["type"] == "COMPLETED"
        run_logs(agent, limited, "running without it (--containment best-effort)")
    status = agent.procs.run(["agent", "status", "--spool", str(agent.spool), "--json"])
    assert json.loads(status.stdout)["containment"]["version"] == "none"
