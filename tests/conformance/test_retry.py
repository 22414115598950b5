"""Retry from the UI: a final run forced back to SCHEDULED "AwaitingRetry" is claimed and
run again under the same flow run id; earlier executions on this host do not block it."""

from __future__ import annotations

import time

import pytest

from tests.conformance.support import (
    AWAITING_RETRY,
    COMPLETED,
    FAILED,
    PENDING,
    RAN,
    RUNNING,
    SCHEDULED,
    World,
)

pytestmark = pytest.mark.conformance


def test_failed_run_retried_from_the_ui_runs_again_under_the_same_id_and_completes(
    world: World,
) -> None:
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_flaky"), {"fail_times": 1})
    world.poke()
    assert world.api.wait_final([run_id], 120)[run_id]["type"] == "FAILED"
    world.settled(run_id)  # a person clicks Retry after the run has ended
    assert world.api.retry(run_id)["status"] == "ACCEPT"
    world.poke()
    final = world.api.wait_final([run_id], 120)[run_id]
    assert final["type"] == "COMPLETED", final
    assert len(world.starts(run_id)) == 2
    assert world.history(run_id) == [
        *(SCHEDULED, PENDING, RUNNING, FAILED),
        *(AWAITING_RETRY, PENDING, RUNNING, COMPLETED),
    ]


def test_run_retried_the_instant_it_fails_is_never_crashed_and_runs_again(world: World) -> None:
    """A retry that lands between the engine's own Failed and its process's exit (an
    automation, or a quick click): the flow's own final state was reported, so the
    process's exit is no crash, and the AwaitingRetry is claimed and run again."""
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_flaky"), {"fail_times": 1})
    world.poke()
    deadline = time.monotonic() + 120
    while world.api.flow_run(run_id)["state"]["type"] != "FAILED":
        assert time.monotonic() < deadline, world.history(run_id)
        time.sleep(0.02)
    assert world.api.retry(run_id)["status"] == "ACCEPT"
    world.poke()
    final = world.api.wait_final([run_id], 120)[run_id]
    assert world.history(run_id) == [
        *(SCHEDULED, PENDING, RUNNING, FAILED),
        *(AWAITING_RETRY, PENDING, RUNNING, COMPLETED),
    ]
    assert final["type"] == "COMPLETED", final
    assert len(world.starts(run_id)) == 2


def test_completed_run_retried_from_the_ui_runs_again_under_the_same_id_and_completes(
    world: World,
) -> None:
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_record"))
    world.poke()
    assert world.api.wait_final([run_id], 120)[run_id]["type"] == "COMPLETED"
    assert world.history(run_id) == RAN
    world.settled(run_id)
    assert world.api.retry(run_id)["status"] == "ACCEPT"
    world.poke()
    final = world.api.wait_final([run_id], 120)[run_id]
    assert final["type"] == "COMPLETED", final
    assert len(world.starts(run_id)) == 2
    assert world.history(run_id) == [*RAN, AWAITING_RETRY, PENDING, RUNNING, COMPLETED]
