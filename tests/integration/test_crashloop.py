"""Crash loops under the repository's supervisord.conf, against a real server.

Supervisor restarts a worker that dies after its startsecs at once and for ever. A worker
killed with kill -9 again and again is not restarted in a tight loop: past the threshold
(lowered to 2 here through the hidden AGENT_CRASH_LOOP_THRESHOLD) its next process stays
alive in backoff for the policy's delay (10 s at the threshold) while `agent status`,
/api/health and /metrics show it, and then takes runs again. Stops by SIGTERM
(`supervisorctl restart`, and a kill after SIGTERM, as supervisor's after stopwaitsecs)
never count."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import Supervisor, wait_for

POLLER = "agent"
WORKER = "agent-worker:agent-worker_00"
WORKER_ID = "agent-worker_00"
FIRST_DELAY = 10.0  # defaults.CRASH_LOOP_FIRST_DELAY: the wait at the threshold


def start(agent: Agent, threshold: int) -> Supervisor:
    sup = agent.supervisor(workers=1, AGENT_CRASH_LOOP_THRESHOLD=str(threshold))
    result = sup.ctl("start", POLLER)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(
        lambda: [sup.status().get(n) for n in (POLLER, WORKER)] == ["RUNNING"] * 2,
        30,
        "the poller and its worker RUNNING",
    )
    return sup


def pid_of(sup: Supervisor) -> int:
    out = sup.ctl("pid", WORKER).stdout.strip()
    return int(out) if out.isdigit() else 0


def entry(agent: Agent) -> dict[str, Any]:
    try:
        body: dict[str, Any] = json.loads(
            (agent.spool / "workers" / f"{WORKER_ID}.json").read_text()
        )
    except (OSError, ValueError):
        return {}
    return body


def running_and_registered(sup: Supervisor, agent: Agent, old_pid: int) -> bool:
    """A new process, past supervisor's startsecs (RUNNING), in the registry."""
    if sup.status().get(WORKER) != "RUNNING":
        return False
    pid = pid_of(sup)
    return pid not in (0, old_pid) and entry(agent).get("pid") == pid


def kill_worker(sup: Supervisor, agent: Agent) -> int:
    pid = pid_of(sup)
    assert pid > 0 and entry(agent).get("pid") == pid
    os.kill(pid, signal.SIGKILL)
    return pid


def health(agent: Agent) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{agent.env['AGENT_ADDRESS']}/api/health?verbose", timeout=5)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def metric(agent: Agent, name: str, labels: dict[str, str]) -> float | None:
    text = requests.get(f"{agent.env['AGENT_ADDRESS']}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def status(agent: Agent) -> tuple[int, dict[str, Any]]:
    result = agent.procs.run(["agent", "status", "--spool", str(agent.spool), "--json"])
    assert result.stdout, result.stderr
    snapshot: dict[str, Any] = json.loads(result.stdout)
    [row] = [w for w in snapshot["workers"] if w["worker_id"] == WORKER_ID]
    return result.returncode, row


def test_a_worker_killed_again_and_again_backs_off_then_takes_runs(
    agent: Agent, marker: Path
) -> None:
    sup = start(agent, threshold=2)
    deployment = agent.deploy("record")
    wait_for(lambda: entry(agent).get("state") == "idle", 30, "the worker registered")
    wait_for(
        lambda: metric(agent, "agent_worker_crashes_total", {"worker": WORKER_ID}) == 0,
        10,
        "the worker's crash counter exported at 0",
    )

    # First kill: below the threshold, supervisor's restart takes runs at once.
    killed = kill_worker(sup, agent)
    wait_for(lambda: running_and_registered(sup, agent, killed), 30, "the first restart")
    assert entry(agent)["state"] == "idle"
    assert "exited unexpectedly once in the last 10 min" in sup.log("agent-worker_00")

    # Second kill: the threshold. The new process waits, alive, before taking runs.
    killed = kill_worker(sup, agent)
    wait_for(
        lambda: pid_of(sup) not in (0, killed) and entry(agent).get("pid") == pid_of(sup),
        30,
        "the second restart to register",
    )
    looping = pid_of(sup)
    body = entry(agent)
    assert body["state"] == "backoff", body
    assert body["exits"] == 2
    assert abs(body["until"] - body["since"] - FIRST_DELAY) < 1
    run_id = agent.run(deployment, {"marker": str(marker)})  # due now: must wait

    # Visible: /api/health (503, naming it), /metrics, `agent status`.
    code, checks = health(agent)
    assert code == 503, checks
    workers = checks["checks"]["workers"]
    assert workers["ok"] is False and workers["backoff"] == 1
    assert workers["reason"].startswith(
        f"worker {WORKER_ID} is crash-looping (exited unexpectedly 2 times in the last "
        "10 min); it takes runs again in "
    ), workers["reason"]
    assert workers["crash_looping"] == [
        {"worker_id": WORKER_ID, "exits": 2, "until": body["until"]}
    ]
    assert metric(agent, "agent_worker_crashes_total", {"worker": WORKER_ID}) == 2
    assert metric(agent, "agent_workers", {"state": "backoff"}) == 1
    rc, row = status(agent)
    assert rc == 3
    assert (row["state"], row["alive"], row["pid"], row["recent_exits"]) == (
        "backoff",
        True,
        looping,
        2,
    )
    assert row["backoff_until"] == body["until"]
    table = agent.procs.run(["agent", "status", "--spool", str(agent.spool)]).stdout
    assert f"worker {WORKER_ID} crash-looping (2 unexpected exits in 10 min" in table

    # Not restarted in a tight loop: the same process, alive, for the whole wait, and
    # the due run is not claimed for it meanwhile.
    looks = 0
    while True:
        pid, seen = pid_of(sup), sup.status()[WORKER]
        run_state = demo.read_run(agent.client, run_id)["state"]["type"]
        if entry(agent).get("state") != "backoff":
            break  # what was read above may be from after the wait
        assert (pid, seen, run_state) in {
            (looping, s, "SCHEDULED") for s in ("STARTING", "RUNNING")
        }
        assert time.time() < body["until"] + 15, "still in backoff long after its end"
        looks += 1
        time.sleep(0.2)
    assert looks >= 3
    after = entry(agent)
    assert after["state"] in ("idle", "busy") and after["pid"] == looping  # may take it at once
    assert time.time() >= body["until"] - 0.5
    log = sup.log("agent-worker_00")
    assert (
        f"worker {WORKER_ID} exited unexpectedly 2 times in the last 10 min; "
        f"waiting {FIRST_DELAY:.0f} s before taking runs"
    ) in log
    assert "backoff over, taking runs" in log

    # And then it takes runs again.
    assert agent.wait([run_id], timeout=90)[run_id]["type"] == "COMPLETED"
    assert executions(marker) == [run_id]
    assert pid_of(sup) == looping
    wait_for(lambda: entry(agent).get("state") == "idle", 30, "the run settled")
    wait_for(lambda: health(agent)[0] == 200, 20, "healthy again")
    rc, row = status(agent)
    assert (rc, row["state"], row["recent_exits"], row["backoff_until"]) == (0, "idle", 2, None)
    assert metric(agent, "agent_worker_crashes_total", {"worker": WORKER_ID}) == 2


def test_stops_by_sigterm_are_not_crashes(agent: Agent, marker: Path) -> None:
    """With a threshold of 1, any exit counted would put the worker in backoff."""
    sup = start(agent, threshold=1)
    wait_for(lambda: entry(agent).get("state") == "idle", 30, "the worker registered")

    # `supervisorctl restart`, idle and then while it runs a flow (it drains first).
    old = pid_of(sup)
    result = sup.ctl("restart", "agent-worker:*")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: running_and_registered(sup, agent, old), 30, "the worker restarted")
    slow = agent.deploy("slow_record")
    first = agent.run(slow, {"marker": str(marker), "pause": 4})
    wait_for(lambda: entry(agent).get("state") == "busy", 60, "the worker running a flow")
    old = pid_of(sup)
    result = sup.ctl("restart", "agent-worker:*")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: running_and_registered(sup, agent, old), 30, "the worker restarted")
    assert agent.wait([first], timeout=60)[first]["type"] == "COMPLETED"
    wait_for(lambda: entry(agent).get("state") == "idle", 30, "the new worker idle")

    # SIGTERM, then SIGKILL while it drains: what supervisor does after stopwaitsecs.
    second = agent.run(slow, {"marker": str(marker), "pause": 8})
    wait_for(lambda: entry(agent).get("flow_run_id") == second, 60, "the worker running it")
    old = pid_of(sup)
    os.kill(old, signal.SIGTERM)
    wait_for(lambda: entry(agent).get("stopping") is True, 10, "the worker marked stopping")
    os.kill(old, signal.SIGKILL)  # supervisor restarts it: it did not exit by itself
    wait_for(lambda: running_and_registered(sup, agent, old), 30, "the worker restarted")
    assert agent.wait([second], timeout=60)[second]["type"] == "COMPLETED"  # adopted

    wait_for(lambda: entry(agent).get("state") == "idle", 30, "the adopted run settled")
    assert "stopping" not in entry(agent)
    assert metric(agent, "agent_worker_crashes_total", {"worker": WORKER_ID}) == 0
    rc, row = status(agent)
    assert (rc, row["state"], row["recent_exits"]) == (0, "idle", 0)
    assert health(agent)[0] == 200
    assert not (agent.spool / "workers" / f"{WORKER_ID}.exits").exists()
    assert "exited unexpectedly" not in sup.log("agent-worker_00")
    assert sorted(executions(marker)) == sorted([first, second])
