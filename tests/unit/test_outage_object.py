"""The Outage object alone (agent/poller/outage.py), on a clock the test moves: when
an outage starts and ends, how often the health endpoint is probed, when a round
starts (the recovery window), and which errors `is_outage` counts as the API being
away."""

from __future__ import annotations

import pytest

from agent.core.errors import ApiError, AuthError, NotFoundError, TransientApiError
from agent.poller.outage import RECOVERY_SECONDS, Outage, is_outage
from agent.settings import defaults
from tests.unit.outage_support import DOWN, OutageClient

# -- the Outage object alone, on a clock the test moves ------------------------------------


class Clock:
    """Monotonic and wall time the test sets by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def outage_on(clock: Clock, *probes: bool) -> tuple[Outage, OutageClient]:
    client = OutageClient()
    client.probes = list(probes) or [False]
    return Outage(client, clock=clock, wall=clock.wall), client


def test_an_outage_starts_at_the_first_failure_and_keeps_its_start(clock: Clock) -> None:
    outage, _ = outage_on(clock)
    assert not outage.active and outage.down_since is None
    outage.failed(DOWN)
    assert outage.active and outage.down_since == clock.wall()
    started = outage.down_since
    clock.now += 5
    later = TransientApiError("heartbeat", "HTTP 503", 503)
    outage.failed(later)
    assert outage.down_since == started  # goes on; not restarted
    assert outage.last_error == str(later)
    outage.ok()
    assert not outage.active and outage.down_since is None and outage.last_error is None


def test_the_health_endpoint_is_probed_at_most_every_probe_interval(clock: Clock) -> None:
    assert defaults.API_PROBE_SECONDS == 1.0
    outage, client = outage_on(clock, False)
    outage.failed(DOWN)
    assert outage.returned() is False
    assert client.probed == 1
    for step in (0.25, 0.5, 0.99):  # within the interval: no probe at all
        clock.now = 1000.0 + step
        assert outage.returned() is False
    assert client.probed == 1
    clock.now = 1001.0
    assert outage.returned() is False
    assert client.probed == 2
    clock.now = 1001.5
    outage.returned()
    assert client.probed == 2


def test_a_good_probe_after_a_failed_one_starts_a_round_at_once(clock: Clock) -> None:
    outage, client = outage_on(clock, False, False, True)
    outage.failed(DOWN)
    assert outage.returned() is False
    clock.now += 1.0
    assert outage.returned() is False
    clock.now += 1.0
    assert outage.returned() is True  # the first good probe: a round now
    assert client.probed == 3


def test_a_server_answering_health_from_the_start_is_left_to_the_loops_backoff(
    clock: Clock,
) -> None:
    """Its database is away, say: /health answers while calls fail. Without a failed
    probe first nothing says it came back: a round per probe would be a poll a second."""
    outage, client = outage_on(clock, True)
    outage.failed(TransientApiError("get_scheduled_flow_runs", "HTTP 503", 503))
    for _ in range(10):
        assert outage.returned() is False
        clock.now += 1.0
    assert client.probed == 10


def test_in_the_recovery_window_each_good_probe_starts_a_round(clock: Clock) -> None:
    """A SQLite server back from a restart answers /health at once and 503 "database is
    locked" to calls for a while: rounds follow about every second (each probe) for
    RECOVERY_SECONDS after its return, so the first claim comes within about a second
    of its recovery; after the window, the loop's backoff again."""
    outage, client = outage_on(clock, False, True)
    outage.failed(DOWN)
    assert outage.returned() is False
    clock.now += 1.0
    returned_at = clock.now
    assert outage.returned() is True
    rounds = []
    for _ in range(int((RECOVERY_SECONDS + 5) / 0.25)):  # the window and 5 s past it
        clock.now += 0.25
        if outage.returned():
            outage.failed(TransientApiError("get_scheduled_flow_runs", "HTTP 503", 503))
            rounds.append(clock.now - returned_at)
    gaps = [b - a for a, b in zip([0.0, *rounds], rounds, strict=False)]
    assert gaps and max(gaps) <= defaults.API_PROBE_SECONDS + 0.25  # within about a second
    assert rounds[-1] < RECOVERY_SECONDS  # and only inside the window
    assert len(rounds) >= RECOVERY_SECONDS / defaults.API_PROBE_SECONDS - 2
    assert client.probed > len(rounds)  # still probed after the window, no round


def test_a_failed_probe_in_the_window_then_a_good_one_starts_a_round(clock: Clock) -> None:
    outage, _ = outage_on(clock, False, True, False, True)
    outage.failed(DOWN)
    outage.returned()
    clock.now += 1.0
    assert outage.returned() is True
    clock.now += 1.0
    assert outage.returned() is False  # away again
    clock.now += 1.0
    assert outage.returned() is True  # back: a round at once


def test_the_end_of_an_outage_closes_the_recovery_window(clock: Clock) -> None:
    outage, _ = outage_on(clock, False, True)
    outage.failed(DOWN)
    outage.returned()
    clock.now += 1.0
    assert outage.returned() is True
    outage.ok()  # the round went through
    outage.failed(DOWN)  # a new outage, /health answering from its start
    for _ in range(5):
        clock.now += 1.0
        assert outage.returned() is False


@pytest.mark.parametrize(
    ("error", "away"),
    [
        (TransientApiError("c", "cannot reach"), True),
        (TransientApiError("c", "HTTP 429", 429), True),
        (ApiError("c", "HTTP 500", 500), True),
        (ApiError("c", "no status"), True),
        (AuthError("c", "HTTP 401", 401), False),
        (NotFoundError("c", "HTTP 404", 404), False),
        (ApiError("c", "HTTP 422", 422), False),
        (ValueError("not an API error"), False),
    ],
    ids=["unreachable", "429", "500", "no-status", "401", "404", "422", "not-api"],
)
def test_is_outage_says_the_api_is_away_not_refusing_us(error: Exception, away: bool) -> None:
    assert is_outage(error) is away
