"""The poller entering and leaving an API outage: which failures start one, what
health and `agent status` say meanwhile, calls made as single attempts only during
it, and the jittered backoff. A real Poller on the fakes of outage_support.py."""

from __future__ import annotations

import re
import time

import pytest

from agent.api.outbox import PID, STATE, Report
from agent.core.errors import ApiError, AuthError, NotFoundError, TransientApiError
from agent.spool.locks import read_poller_state
from tests.unit.outage_support import CRASHED, DOWN, URL, World, go_down, world

__all__ = ["world"]  # the fixtures, imported for pytest to find


# -- entering and leaving an outage --------------------------------------------------------------


def test_a_failed_tick_starts_an_outage_that_health_names(world: World) -> None:
    world.poller.tick()
    assert world.poller.s.outage.down_since is None
    world.outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    world.outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    world.client.fail(TransientApiError("read_flow_run", f"cannot reach {URL}"))
    before = time.time()
    assert world.poller.tick() == 0
    assert world.poller.s.outage.down_since is not None
    assert before <= world.poller.s.outage.down_since <= time.time()

    ok, checks = world.poller.health()
    assert not ok
    api = checks["api"]
    assert api["ok"] is False
    assert api["unavailable_since"] == world.poller.s.outage.down_since
    assert api["outbox_reports"] == 2
    assert re.fullmatch(
        r"the Prefect API has been unavailable for \d+s, claiming nothing: "
        rf"outbox delivery: read_flow_run: cannot reach {re.escape(URL)}; "
        r"2 reports wait in the outbox",
        api["reason"],
    ), api["reason"]
    # The poll check is still fine: the last success is recent.
    assert checks["poll"]["ok"] is True
    # `agent status` reads the same from the poller's state file.
    state = read_poller_state(world.spool.root)
    assert state is not None
    assert state["api_unavailable_since"] == world.poller.s.outage.down_since
    assert state["outbox_reports"] == 2


def test_health_reason_without_waiting_reports_says_only_the_error(world: World) -> None:
    go_down(world)
    api = world.poller.health()[1]["api"]
    assert api["outbox_reports"] == 0
    assert re.fullmatch(
        r"the Prefect API has been unavailable for \d+s, claiming nothing: "
        rf"claim: get_scheduled_flow_runs: cannot reach {re.escape(URL)}",
        api["reason"],
    ), api["reason"]


def test_calls_are_single_attempts_during_an_outage_only(world: World) -> None:
    world.poller.tick()
    assert world.client.calls and all(not single for _, single in world.client.calls)

    world.client.calls.clear()
    world.client.fail(DOWN)
    world.poller.tick()  # the failing tick itself still retried its calls
    assert world.client.calls == [("get_scheduled_flow_runs", False)]

    for _ in range(3):
        world.client.calls.clear()
        world.poller.tick()
        assert world.client.calls == [("get_scheduled_flow_runs", True)]
    assert world.client._single_attempt is False  # only inside the tick

    world.client.calls.clear()
    world.client.fail(None)
    world.poller.tick()  # the first good tick is still made of single attempts
    assert world.client.calls and all(single for _, single in world.client.calls)
    assert world.poller.s.outage.down_since is None
    assert world.poller.health()[0]

    world.client.calls.clear()
    world.poller.tick()
    assert world.client.calls and all(not single for _, single in world.client.calls)


def test_a_successful_tick_ends_the_outage(world: World) -> None:
    go_down(world)
    world.client.fail(None)
    world.poller.tick()
    assert world.poller.s.outage.down_since is None
    assert world.poller.s.last_error is None
    ok, checks = world.poller.health()
    assert ok
    assert checks["api"] == {
        "ok": True,
        "reason": None,
        "unavailable_since": None,
        "not_prefect_since": None,
        "outbox_reports": 0,
    }


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (TransientApiError("get_scheduled_flow_runs", "cannot reach"), True),
        (TransientApiError("get_scheduled_flow_runs", "HTTP 503", 503), True),
        (ApiError("get_scheduled_flow_runs", "HTTP 500: Internal Server Error", 500), True),
        (AuthError("get_scheduled_flow_runs", "HTTP 401, the API key is wrong", 401), False),
        (AuthError("get_scheduled_flow_runs", "HTTP 403, access denied", 403), False),
        (NotFoundError("get_scheduled_flow_runs", "HTTP 404: pool not found", 404), False),
        (ApiError("get_scheduled_flow_runs", "HTTP 422: Unprocessable Entity", 422), False),
    ],
    ids=["unreachable", "503", "500", "401", "403", "404", "422"],
)
def test_which_failures_are_an_outage(world: World, error: ApiError, outage: bool) -> None:
    world.poller.tick()
    world.client.fail(error)
    world.poller.tick()
    assert (world.poller.s.outage.down_since is not None) is outage
    assert world.poller.s.last_error == f"claim: {error}"  # the duty, then the error
    assert world.poller.health()[1]["api"]["ok"] is not outage
    world.client.calls.clear()
    world.poller.tick()
    assert world.client.calls == [("get_scheduled_flow_runs", outage)]


def test_an_auth_error_is_not_an_outage_and_keeps_the_plain_backoff(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_jitter(a: float, b: float) -> float:
        raise AssertionError("jitter outside an outage")

    monkeypatch.setattr("agent.poller.loop.random.uniform", no_jitter)
    world.client.fail(AuthError("read_work_pool", "HTTP 401, the API key is wrong", 401))
    intervals = []
    for _ in range(8):
        world.poller.tick()
        intervals.append(world.poller.interval)
    assert world.poller.s.outage.down_since is None
    assert world.poller.health()[1]["api"]["ok"] is True
    assert all(not single for _, single in world.client.calls)
    assert intervals == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]


def test_the_interval_during_an_outage_is_jittered_within_the_cap(world: World) -> None:
    cap = world.poller.s.config.poll_interval_max
    world.poller.tick()
    world.client.fail(DOWN)
    intervals = []
    for _ in range(60):
        world.poller.tick()
        intervals.append(world.poller.interval)
    assert all(0 < i <= cap * 1.2 for i in intervals), intervals
    assert max(intervals[10:]) > cap  # jittered around the cap, not stuck below it
    assert len(set(intervals)) > 10  # agents of many hosts do not retry in step


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_the_jitter_at_its_extremes_stays_bounded(
    world: World, monkeypatch: pytest.MonkeyPatch, factor: float
) -> None:
    monkeypatch.setattr("agent.poller.loop.random.uniform", lambda a, b: factor)
    cap = world.poller.s.config.poll_interval_max
    world.poller.tick()
    world.client.fail(DOWN)
    for _ in range(30):
        world.poller.tick()
        assert world.poller.s.config.poll_interval_min <= world.poller.interval <= cap * 1.2
    assert world.poller.interval == pytest.approx(cap * factor)
