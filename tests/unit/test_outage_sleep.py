"""The poller's sleep through an API outage: it probes the API's health instead of
calling it, returns soon after the API comes back (in the recovery window, at each
good probe) and wakes on a poke or a stop; cancellation looks between polls. A real
Poller on the fakes of outage_support.py, with fast probes."""

from __future__ import annotations

import threading
import time

import pytest

from agent.poller.outage import RECOVERY_SECONDS, Outage
from tests.unit.outage_support import DOWN, World, fast_probes, go_down, timed_sleep, world

__all__ = ["fast_probes", "world"]  # the fixtures, imported for pytest to find


# -- sleeping through an outage ---------------------------------------------------------------


@pytest.mark.usefixtures("fast_probes")
def test_sleep_returns_soon_after_the_api_comes_back(world: World) -> None:
    go_down(world)
    world.client.probes = [False, False, False, True]
    world.client.calls.clear()
    elapsed = timed_sleep(world.poller, 30.0)
    assert elapsed < 10.0  # well before the 30 s
    assert world.client.probed == 4  # it returned at the first good probe
    assert world.client.calls == []  # nothing but probes while the API is away


@pytest.mark.usefixtures("fast_probes")
def test_sleep_probes_at_most_every_probe_interval(world: World) -> None:
    go_down(world)
    world.client.probes = [False]
    elapsed = timed_sleep(world.poller, 0.3)
    assert elapsed >= 0.29
    # 0.3 s / 0.02 s: 15 probes, one more at the start; fewer on a loaded machine.
    assert 1 <= world.client.probed <= 17


@pytest.mark.usefixtures("fast_probes")
def test_sleep_does_not_return_early_while_health_answers_but_calls_fail(world: World) -> None:
    """The server answers /health from the start of the outage (e.g. its database is
    away): probing must not turn the backoff into a poll per probe."""
    go_down(world)
    world.client.probes = [True]
    elapsed = timed_sleep(world.poller, 0.3)
    assert elapsed >= 0.29
    assert world.client.probed >= 1


@pytest.mark.usefixtures("fast_probes")
def test_after_a_return_that_did_not_last_rounds_follow_each_probe_until_the_window_ends(
    world: World,
) -> None:
    """The API came back (a probe failed, then succeeded), the next tick failed again
    while /health keeps answering (a SQLite server answering 503 "database is locked"
    after its restart): for RECOVERY_SECONDS each good probe starts a round, so the
    first claim comes within a probe of the server's recovery; after that window the
    sleep is the loop's backoff again, not one probe long."""
    offset = [0.0]
    world.poller.s.outage = Outage(world.client, clock=lambda: time.monotonic() + offset[0])
    go_down(world)
    world.client.probes = [False, True]
    assert timed_sleep(world.poller, 30.0) < 10.0
    world.poller.tick()  # /health answers, the calls still fail
    assert world.poller.s.outage.down_since is not None
    elapsed = timed_sleep(world.poller, 0.3)
    assert elapsed < 0.29, "within the recovery window: a round at the next good probe"

    offset[0] += RECOVERY_SECONDS
    world.poller.tick()
    assert world.poller.s.outage.down_since is not None
    probed = world.client.probed
    elapsed = timed_sleep(world.poller, 0.3)
    assert elapsed >= 0.29, f"returned after {elapsed:.3f}s, at probe {world.client.probed}"
    assert world.client.probed > probed


@pytest.mark.usefixtures("fast_probes")
def test_a_poke_wakes_a_sleep_during_an_outage(world: World) -> None:
    go_down(world)
    world.client.probes = [False]
    timer = threading.Timer(0.05, world.poller.poke)
    timer.start()
    try:
        elapsed = timed_sleep(world.poller, 30.0)
    finally:
        timer.cancel()
    assert elapsed < 10.0


def test_a_stop_wakes_a_sleep_during_an_outage(world: World) -> None:
    go_down(world)
    timer = threading.Timer(0.05, world.poller.stop)
    timer.start()
    try:
        elapsed = timed_sleep(world.poller, 30.0)
    finally:
        timer.cancel()
    assert elapsed < 10.0


@pytest.mark.usefixtures("fast_probes")
def test_no_cancellation_look_while_the_api_is_away(world: World) -> None:
    world.spool.running = ["r1"]
    go_down(world)
    world.client.calls.clear()
    world.client.probes = [False]
    timed_sleep(world.poller, 0.1)
    assert world.client.calls == []


@pytest.mark.usefixtures("fast_probes")
def test_a_cancellation_look_that_fails_between_polls_starts_the_outage(world: World) -> None:
    # Between polls only the cancellation look calls the API: when it fails through its
    # retries, health names the outage at once and the sleep probes instead of calling.
    world.spool.running = ["r1"]
    world.poller.tick()
    assert world.poller.s.outage.down_since is None
    world.client.fail(DOWN, "cancelling_flow_runs")
    world.poller.duty("cancellations").next_at = float("-inf")
    world.client.probes = [False]
    world.client.calls.clear()
    assert timed_sleep(world.poller, 30.0) < 10.0  # seen between rounds: the sleep ends
    assert world.client.names() == ["cancelling_flow_runs"]
    assert world.poller.s.outage.down_since is not None
    assert world.poller.s.outage.last_error == str(DOWN)
    assert world.poller.health()[1]["api"]["ok"] is False
    world.client.calls.clear()
    world.client.probes = [False]
    timed_sleep(world.poller, 0.1)
    assert world.client.calls == []  # no more cancellation looks while it is away


@pytest.mark.usefixtures("fast_probes")
def test_health_names_the_error_of_a_cancellation_look_that_failed_between_polls(
    world: World,
) -> None:
    world.spool.running = ["r1"]
    world.poller.tick()
    world.client.fail(DOWN, "cancelling_flow_runs")
    world.poller.duty("cancellations").next_at = float("-inf")
    world.client.probes = [False]
    timed_sleep(world.poller, 30.0)
    reason = world.poller.health()[1]["api"]["reason"]
    assert str(DOWN) in reason, reason  # not "... claiming nothing: None"
