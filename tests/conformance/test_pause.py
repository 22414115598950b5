"""Suspend and pause.

- `suspend_flow_run`: the run goes PAUSED "Suspended" and the flow's process exits 0. That
  is not a crash: the agent reports nothing. A resume puts the run in SCHEDULED
  "Resuming"; the agent claims it and runs it again (the engine continues the flow).
- A suspend whose timeout expires: Prefect's pause-expiration service fails the run; that
  final state stands.
- A blocking `pause_flow_run`: PAUSED "Paused" while the same process keeps running, then
  RUNNING again on resume.
"""

from __future__ import annotations

import time

import pytest

from tests.conformance.support import (
    COMPLETED,
    FAILED,
    PAUSED,
    PENDING,
    RESUMING,
    RUNNING,
    SCHEDULED,
    SUSPENDED,
    World,
    pid_alive,
)
from tests.integration.harness import wait_for

pytestmark = pytest.mark.conformance

# Long enough for the agent to have reported anything it was going to about an exited
# process (it settles a run within a second of its exit).
QUIET = 4.0


def suspended(world: World, run_id: str) -> int:
    """Wait until the run is Suspended and its process has exited; returns that pid."""
    world.api.wait_state(run_id, "PAUSED", "Suspended", 120)
    first = world.starts(run_id)
    assert len(first) == 1, first
    wait_for(lambda: not pid_alive(first[0].pid), 30, "the suspended flow's process to exit")
    time.sleep(QUIET)
    return first[0].pid


def test_suspended_run_is_never_crashed_and_runs_again_after_resume(world: World) -> None:
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_suspend"), {"timeout": 600})
    world.poke()
    suspended(world, run_id)
    assert world.history(run_id) == [SCHEDULED, PENDING, RUNNING, SUSPENDED]

    assert world.api.resume(run_id)["status"] == "ACCEPT"
    world.poke()
    final = world.api.wait_final([run_id], 120)[run_id]
    assert final["type"] == "COMPLETED", final
    assert world.history(run_id) == [
        *(SCHEDULED, PENDING, RUNNING, SUSPENDED),
        *(RESUMING, PENDING, RUNNING, COMPLETED),
    ]
    assert len(world.starts(run_id)) == 2  # the engine ran the flow again, from the top
    assert [e.event for e in world.events(run_id)] == ["start", "start", "end"]


def test_suspend_that_times_out_ends_in_prefects_own_failed_and_nothing_over_it(
    world: World,
) -> None:
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_suspend"), {"timeout": 5})
    world.poke()
    suspended(world, run_id)
    # Prefect's pause-expiration service (every 5 s) fails it once the timeout is past.
    final = world.api.wait_final([run_id], 60)[run_id]
    time.sleep(QUIET)
    assert world.history(run_id) == [SCHEDULED, PENDING, RUNNING, SUSPENDED, FAILED]
    final = world.api.flow_run(run_id)["state"]
    assert final["message"] == "The flow was paused and never resumed.", final
    assert len(world.starts(run_id)) == 1


def test_blocking_pause_keeps_its_process_running_and_completes_after_resume(
    world: World,
) -> None:
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_pause"), {"timeout": 600})
    world.poke()
    world.api.wait_state(run_id, "PAUSED", "Paused", 120)
    (start,) = world.starts(run_id)
    time.sleep(QUIET)
    assert pid_alive(start.pid), "a blocking pause keeps its process"
    assert world.api.flow_run(run_id)["state"]["type"] == "PAUSED"

    assert world.api.resume(run_id)["status"] == "ACCEPT"
    final = world.api.wait_final([run_id], 60)[run_id]
    assert final["type"] == "COMPLETED", final
    assert world.history(run_id) == [SCHEDULED, PENDING, RUNNING, PAUSED, RUNNING, COMPLETED]
    assert [(e.event, e.pid) for e in world.events(run_id)] == [
        ("start", start.pid),
        ("end", start.pid),
    ]
