"""Cancel (the UI's Cancel: CANCELLING) at each point of a run's life. A run that never
started ends CANCELLED without ever executing; a running one has its process stopped
and ends CANCELLED."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.conformance.support import (
    CANCELLED,
    CANCELLING,
    CRASHED,
    PENDING,
    RAN,
    RUNNING,
    SCHEDULED,
    World,
    pid_alive,
    stopped,
)
from tests.integration.harness import wait_for

pytestmark = pytest.mark.conformance


def test_run_cancelled_while_scheduled_goes_straight_to_cancelled_and_never_runs(
    world: World,
) -> None:
    world.start(workers=1)
    deployment = world.deploy("conformance_record")
    # Due in two minutes: Scheduled, and not yet due for the agent's poll (it prefetches 10 s).
    later = world.run(deployment, scheduled=datetime.now(UTC) + timedelta(minutes=2))
    answer = world.api.cancel(later)
    # A Scheduled run has no process to stop: the server skips Cancelling.
    assert answer["status"] == "REJECT" and answer["state"]["type"] == "CANCELLED", answer
    now = world.run(deployment)  # the agent serves its pool, and passes the cancelled run by
    world.poke()
    assert world.api.wait_final([now], 120)[now]["type"] == "COMPLETED"
    assert world.history(later) == [SCHEDULED, CANCELLED]
    assert world.history(now) == RAN
    assert world.starts(later) == []


def test_run_cancelled_while_waiting_in_the_spool_is_cancelled_and_never_runs(
    world: World,
) -> None:
    world.start(workers=1)
    deployment = world.deploy("conformance_record")
    (worker,) = world.worker_pids().values()
    # A worker alive (registered, holding its lock) but taking nothing: the poller claims one
    # run for it, and that run waits in the spool.
    with stopped(worker):
        run_id = world.run(deployment)
        world.poke()
        world.api.wait_state(run_id, "PENDING", "Pending", 60)
        assert world.api.cancel(run_id)["status"] == "ACCEPT"
        final = world.api.wait_final([run_id], 30)[run_id]
    assert final["type"] == "CANCELLED", final
    # The worker, free again, finds nothing to run: the next run is the next to execute.
    after = world.run(deployment)
    world.poke()
    assert world.api.wait_final([after], 120)[after]["type"] == "COMPLETED"
    assert world.history(run_id) == [SCHEDULED, PENDING, CANCELLING, CANCELLED]
    assert world.starts(run_id) == []
    assert world.history(after) == RAN


def test_run_cancelled_while_pending_has_its_process_stopped_and_never_runs(
    world: World,
) -> None:
    world.start(workers=1)
    # Its engine takes a minute to import the flow: Pending, with a live process.
    slow_import = {"env": {"CONFORMANCE_IMPORT_DELAY": "60"}}
    deployment = world.deploy("conformance_record", job_variables=slow_import)
    run_id = world.run(deployment)
    world.poke()

    def pid() -> int | None:
        run = world.api.flow_run(run_id)
        value = run.get("infrastructure_pid")
        return int(str(value).rsplit(":", 1)[-1]) if value else None

    wait_for(pid, 60, "the run's process to be started (infrastructure_pid set)")
    process = pid()
    assert process is not None and pid_alive(process)
    assert world.api.flow_run(run_id)["state"]["type"] == "PENDING"
    assert world.api.cancel(run_id)["status"] == "ACCEPT"
    final = world.api.wait_final([run_id], 60)[run_id]
    assert final["type"] == "CANCELLED", final
    wait_for(lambda: not pid_alive(process), 30, "the run's process to be stopped")
    time.sleep(2)  # nothing more is reported
    assert world.history(run_id) == [SCHEDULED, PENDING, CANCELLING, CANCELLED]
    assert world.starts(run_id) == []


def test_run_cancelled_while_running_has_its_process_stopped_and_ends_cancelled(
    world: World,
) -> None:
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_sleep"), {"pause": 120})
    world.poke()
    world.api.wait_state(run_id, "RUNNING", "Running", 120)
    wait_for(lambda: world.starts(run_id), 30, "the flow's code to start")
    (start,) = world.starts(run_id)
    assert world.api.cancel(run_id)["status"] == "ACCEPT"
    final = world.api.wait_final([run_id], 60)[run_id]
    wait_for(lambda: not pid_alive(start.pid), 30, "the flow's process to be stopped")
    world.settled(run_id)
    final = world.api.flow_run(run_id)["state"]
    assert final["type"] == "CANCELLED", final
    # Prefect's engine answers SIGTERM by forcing Crashed itself; the agent's forced
    # Cancelled follows, and is the run's final state.
    assert world.history(run_id) == [*(SCHEDULED, PENDING, RUNNING, CANCELLING, CRASHED, CANCELLED)]
    assert [e.event for e in world.events(run_id)] == ["start"]  # never reached its end
