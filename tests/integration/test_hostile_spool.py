"""What flows (which run as the agent's user) can do to the spool, against real agent
processes and a real server: a FIFO named like a spec in new/ blocks neither a worker
nor `agent status`, and is moved aside to failed/; a spool deleted while the supervised
agent runs is re-created, the workers register again, and runs still complete, without
a restart."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from tests.integration.conftest import Agent, executions
from tests.integration.harness import wait_for

WORKERS = ("agent-worker:agent-worker_00", "agent-worker:agent-worker_01")


def test_a_fifo_in_new_blocks_neither_a_worker_nor_agent_status(agent: Agent, marker: Path) -> None:
    deployment = agent.deploy("record")
    agent.start_worker()
    registry = agent.spool / "workers" / "worker.json"
    wait_for(registry.exists, 60, "the worker to register")
    fifo_id = str(uuid.uuid4())
    os.mkfifo(agent.spool / "new" / f"{fifo_id}.json", 0o600)

    started = time.monotonic()
    result = agent.procs.run(["agent", "status", "--spool", str(agent.spool), "--json"], timeout=20)
    assert time.monotonic() - started < 20
    assert result.stdout, result.stderr
    json.loads(result.stdout)

    reason = agent.spool / "failed" / f"{fifo_id}.reason"
    wait_for(reason.exists, 30, "the FIFO to be moved aside")
    assert reason.read_text().startswith("Not a spec: a FIFO named like one was found in new/")
    assert not os.path.lexists(agent.spool / "new" / f"{fifo_id}.json")
    assert (agent.spool / "failed" / f"{fifo_id}.json").is_fifo()

    agent.start_poller()
    run_id = agent.run(deployment, {"marker": str(marker)})
    assert agent.wait([run_id], timeout=60)[run_id]["type"] == "COMPLETED"
    assert executions(marker) == [run_id]
    assert agent.procs.popens[0].poll() is None  # the worker never exited
    assert "Traceback" not in agent.procs.log("worker")


def test_a_spool_deleted_while_the_agent_runs_is_re_created_and_runs_complete(
    agent: Agent, marker: Path
) -> None:
    deployment = agent.deploy("record")
    sup = agent.supervisor(workers=2)
    result = sup.ctl("start", "agent")
    assert result.returncode == 0, result.stdout + result.stderr
    first = agent.run(deployment, {"marker": str(marker)})
    assert agent.wait([first], timeout=60)[first]["type"] == "COMPLETED"
    wait_for(lambda: not list((agent.spool / "cur").glob("*.json")), 30, "the first run settled")
    pids = {name: sup.ctl("pid", name).stdout.strip() for name in ("agent", *WORKERS)}

    shutil.rmtree(agent.spool)

    later = [agent.run(deployment, {"marker": str(marker)}) for _ in range(2)]
    finals = agent.wait(later, timeout=80)
    assert {r: finals[r]["type"] for r in later} == dict.fromkeys(later, "COMPLETED")
    assert sorted(executions(marker)) == sorted([first, *later])
    # Nothing was restarted: the same processes, both workers registered again.
    assert {name: sup.ctl("pid", name).stdout.strip() for name in pids} == pids
    workers = sorted(p.name for p in (agent.spool / "workers").glob("*.lock"))
    assert workers == ["agent-worker_00.lock", "agent-worker_01.lock"]
    for state in ("tmp", "new", "cur", "done", "failed", "runs"):
        assert (agent.spool / state).is_dir()
    logs = [sup.log(name) for name in ("agent", "agent-worker_00", "agent-worker_01")]
    assert any("was missing: re-created it" in log for log in logs)
    for name in ("agent-worker_00", "agent-worker_01"):
        assert "its registry entry was gone; registered again" in sup.log(name)
    # `agent status` sees the same poller alive (it took its lock again) and both workers.
    wait_for(lambda: not list((agent.spool / "cur").glob("*.json")), 30, "the later runs settled")
    result = agent.procs.run(["agent", "status", "--spool", str(agent.spool), "--json"])
    snapshot = json.loads(result.stdout)
    assert (result.returncode, snapshot["poller"]["alive"]) == (0, True), result.stdout
    assert snapshot["poller"]["pid"] == int(pids["agent"])
    assert sorted((w["worker_id"], w["alive"]) for w in snapshot["workers"]) == [
        ("agent-worker_00", True),
        ("agent-worker_01", True),
    ]
