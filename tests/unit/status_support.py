"""Shared by the `agent status` unit tests (test_status_errors, test_status_sections,
test_status_output, test_status_exit_code): spools filled with the real Spool and
Registry code, and child processes that hold (or held, once killed) the real flocks of
a poller and of idle or busy workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent.core.spec import JobSpec, dumps
from agent.spool.locks import write_poller_state
from agent.spool.moves import DONE, NEW, Spool

NOW = 1_700_000_000.0
SECRET = "s3cr3t-env-value"

# A child that takes on roles on a spool, says "ready", then sleeps until killed:
#   poller          holds poller.lock
#   idle:<id>       registers worker <id>
#   busy:<id>       registers worker <id>, takes the oldest spec and marks itself busy
_CHILD = """
import sys, time
from pathlib import Path
from agent.spool.registry import BUSY, Registry
from agent.spool.moves import Spool
from agent.spool.locks import lock_poller
root = Path(sys.argv[1])
keep = []
for action in sys.argv[2:]:
    kind, _, arg = action.partition(":")
    if kind == "poller":
        keep.append(lock_poller(root))
        continue
    registry = Registry(root)
    registry.register(arg)
    keep.append(registry)
    if kind == "busy":
        lease = Spool(root).take()
        assert lease is not None
        registry.set_state(BUSY, lease.run_id)
        keep.append(lease)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def start_child(
    children: list[subprocess.Popen[str]], spool: Spool, *actions: str
) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(spool.root), *actions],
        stdout=subprocess.PIPE,
        text=True,
    )
    children.append(child)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


def deliver(
    spool: Spool,
    run_id: str,
    name: str = "",
    claimed_at: float = NOW - 30,
    scheduled_start: str | None = None,
    mtime: float | None = None,
) -> None:
    spec = JobSpec(
        flow_run_id=run_id,
        pool="pool-a",
        transition_id="t-1",
        agent_name="agent-1",
        flow_run_name=name or f"name-{run_id}",
        scheduled_start=scheduled_start,
        claimed_at=claimed_at,
        env_vars={"API_TOKEN": SECRET},
    )
    spool.write_ahead(run_id, dumps(spec))
    spool.publish(run_id)
    if mtime is not None:
        os.utime(spool.dir(NEW) / f"{run_id}.json", (mtime, mtime))


def finish(spool: Spool, run_id: str, outcome: str, at: float) -> None:
    """A run that finished at ``at``: its note says so, and its mtime agrees."""
    deliver(spool, run_id)
    lease = spool.take()
    assert lease is not None and lease.run_id == run_id
    spool.finish(lease, outcome)
    note = spool.dir(DONE) / f"{run_id}.outcome"
    note.write_text(json.dumps({"outcome": outcome, "at": at}))
    os.utime(note, (at, at))


def poller_state(spool: Spool, **changes: object) -> None:
    state: dict[str, object] = {
        "pid": 4100,
        "name": "agent-1",
        "pool": "pool-a",
        "labels": ["linux", "gpu"],
        "work_queues": ["default"],
        "hostname": "host-a",
        "version": "0.1.0",
        "started": NOW - 3600,
        "last_successful_poll": NOW - 12,
        "last_error": None,
        "updated": NOW - 2,
    }
    state.update(changes)
    write_poller_state(spool.root, state)
