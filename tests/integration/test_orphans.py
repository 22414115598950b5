"""Orphans step aside (issue 11, item 9): `kill -9` of supervisord mid-burst leaves the
poller and workers running; they notice and leave by themselves (the poller at once,
each worker once its run is settled), and a new supervisord's `start agent` brings every
program to RUNNING, the new workers waiting for the orphans that still hold their ids."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import tagged_pids, wait_for

PROGRAMS = ["agent", "agent-worker:agent-worker_00", "agent-worker:agent-worker_01"]


def _agent_pids(tag: str) -> set[int]:
    """Live poller and worker processes of this test (not flows, shims or supervisord)."""
    found = set()
    for pid in tagged_pids(tag):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # `agent worker` or `agent local start`, whether the script or python runs it
        at = [i for i, a in enumerate(argv) if os.path.basename(a) == b"agent"]
        if at and argv[at[0] + 1 : at[0] + 2] in ([b"worker"], [b"local"]):
            found.add(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_after_supervisord_is_killed_a_new_one_starts_the_agent_and_no_run_is_lost(
    agent: Agent, marker: Path
) -> None:
    sup = agent.supervisor(workers=2)
    assert sup.ctl("start", "agent").returncode == 0
    wait_for(lambda: list(sup.status().values()) == ["RUNNING"] * 3, 60, "the agent RUNNING")

    deployment = agent.deploy("slow_record")
    run_ids = [agent.run(deployment, {"marker": str(marker), "pause": 6}) for _ in range(6)]

    def running() -> int:
        return sum(demo.read_run(agent.client, r)["state"]["type"] == "RUNNING" for r in run_ids)

    wait_for(lambda: running() == 2, 90, "both workers running a flow")  # mid-burst
    orphans = _agent_pids(agent.procs.tag)
    assert len(orphans) == 3, orphans  # the poller and two workers
    supervisord = int((agent.run_dir / "supervisord.pid").read_text())
    os.kill(supervisord, signal.SIGKILL)
    wait_for(lambda: not _alive(supervisord), 10, "supervisord to die")

    sup.start()  # a new supervisord on the same configuration (its stale socket replaced)
    wait_for(lambda: "agent" in sup.status(), 30, "the new supervisord to answer")
    result = sup.ctl("start", "agent")
    assert result.returncode == 0, result.stdout + result.stderr
    started = time.monotonic()
    wait_for(lambda: list(sup.status().values()) == ["RUNNING"] * 3, 60, "every program RUNNING")
    assert set(sup.status()) == set(PROGRAMS)
    assert time.monotonic() - started < 60

    states = agent.wait(run_ids, timeout=150)
    assert {r: states[r]["type"] for r in run_ids} == dict.fromkeys(run_ids, "COMPLETED")
    assert sorted(executions(marker)) == sorted(run_ids)  # each ran exactly once
    # Nobody touched the orphans: they left by themselves.
    wait_for(lambda: not any(_alive(pid) for pid in orphans), 30, "the orphans to exit")
    # A new worker found its id held by an orphan still watching its run, and waited.
    logs = sup.log("agent-worker_00") + sup.log("agent-worker_01")
    assert logs.count("left running by a supervisord that died; waiting") >= 1, logs
    assert "FATAL" not in sup.ctl("status").stdout
