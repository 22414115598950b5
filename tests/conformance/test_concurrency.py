"""Concurrency limits. A deployment's `concurrency_limit` is enforced by the server when
the agent proposes Pending: with ENQUEUE the answer is SCHEDULED "AwaitingConcurrencySlot"
(due about 30 s later), with CANCEL_NEW the run ends CANCELLED. Pool and work-queue
limits keep runs out of the agent's poll. Either way the agent runs no more than the
limit at once, and every run it does claim completes."""

from __future__ import annotations

import pytest

from tests.conformance.support import (
    AWAITING_SLOT,
    CANCELLED,
    COMPLETED,
    PENDING,
    RAN,
    RUNNING,
    SCHEDULED,
    World,
    api_time,
    max_overlap,
)

pytestmark = pytest.mark.conformance


def span(world: World, run_id: str) -> tuple[float, float]:
    """From the run's first Pending to its final state, by the server's clock: the time
    it held a slot."""
    states = world.api.states(run_id)
    begin = next(api_time(s["timestamp"]) for s in states if s["type"] == "PENDING")
    return begin, api_time(states[-1]["timestamp"])


def limited(world: World, deployment: str, runs: int, limit: int) -> None:
    """``runs`` runs of ``deployment`` through an agent with more workers than ``limit``:
    each completes, executed once, and no more than ``limit`` hold a slot at once."""
    world.start(workers=limit + 2)
    run_ids = [world.run(deployment, {"pause": 2}) for _ in range(runs)]
    world.poke()
    states = world.api.wait_final(run_ids, 240)
    assert {rid: s["type"] for rid, s in states.items()} == dict.fromkeys(run_ids, "COMPLETED")
    for run_id in run_ids:
        assert world.history(run_id) == RAN, run_id
        assert len(world.starts(run_id)) == 1, run_id
    spans = [span(world, rid) for rid in run_ids]
    assert max_overlap(spans) == limit, spans
    # And by the flows' own clocks: their code never ran more than ``limit`` at once.
    executing = []
    for run_id in run_ids:
        times = {e.event: e.at for e in world.events(run_id)}
        executing.append((times["start"], times["end"]))
    assert max_overlap(executing) <= limit, executing


def test_deployment_limit_enqueue_makes_the_second_run_await_a_slot_then_completes(
    world: World,
) -> None:
    deployment = world.deploy(
        "conformance_sleep",
        concurrency_limit=1,
        concurrency_options={"collision_strategy": "ENQUEUE"},
    )
    world.start(workers=2)
    first = world.run(deployment, {"pause": 4})
    world.poke()
    world.api.wait_state(first, "RUNNING", None, 120)
    second = world.run(deployment, {"pause": 0})
    world.poke()
    world.api.wait_state(second, "SCHEDULED", "AwaitingConcurrencySlot", 30)
    states = world.api.wait_final([first, second], 180)
    assert states[second]["type"] == "COMPLETED", states
    assert world.history(first) == RAN
    assert world.history(second) == [SCHEDULED, AWAITING_SLOT, PENDING, RUNNING, COMPLETED]
    assert len(world.starts(first)) == len(world.starts(second)) == 1
    # The second held its slot only after the first gave it back.
    assert span(world, first)[1] <= span(world, second)[0]


def test_deployment_limit_cancel_new_cancels_the_second_run_which_never_runs(
    world: World,
) -> None:
    deployment = world.deploy(
        "conformance_sleep",
        concurrency_limit=1,
        concurrency_options={"collision_strategy": "CANCEL_NEW"},
    )
    world.start(workers=2)
    first = world.run(deployment, {"pause": 6})
    world.poke()
    world.api.wait_state(first, "RUNNING", None, 120)
    second = world.run(deployment, {"pause": 0})
    world.poke()
    states = world.api.wait_final([first, second], 120)
    assert states[first]["type"] == "COMPLETED", states
    assert states[second]["type"] == "CANCELLED", states
    assert world.history(first) == RAN
    assert world.history(second) == [SCHEDULED, CANCELLED]
    assert world.starts(second) == []
    assert len(world.starts(first)) == 1
    assert COMPLETED in world.history(first)


def test_pool_concurrency_limit_never_runs_more_than_the_limit_and_all_complete(
    world: World,
) -> None:
    world.api.call("PATCH", f"/work_pools/{world.pool}", {"concurrency_limit": 2})
    limited(world, world.deploy("conformance_sleep"), runs=5, limit=2)


def test_work_queue_concurrency_limit_never_runs_more_than_the_limit_and_all_complete(
    world: World,
) -> None:
    queue = {"name": "narrow", "concurrency_limit": 1}
    world.api.call("POST", f"/work_pools/{world.pool}/queues/", queue)
    limited(world, world.deploy("conformance_sleep", work_queue_name="narrow"), runs=3, limit=1)
