"""Runs made by Prefect's scheduler service, and Late runs. The agent finds schedule-made
runs by polling (with its 10 s prefetch), so they start on time; runs already overdue
(SCHEDULED "Late") are claimed like any due run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conformance.support import (
    COMPLETED,
    LATE,
    PENDING,
    RAN,
    RUNNING,
    SCHEDULED,
    Json,
    World,
    api_time,
    in_the_past,
    iso,
)
from tests.integration.harness import wait_for

pytestmark = pytest.mark.conformance

INTERVAL = 30
# When a run may start, from its scheduled time. Never early: the server delays an
# engine's Running until the scheduled time (WaitForScheduledTime), rounding to the second.
ON_TIME = (-1.0, 5.0)


def test_runs_of_a_30s_schedule_are_made_by_prefects_scheduler_and_start_on_time(
    world: World,
) -> None:
    world.start(workers=2)
    # The first run falls 20 s from now: the recent-deployments scheduler (every 5 s)
    # makes it within seconds, so the agent, polling at least every 10 s with a 10 s
    # prefetch, has it claimed before it is due.
    anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    schedule = {"interval": INTERVAL, "anchor_date": iso(anchor), "timezone": "UTC"}
    deployment = world.deploy(
        "conformance_record", schedules=[{"schedule": schedule, "active": True}]
    )
    try:

        def first_two() -> list[Json]:
            body = {
                "flow_runs": {"deployment_id": {"any_": [deployment]}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 2,
            }
            runs: list[Json] = world.api.call("POST", "/flow_runs/filter", body)
            return runs

        wait_for(lambda: len(first_two()) == 2, 60, "the scheduler to make two runs")
        runs = first_two()
        run_ids = [r["id"] for r in runs]
        states = world.api.wait_final(run_ids, 120)
    finally:
        world.api.call("DELETE", f"/deployments/{deployment}")  # no more runs for anyone
    assert [s["type"] for s in states.values()] == ["COMPLETED", "COMPLETED"], states
    delays = []
    for run, due in zip(runs, (anchor, anchor + timedelta(seconds=INTERVAL)), strict=True):
        assert run["auto_scheduled"] is True, run  # made by the scheduler service
        assert api_time(run["expected_start_time"]) == due.timestamp(), run
        assert world.history(run["id"]) == RAN
        assert len(world.starts(run["id"])) == 1
        running = next(s for s in world.api.states(run["id"]) if s["type"] == "RUNNING")
        delays.append(api_time(running["timestamp"]) - due.timestamp())
    print(f"schedule-made runs started {', '.join(f'{d:+.1f}s' for d in delays)} from due")
    assert all(ON_TIME[0] <= d <= ON_TIME[1] for d in delays), delays


def test_late_runs_are_claimed_and_completed_once(world: World) -> None:
    deployment = world.deploy("conformance_record")
    # Due ten minutes ago; Prefect's late-runs service renames them "Late" (every 5 s).
    run_ids = [world.run(deployment, scheduled=in_the_past(600)) for _ in range(2)]
    for run_id in run_ids:
        world.api.wait_state(run_id, "SCHEDULED", "Late", 60)
    world.start(workers=2)
    states = world.api.wait_final(run_ids, 120)
    assert [s["type"] for s in states.values()] == ["COMPLETED", "COMPLETED"], states
    for run_id in run_ids:
        assert world.history(run_id) == [SCHEDULED, LATE, PENDING, RUNNING, COMPLETED]
        assert len(world.starts(run_id)) == 1
