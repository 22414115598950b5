"""Runs whose deployment, or whose own record, is deleted while they wait: never started;
a run whose deployment is gone ends in a state that says so; the agent serves on."""

from __future__ import annotations

import re

import pytest

from tests.conformance.support import (
    AWAITING_RETRY,
    CANCELLED,
    PENDING,
    RAN,
    SCHEDULED,
    World,
    stopped,
)

pytestmark = pytest.mark.conformance


def says_deployment_gone(message: object, deployment: str) -> bool:
    text = str(message)
    return deployment in text and bool(
        re.search(r"deleted|gone|no longer exists|not found", text, re.IGNORECASE)
    )


def test_run_whose_deployment_is_deleted_while_it_waits_never_starts_and_says_why(
    world: World,
) -> None:
    world.start(workers=1)
    deployment = world.deploy("conformance_record")
    # One run that has run once, so that the server keeps it when its deployment goes
    # (a deployment's delete removes its Scheduled runs that never ran).
    retried = world.run(deployment)
    world.poke()
    world.api.wait_final([retried], 120)
    world.settled(retried)
    (worker,) = world.worker_pids().values()
    with stopped(worker):
        # Claimed, waiting in the spool for a worker that takes nothing.
        waiting = world.run(deployment)
        world.poke()
        world.api.wait_state(waiting, "PENDING", "Pending", 60)
        # A retry, Scheduled: not claimed, no worker being free.
        assert world.api.retry(retried)["status"] == "ACCEPT"
        world.api.call("DELETE", f"/deployments/{deployment}")
        assert world.api.status("GET", f"/deployments/{deployment}") == 404
    world.poke()
    states = world.api.wait_final([waiting, retried], 60)
    for run_id in (waiting, retried):
        assert says_deployment_gone(states[run_id].get("message"), deployment), states[run_id]
    assert world.history(waiting) == [SCHEDULED, PENDING, CANCELLED]
    assert world.history(retried) == [*RAN, AWAITING_RETRY, CANCELLED]
    assert world.starts(waiting) == []
    assert len(world.starts(retried)) == 1  # its first execution only


def test_run_deleted_between_claim_and_start_never_starts_and_the_agent_serves_on(
    world: World,
) -> None:
    world.start(workers=1)
    deployment = world.deploy("conformance_record")
    (worker,) = world.worker_pids().values()
    with stopped(worker):
        deleted = world.run(deployment)
        world.poke()
        world.api.wait_state(deleted, "PENDING", "Pending", 60)
        world.api.call("DELETE", f"/flow_runs/{deleted}")
    after = world.run(deployment)
    world.poke()
    assert world.api.wait_final([after], 120)[after]["type"] == "COMPLETED"
    assert world.history(after) == RAN
    assert world.starts(after) != []
    assert world.api.status("GET", f"/flow_runs/{deleted}") == 404
    assert world.starts(deleted) == []
