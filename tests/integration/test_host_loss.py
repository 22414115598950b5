"""Host loss: an agent's host dies for good while its run is Running; the other agents of
the pool mark that run Crashed once its heartbeat has been silent for --reap-after, exactly
once however many of them look, and the host coming back late adopts nothing."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from agent.core import reap
from agent.worker.procid import runs_flow
from examples import demo
from tests.integration.cgroupfs import pids_in
from tests.integration.conftest import Agent
from tests.integration.harness import wait_for

REAP_AFTER = 6.0
BEAT = {"AGENT_HEARTBEAT_SECONDS": "1"}  # hidden setting: a lost host is seen in seconds
REAP_CHECK = reap.check_every(REAP_AFTER)  # "one poll" of the reap duty (10 s)
LOADED_HOST_MARGIN = 15.0  # a poller round held up on a loaded CI machine


def state(agent: Agent, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = demo.read_run(agent.client, run_id)["state"]
    return found


def kill_host(agent: Agent, popens: list[Any], run_id: str) -> None:
    """kill -9 of the host's agent processes and of the flow run they started."""
    for proc in popens:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    root = agent.env.get("AGENT_CGROUP_ROOT")
    doomed = set(pids_in(Path(root))) if root else set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    doomed.add(int(entry.name))
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not runs_flow(run_id), 10, "the lost host's flow to be gone")


@pytest.mark.backends
def test_a_lost_hosts_running_run_is_crashed_once_by_the_others_and_not_adopted_later(
    agent: Agent,
) -> None:
    lost_spool = agent.tmp / "lost-spool"
    agent.start_poller(
        "--name", "host-a", "--label", "a", name="a-poller", spool=lost_spool, env=BEAT
    )
    agent.start_worker(name="a-worker", spool=lost_spool)
    host_a = list(agent.procs.popens)
    # Two other agents of the pool, each reaping: they must not both report the run.
    for name in ("host-b", "host-c"):
        agent.start_poller(
            "--name", name, "--reap-after", f"{REAP_AFTER:.0f}", name=name,
            spool=agent.tmp / f"{name}-spool", env=BEAT,
        )  # fmt: skip
    deployment = agent.deploy("sleeper", job_variables={"labels": ["a"]})
    run_id = agent.run(deployment, {"pause": 300})
    wait_for(lambda: state(agent, run_id).get("type") == "RUNNING", 90, "the run to be Running")

    kill_host(agent, host_a, run_id)
    # About REAP_AFTER + one REAP_CHECK once the host is gone; the shared SQLite server of
    # a loaded CI machine can be far slower to answer (CI once took over 36 s), so the
    # wait is generous and the time is not asserted (a timing check would flake).
    wait_for(
        lambda: state(agent, run_id).get("type") == "CRASHED",
        REAP_AFTER + 6 * REAP_CHECK + 60,
        "the lost host's run to be Crashed",
    )
    message = str(state(agent, run_id).get("message"))
    assert "agent 'host-a'" in message and "has sent no heartbeat" in message, message
    # When the reaper decided, host-a had been silent about --reap-after plus at most one
    # look (and a beat): the time the agent takes, whatever the server took to store it.
    silent = re.search(r"has sent no heartbeat for (\d+)s", message)
    assert silent is not None, message
    assert int(silent.group(1)) <= REAP_AFTER + REAP_CHECK + LOADED_HOST_MARGIN, message
    assert "marked Crashed by agent 'host-b'" in message or "by agent 'host-c'" in message
    time.sleep(REAP_CHECK + 1)  # both reapers have looked again since
    assert agent.states(run_id).count("CRASHED") == 1, agent.states(run_id)

    # The host comes back late: its worker finds the spec it held, sees the final state,
    # and starts nothing.
    agent.start_worker(name="a-worker-again", spool=lost_spool)
    agent.start_poller(
        "--name", "host-a", "--label", "a", name="a-again", spool=lost_spool, env=BEAT
    )
    wait_for((lost_spool / "done" / f"{run_id}.json").exists, 60, "the back host to settle it")
    assert not runs_flow(run_id)
    history = agent.states(run_id)
    assert history.count("RUNNING") == 1 and history[-1] == "CRASHED", history


def test_reap_after_0_turns_reaping_off(agent: Agent) -> None:
    lost_spool = agent.tmp / "lost-spool"
    agent.start_poller(
        "--name", "host-a", "--label", "a", name="a-poller", spool=lost_spool, env=BEAT
    )
    agent.start_worker(name="a-worker", spool=lost_spool)
    host_a = list(agent.procs.popens)
    agent.start_poller(
        "--name", "host-b", "--reap-after", "0", name="host-b",
        spool=agent.tmp / "b-spool", env=BEAT,
    )  # fmt: skip
    deployment = agent.deploy("sleeper", job_variables={"labels": ["a"]})
    run_id = agent.run(deployment, {"pause": 300})
    wait_for(lambda: state(agent, run_id).get("type") == "RUNNING", 90, "the run to be Running")
    kill_host(agent, host_a, run_id)
    time.sleep(REAP_AFTER + REAP_CHECK + 3)
    assert state(agent, run_id).get("type") == "RUNNING"
