"""An API URL that reaches something other than Prefect (a proxy, a captive portal, the
wrong port): an error with its own reason in health, said at most once a minute, never
an outage, never a crash; a pool name the server refuses stops the poller (exit 78)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agent.api.outbox import worth_keeping
from agent.core.errors import ApiError, ApiShapeError, ConfigError
from agent.poller.outage import NOT_PREFECT_LOG_SECONDS, Outage, is_outage
from tests.unit.test_health import URL, FakeClient, World, reasons


@pytest.fixture
def world() -> World:
    return World()


HTML = ApiShapeError(
    "read_work_pool", f"{URL} does not look like a Prefect API: got text/html", 200
)
LIST = ApiShapeError("read_work_pool", "expected a work pool as a JSON object, got a list")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("error", [HTML, LIST], ids=["html", "json-list"])
def test_an_api_that_is_not_prefect_is_no_outage(error: ApiShapeError) -> None:
    assert not is_outage(error)
    assert worth_keeping(error)  # a report waits in the outbox until the URL is fixed


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (HTML, f"read_work_pool: {URL} does not look like a Prefect API: got text/html"),
        (
            LIST,
            f"{URL} does not look like a Prefect API: read_work_pool: expected a work pool "
            "as a JSON object, got a list",
        ),
    ],
    ids=["html", "json-list"],
)
def test_health_says_the_api_does_not_look_like_prefect(
    world: World, error: ApiShapeError, reason: str
) -> None:
    world.client.error = error
    world.poller.tick()
    assert reasons(world.poller) == {"api": f"{reason}; claiming nothing"}
    assert world.poller.s.outage.down_since is None  # no outage: nothing to probe for
    assert world.poller.health()[1]["api"]["not_prefect_since"] is not None


def test_health_is_ok_again_once_the_api_answers_as_prefect(world: World) -> None:
    world.client.error = HTML
    world.poller.tick()
    world.client.error = None
    world.poller.tick()
    assert reasons(world.poller) == {}


def test_the_error_is_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = Outage(FakeClient(), clock=clock)
    with caplog.at_level(logging.DEBUG):
        for _ in range(30):  # rounds every second for 30 s, several calls each
            outage.wrong_api(HTML)
            outage.wrong_api(LIST)
            clock.now += 1.0
        assert len(errors(caplog)) == 1
        clock.now += NOT_PREFECT_LOG_SECONDS - 30.0
        outage.wrong_api(LIST)
    said = errors(caplog)
    assert len(said) == 2
    assert said[0] == (
        f"read_work_pool: {URL} does not look like a Prefect API: got text/html; claiming "
        "nothing, trying again every round (said at most once a minute)"
    )


def test_a_poller_round_after_round_says_it_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.client.error = LIST
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            world.poller.tick()
    assert len(errors(caplog)) == 1
    assert world.poller.polls == 5  # and it goes on


class RefusingClient(FakeClient):
    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_work_pool":
            raise ApiError(call, f"HTTP {self.status}: Method Not Allowed", self.status)
        return super().request(call, method, path, json, deadline)


@pytest.mark.parametrize("status", [405, 422])
def test_a_pool_name_the_server_refuses_stops_the_poller_naming_the_pool(
    world: World, status: int
) -> None:
    world.poller.s.client = RefusingClient(status)
    with pytest.raises(ConfigError, match=r"work pool 'pool' is refused by the server: .*HTTP"):
        world.poller.tick()
