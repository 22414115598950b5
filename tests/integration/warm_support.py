"""Shared by the warm-launch integration tests (test_warm_parity, test_warm_cold_starts):
what they look at (a run's "Process started" line, its state once settled, the worker's
warm process, its threads, whether it waits for a request, whether it lives) and a poller
with its one worker launching in a given mode."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from agent.worker.forkserver import MARKER
from examples import demo
from tests.integration.conftest import Agent
from tests.integration.harness import wait_for

STARTED = "Process started by worker "


# -- what the tests look at -----------------------------------------------------------


def agent_lines(agent: Agent, run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    logs: list[dict[str, Any]] = agent.client.request("logs", "POST", "/logs/filter", body)
    return [str(x["message"]) for x in logs if x["name"] == "local-agent"]


def started_line(agent: Agent, run_id: str) -> str:
    """The run's "Process started by worker W on H: PID N (...)" line, once shipped."""
    found: list[str] = []

    def shipped() -> bool:
        found[:] = [x for x in agent_lines(agent, run_id) if x.startswith(STARTED)]
        return bool(found)

    wait_for(shipped, 60, "the run's 'Process started' log line")
    assert len(found) == 1, found
    return found[0]


def settled(agent: Agent, spool: Path, run_id: str) -> dict[str, Any]:
    """The run's state once its worker has finished with it (its spec is in done/)."""
    wait_for((spool / "done" / f"{run_id}.json").exists, 120, "the run to be settled")
    state: dict[str, Any] = demo.read_run(agent.client, run_id)["state"]
    return state


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def warm_parents(worker: int) -> list[int]:
    """The worker's warm processes: its children whose command line has the marker."""
    found = []
    for pid in children(worker):
        with contextlib.suppress(OSError):
            if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def the_warm_parent(worker: int) -> int:
    found: list[int] = []

    def one() -> bool:
        found[:] = warm_parents(worker)
        return len(found) == 1

    wait_for(one, 60, "the worker's one warm process")
    return found[0]


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def idle(pid: int) -> bool:
    """Whether ``pid`` sleeps in select(): the warm process waiting for a request (done
    importing Prefect)."""
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/wchan").read_text().startswith(("poll_schedule", "do_select")):
            return True
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] in ("23", "270")
    return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_agent(
    agent: Agent,
    mode: str,
    *worker_args: str,
    env: dict[str, str] | None = None,
    poller_args: tuple[str, ...] = (),
) -> tuple[Path, int]:
    """A poller taking only runs labelled ``mode``, and its one worker launching with
    ``--launch mode``: its spool and the worker's pid."""
    spool = agent.tmp / f"{mode}-spool"
    agent.start_poller(
        "--name", mode, "--label", mode, *poller_args, name=f"{mode}-poller", spool=spool
    )
    agent.start_worker("--launch", mode, *worker_args, name=mode, spool=spool, env=env)
    return spool, agent.procs.popens[-1].pid
