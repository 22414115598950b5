"""Stranded runs (the poller's "stranded runs" duty, agent/poller/stranded.py): the
query (one /flow_runs/filter call, paged) and when it runs: at the first tick, then every
few minutes, sooner again after a refused look, an outage or a spool that cannot be
written. A real Poller and a real Spool in tmp_path; a fake API client."""

from __future__ import annotations

import time

import pytest

from agent.core.errors import ApiError, SpoolError, TransientApiError
from agent.settings import defaults
from agent.spool.moves import NEW
from tests.unit.stranded_support import POOL, World
from tests.unit.stranded_support import proc as proc  # world uses it
from tests.unit.stranded_support import world as world

# -- the query and when it runs -----------------------------------------------------------


def test_one_filter_call_asks_for_pending_and_running_runs_of_the_pool(world: World) -> None:
    world.poller.stranded.run()
    calls = world.client.named("filter_flow_runs")
    assert len(calls) == 1
    _, path, body = calls[0]
    assert path == "/flow_runs/filter"
    assert body == {
        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
        "work_pools": {"name": {"any_": [POOL]}},
        "sort": "ID_DESC",
        "limit": 200,
        "offset": 0,
    }


def test_a_full_page_is_followed_by_the_next(world: World) -> None:
    for _ in range(defaults.STRANDED_PAGE):
        world.add(worker="someone-else")
    last = world.add()
    world.poller.stranded.run()
    offsets = [body["offset"] for _, _, body in world.client.named("filter_flow_runs")]
    assert offsets == [0, 200]
    assert world.spool.run_ids(NEW) == [last]


def test_first_tick_looks_then_only_every_few_minutes(world: World) -> None:
    world.poller.tick()
    assert len(world.client.named("filter_flow_runs")) == 1
    names = [c[0] for c in world.client.calls]
    assert names.index("filter_flow_runs") < names.index("get_scheduled_flow_runs")
    world.poller.tick()
    assert len(world.client.named("filter_flow_runs")) == 1
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_CHECK_SECONDS - 5 < due <= defaults.STRANDED_CHECK_SECONDS
    world.poller.duty("stranded runs").next_at = time.monotonic() - 1
    world.poller.tick()
    assert len(world.client.named("filter_flow_runs")) == 2


def test_a_refused_look_does_not_stop_polling_and_is_retried_sooner(world: World) -> None:
    world.client.filter_error = ApiError("filter_flow_runs", "HTTP 422: bad filter", 422)
    world.poller.tick()
    assert world.client.named("get_scheduled_flow_runs")  # the poll went on
    assert world.poller.s.last_error == "stranded runs: filter_flow_runs: HTTP 422: bad filter"
    assert world.poller.s.outage.down_since is None  # refused, not away
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_RETRY_SECONDS - 5 < due <= defaults.STRANDED_RETRY_SECONDS
    world.client.filter_error = None
    world.poller.duty("stranded runs").next_at = time.monotonic() - 1
    run_id = world.add()
    world.poller.tick()
    assert world.spool.run_ids(NEW) == [run_id]


def test_a_look_failing_for_an_outage_skips_the_claim_and_is_retried_sooner(
    world: World,
) -> None:
    """A 503 shows the API is away: the rest of the round's API calls would fail the same
    way, so the claim waits for the API's return; the look is retried sooner."""
    world.client.filter_error = TransientApiError("filter_flow_runs", "HTTP 503", 503)
    world.poller.tick()
    assert world.client.named("get_scheduled_flow_runs") == []
    assert world.poller.s.outage.down_since is not None
    assert world.poller.s.last_error == "stranded runs: filter_flow_runs: HTTP 503"
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_RETRY_SECONDS - 5 < due <= defaults.STRANDED_RETRY_SECONDS
    world.client.filter_error = None
    world.poller.duty("stranded runs").next_at = time.monotonic() - 1
    run_id = world.add()
    world.poller.tick()
    assert world.spool.run_ids(NEW) == [run_id]
    assert world.client.named("get_scheduled_flow_runs")
    assert world.poller.s.outage.down_since is None


def test_a_spool_that_cannot_be_written_is_reported_and_retried(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = world.add()

    def full_disk(run_id: str, data: bytes) -> None:
        raise SpoolError(f"cannot write spec for flow run {run_id}: No space left on device")

    monkeypatch.setattr(world.spool, "write_ahead", full_disk)
    world.poller.tick()
    assert world.poller.s.spool_error and "No space left" in world.poller.s.spool_error
    assert world.client.named("get_scheduled_flow_runs")  # the poll went on
    assert world.spool.contains(run_id) is None
    due = world.poller.duty("stranded runs").next_at - time.monotonic()
    assert defaults.STRANDED_RETRY_SECONDS - 5 < due <= defaults.STRANDED_RETRY_SECONDS
