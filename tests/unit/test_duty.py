"""agent/poller/duty.py: the poller's duties, run in order by `run_due`. A failing duty
never stops the others and is tried again after its retry period; a configuration error
stops the poller; a failure that shows the API is away starts the outage and skips the
rest of the round's API duties. Plain duties on a clock the test passes in."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from agent.api.client import PrefectClient
from agent.core.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NotFoundError,
    SpoolError,
    TransientApiError,
)
from agent.poller.duty import EVERY_ROUND, Duty, run_due
from agent.poller.outage import Outage
from agent.settings.config import ApiSettings

URL = "http://prefect.invalid/api"
NOW = 1000.0
DOWN = TransientApiError("get_scheduled_flow_runs", f"cannot reach {URL}")


class Record:
    """What ran, in order."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def duty(
        self,
        name: str,
        raises: BaseException | None = None,
        every: float = EVERY_ROUND,
        retry: float = EVERY_ROUND,
        needs_api: bool = True,
        enabled: Callable[[], bool] = lambda: True,
    ) -> Duty:
        def run() -> None:
            self.ran.append(name)
            if raises is not None:
                raise raises

        return Duty(name, run, every=every, retry=retry, needs_api=needs_api, enabled=enabled)


@pytest.fixture
def record() -> Record:
    return Record()


@pytest.fixture
def outage() -> Outage:
    # The client is never called by `failed`: a real one at an address nothing answers.
    return Outage(PrefectClient(ApiSettings(url=URL)), clock=lambda: NOW, wall=lambda: NOW)


# -- order and timing --------------------------------------------------------------------------


def test_every_due_duty_runs_once_in_order(record: Record, outage: Outage) -> None:
    duties = [record.duty(name) for name in ("config", "heartbeat", "outbox", "claim")]
    result = run_due(duties, NOW, outage)
    assert record.ran == ["config", "heartbeat", "outbox", "claim"]
    assert not result.failed and result.failures == [] and result.spool_error is None


def test_a_duty_runs_again_after_its_period(record: Record, outage: Outage) -> None:
    duties = [record.duty("stranded", every=300.0), record.duty("claim")]
    run_due(duties, NOW, outage)
    assert duties[0].next_at == NOW + 300.0
    run_due(duties, NOW + 299.9, outage)
    assert record.ran == ["stranded", "claim", "claim"]
    run_due(duties, NOW + 300.0, outage)
    assert record.ran == ["stranded", "claim", "claim", "stranded", "claim"]


def test_a_duty_that_is_not_enabled_does_not_run(record: Record, outage: Outage) -> None:
    on = [False]
    duties = [record.duty("backend config", enabled=lambda: on[0]), record.duty("claim")]
    run_due(duties, NOW, outage)
    assert record.ran == ["claim"]
    on[0] = True
    run_due(duties, NOW, outage)
    assert record.ran == ["claim", "backend config", "claim"]


def test_a_once_only_duty_never_runs_again_after_it_succeeds(
    record: Record, outage: Outage
) -> None:
    duties = [record.duty("work pool", every=float("inf"))]
    run_due(duties, NOW, outage)
    run_due(duties, NOW + 1e9, outage)
    assert record.ran == ["work pool"]


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ApiError("heartbeat", "HTTP 422: Unprocessable Entity", 422),
        AuthError("heartbeat", "HTTP 401, the API key is wrong", 401),
        NotFoundError("heartbeat", "HTTP 404: Work pool not found", 404),
        SpoolError("cannot write: No space left on device"),
        RuntimeError("a bug"),
        KeyError("state"),
    ],
    ids=["422", "401", "404", "spool", "bug", "key-error"],
)
def test_a_failing_duty_never_stops_the_others(
    record: Record, outage: Outage, error: Exception
) -> None:
    duties = [record.duty("config"), record.duty("heartbeat", error), record.duty("claim")]
    result = run_due(duties, NOW, outage)
    assert record.ran == ["config", "heartbeat", "claim"]
    assert result.failed
    assert result.failures == [("heartbeat", error)]
    assert not outage.active  # refused or broken, not away


def test_every_failure_of_a_round_is_collected_in_order(record: Record, outage: Outage) -> None:
    first, second = RuntimeError("one"), ApiError("claim", "HTTP 422", 422)
    duties = [record.duty("a", first), record.duty("b"), record.duty("claim", second)]
    assert run_due(duties, NOW, outage).failures == [("a", first), ("claim", second)]


def test_a_failed_duty_is_tried_again_after_its_retry_period_not_its_period(
    record: Record, outage: Outage
) -> None:
    error = ApiError("filter_flow_runs", "HTTP 422", 422)
    stranded = record.duty("stranded runs", error, every=300.0, retry=30.0)
    run_due([stranded], NOW, outage)
    assert stranded.next_at == NOW + 30.0
    run_due([stranded], NOW + 29.0, outage)
    assert record.ran == ["stranded runs"]
    run_due([stranded], NOW + 30.0, outage)
    assert record.ran == ["stranded runs", "stranded runs"]


def test_after_a_success_the_period_applies_again(record: Record, outage: Outage) -> None:
    failing = [True]

    def look() -> None:
        record.ran.append("stranded runs")
        if failing[0]:
            raise ApiError("filter_flow_runs", "HTTP 422", 422)

    stranded = Duty("stranded runs", look, every=300.0, retry=30.0)
    run_due([stranded], NOW, outage)
    failing[0] = False
    run_due([stranded], NOW + 30.0, outage)
    assert stranded.next_at == NOW + 30.0 + 300.0


def test_a_duty_failing_every_round_with_no_retry_period_is_tried_every_round(
    record: Record, outage: Outage
) -> None:
    duties = [record.duty("claim", ApiError("claim", "HTTP 422", 422))]
    for step in range(3):
        run_due(duties, NOW + step * 0.5, outage)
    assert record.ran == ["claim"] * 3


def test_a_spool_error_is_the_rounds_spool_error(record: Record, outage: Outage) -> None:
    error = SpoolError("cannot publish spec for flow run r1: No space left on device")
    duties = [record.duty("settle write-ahead specs", error)]
    assert run_due(duties, NOW, outage).spool_error == str(error)


def test_an_unexpected_error_is_logged_with_its_traceback(
    record: Record, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    duties = [record.duty("claim", ZeroDivisionError("division by zero"), retry=2.0)]
    with caplog.at_level(logging.ERROR, logger="agent.poller.duty"):
        run_due(duties, NOW, outage)
    [entry] = caplog.records
    assert entry.getMessage() == "claim failed unexpectedly, will retry in 2.0s"
    assert entry.exc_info is not None and entry.exc_info[0] is ZeroDivisionError


def test_an_expected_error_is_logged_in_one_line(
    record: Record, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    error = ApiError("heartbeat", "HTTP 422: bad", 422)
    with caplog.at_level(logging.ERROR, logger="agent.poller.duty"):
        run_due([record.duty("heartbeat", error, retry=30.0)], NOW, outage)
    [entry] = caplog.records
    assert entry.getMessage() == f"heartbeat failed, will retry in 30.0s: {error}"
    assert entry.exc_info is None


# -- a configuration error stops the poller ---------------------------------------------------


def test_a_config_error_propagates_and_nothing_after_it_runs(
    record: Record, outage: Outage
) -> None:
    error = ConfigError("agent config variable 'cfg' not found")
    duties = [record.duty("backend config", error), record.duty("claim")]
    with pytest.raises(ConfigError) as info:
        run_due(duties, NOW, outage)
    assert info.value is error
    assert record.ran == ["backend config"]


# -- the API away: the outage ------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        DOWN,
        TransientApiError("heartbeat", "HTTP 503: Service Unavailable", 503),
        ApiError("heartbeat", "HTTP 500: Internal Server Error", 500),
    ],
    ids=["unreachable", "503", "500"],
)
def test_the_api_away_starts_the_outage_and_skips_the_rest_of_the_api_duties(
    record: Record, outage: Outage, error: ApiError
) -> None:
    duties = [
        record.duty("config"),
        record.duty("heartbeat", error),
        record.duty("spool probe", needs_api=False),
        record.duty("outbox delivery"),
        record.duty("claim"),
    ]
    result = run_due(duties, NOW, outage)
    assert record.ran == ["config", "heartbeat", "spool probe"]  # local duties still run
    assert result.failures == [("heartbeat", error)]
    assert outage.active and outage.down_since == NOW
    assert outage.last_error == str(error)


def test_duties_skipped_for_an_outage_are_due_again_next_round(
    record: Record, outage: Outage
) -> None:
    failing = [True]

    def heartbeat() -> None:
        record.ran.append("heartbeat")
        if failing[0]:
            raise DOWN

    claim = record.duty("claim", every=60.0)
    duties = [Duty("heartbeat", heartbeat), claim]
    run_due(duties, NOW, outage)
    assert record.ran == ["heartbeat"]
    assert claim.next_at == float("-inf")  # not run: still due, not pushed back a period
    failing[0] = False
    run_due(duties, NOW + 1.0, outage)
    assert record.ran == ["heartbeat", "heartbeat", "claim"]


def test_a_refusal_is_no_outage_and_skips_nothing(record: Record, outage: Outage) -> None:
    duties = [
        record.duty("heartbeat", AuthError("heartbeat", "HTTP 401", 401)),
        record.duty("claim", AuthError("get_scheduled_flow_runs", "HTTP 401", 401)),
    ]
    result = run_due(duties, NOW, outage)
    assert record.ran == ["heartbeat", "claim"]
    assert len(result.failures) == 2
    assert not outage.active


def test_an_outage_already_on_does_not_skip_a_rounds_duties_by_itself(
    record: Record, outage: Outage
) -> None:
    """A round during an outage tries its duties (as single attempts): the first that
    fails for want of the API skips the rest."""
    outage.failed(DOWN)
    duties = [record.duty("outbox delivery"), record.duty("claim")]
    result = run_due(duties, NOW, outage)
    assert record.ran == ["outbox delivery", "claim"] and not result.failed
