"""agent/core/backoff.py: the poll interval policy, its cap in force and look-ahead."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from agent.api.client import PrefectClient
from agent.cli.main import cli
from agent.cli.option_types import parse_poll_cap
from agent.core.backoff import next_poll_interval, poll_cap
from agent.core.errors import ApiError, ConfigError, NotFoundError
from agent.core.jobvars import base_job_template
from agent.poller.loop import Poller
from agent.settings import configfile
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import Spool
from agent.spool.registry import BUSY, DEAD, IDLE, Registry
from tests.unit.strategies import FAST

MIN, MAX = 0.5, 10.0


def test_work_found_resets_to_minimum() -> None:
    assert next_poll_interval(8.0, True, MIN, MAX) == MIN


def test_idle_doubles_the_interval() -> None:
    assert next_poll_interval(1.0, False, MIN, MAX) == 2.0
    assert next_poll_interval(2.0, False, MIN, MAX) == 4.0


def test_idle_is_capped_at_maximum() -> None:
    assert next_poll_interval(8.0, False, MIN, MAX) == MAX
    assert next_poll_interval(MAX, False, MIN, MAX) == MAX


def test_idle_never_goes_below_minimum() -> None:
    assert next_poll_interval(0.0, False, MIN, MAX) == MIN
    assert next_poll_interval(0.1, False, MIN, MAX) == MIN


def test_repeated_idle_polls_reach_the_cap_and_stay() -> None:
    interval = MIN
    seen = []
    for _ in range(10):
        interval = next_poll_interval(interval, False, MIN, MAX)
        seen.append(interval)
    assert seen[:5] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert all(value == MAX for value in seen[4:])


# -- the next known run (look-ahead) --------------------------------------------------------


def test_the_sleep_ends_when_the_next_known_runs_window_opens() -> None:
    assert next_poll_interval(MAX, False, MIN, MAX, until_next=3.0) == 3.0
    assert next_poll_interval(1.0, False, MIN, MAX, until_next=3.0) == 2.0  # sooner anyway


def test_a_window_about_to_open_or_open_already_is_polled_for_at_the_minimum() -> None:
    assert next_poll_interval(MAX, False, MIN, MAX, until_next=0.1) == MIN
    assert next_poll_interval(MAX, False, MIN, MAX, until_next=-5.0) == MIN


def test_a_run_beyond_the_cap_leaves_the_cap() -> None:
    assert next_poll_interval(MAX, False, MIN, MAX, until_next=3600.0) == MAX


def test_work_found_still_resets_to_the_minimum_whatever_the_next_run() -> None:
    assert next_poll_interval(8.0, True, MIN, MAX, until_next=5.0) == MIN


seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
caps = st.tuples(
    st.floats(min_value=0.01, max_value=100.0), st.floats(min_value=0.0, max_value=1e4)
).map(lambda pair: (pair[0], pair[0] + pair[1]))  # (minimum, cap >= minimum)
untils = st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))


@FAST
@given(seconds, st.booleans(), caps, untils)
def test_the_interval_is_always_within_the_minimum_and_the_cap(
    current: float, found_work: bool, bounds: tuple[float, float], until_next: float | None
) -> None:
    minimum, cap = bounds
    assert minimum <= next_poll_interval(current, found_work, minimum, cap, until_next) <= cap


@FAST
@given(seconds, st.booleans(), caps, untils)
def test_the_next_poll_is_never_after_a_known_runs_window_the_minimum_can_reach(
    current: float, found_work: bool, bounds: tuple[float, float], until_next: float | None
) -> None:
    minimum, cap = bounds
    interval = next_poll_interval(current, found_work, minimum, cap, until_next)
    if until_next is not None and until_next >= minimum:
        assert interval <= until_next


@FAST
@given(seconds, st.booleans(), caps)
def test_no_known_run_is_the_old_policy(
    current: float, found_work: bool, bounds: tuple[float, float]
) -> None:
    minimum, cap = bounds
    expected = minimum if found_work else min(cap, max(minimum, current * 2))
    assert next_poll_interval(current, found_work, minimum, cap) == expected


# -- the cap in force ---------------------------------------------------------------------


def test_with_the_stream_connected_the_longer_pushed_cap() -> None:
    assert poll_cap(True, 10.0, 30.0) == 30.0


def test_without_the_stream_the_cap_of_old() -> None:
    assert poll_cap(False, 10.0, 30.0) == 10.0


def test_a_pushed_cap_shorter_than_the_cap_never_shortens_it() -> None:
    assert poll_cap(True, 60.0, 30.0) == 60.0


def test_the_pushed_cap_reached_doubling_from_the_minimum() -> None:
    interval, seen = MIN, []
    for _ in range(8):
        interval = next_poll_interval(interval, False, MIN, poll_cap(True, MAX, 30.0))
        seen.append(interval)
    assert seen == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


# -- the poller's look-ahead (agent/poller/claiming.py, agent/poller/loop.py) ------------------

URL = "http://prefect.invalid/api"
PREFETCH = 10.0
OTHER_DEPLOYMENT = "d-gone"


def at(seconds_from_now: float) -> str:
    """A run's due time as the server writes it."""
    return datetime.fromtimestamp(time.time() + seconds_from_now, UTC).isoformat()


class FakeClient(PrefectClient):
    """Serves ``runs`` to every poll (as get_scheduled_flow_runs gives them), accepts
    every claim, and records what each poll asked for."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.runs: list[dict[str, Any]] = []
        self.asked: list[tuple[float, float]] = []  # (when, scheduled_before), wall time
        self.claimed: list[str] = []
        self.cancelled: list[str] = []
        self.refuse = False  # polls fail (HTTP 422) while set

    def due(self, run_id: str, in_seconds: float, **fields: Any) -> None:
        self.runs.append(
            {
                "flow_run": {
                    "id": run_id,
                    "name": run_id,
                    "state_type": "SCHEDULED",
                    "state_name": "Scheduled",
                    "next_scheduled_start_time": at(in_seconds),
                    **fields,
                }
            }
        )

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        if call == "read_work_pool":
            return {"name": "pool", "type": "local-agent", "base_job_template": base_job_template()}
        if call == "get_scheduled_flow_runs":
            if self.refuse:
                raise ApiError(call, "HTTP 422: Unprocessable Entity", 422)
            before = datetime.fromisoformat(json["scheduled_before"]).timestamp()
            self.asked.append((time.time(), before))
            return self.runs
        if call == "read_deployment":
            if path.endswith(OTHER_DEPLOYMENT):
                raise NotFoundError(call, "HTTP 404: Deployment not found", 404)
            return {"id": path.rsplit("/", 1)[-1], "job_variables": {}}
        if call == "set_flow_run_state":
            run_id = path.split("/")[2]
            if json["state"]["type"] == "CANCELLED":
                self.cancelled.append(run_id)
            else:
                self.claimed.append(run_id)
            return {"status": "ACCEPT", "state": json["state"]}
        if call in ("filter_flow_runs", "cancelling_flow_runs", "read_workers"):
            return []
        return None


class Workers(Registry):
    def __init__(self, root: Path, idle: int) -> None:
        super().__init__(root)
        self.idle = idle

    def counts(self) -> dict[str, int]:
        return {IDLE: self.idle, BUSY: 0, DEAD: 0}


class World:
    def __init__(self, root: Path, idle: int = 2, **config: Any) -> None:
        self.client = FakeClient()
        spool = Spool(root / "spool")
        spool.ensure()
        settings = {
            "prefetch_seconds": PREFETCH,
            "poll_interval_max": 10.0,
            "poll_interval_max_pushed": 30.0,
            "cloud_logs": False,
            "events": False,
            **config,
        }
        self.poller = Poller(
            PollerConfig(api=ApiSettings(url=URL), pool="pool", spool_dir=spool.root, **settings),
            self.client,
            spool,
            Workers(root, idle),
        )
        self.poller.duty("lost hosts").enabled = lambda: False  # not what is tested here

    def look_ahead(self) -> float:
        """How far past now the last poll asked."""
        when, before = self.client.asked[-1]
        return before - when

    def connect(self, up: bool = True) -> None:
        """The events stream, as the poller sees it (the thread itself is not started)."""
        assert self.poller.events is not None
        self.poller.events.connected_since = time.time() if up else None


def test_a_poll_asks_for_runs_up_to_prefetch_plus_the_cap(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.poller.tick()
    assert world.look_ahead() == pytest.approx(PREFETCH + 10.0, abs=1.0)


def test_with_the_stream_connected_a_poll_looks_as_far_as_the_pushed_cap(tmp_path: Path) -> None:
    world = World(tmp_path, events=True)
    world.poller.tick()
    assert world.look_ahead() == pytest.approx(PREFETCH + 10.0, abs=1.0)  # not connected yet
    world.connect()
    world.poller.tick()
    assert world.look_ahead() == pytest.approx(PREFETCH + 30.0, abs=1.0)


def test_a_run_due_after_the_prefetch_window_is_not_claimed_but_wakes_the_poller_for_it(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.poller.interval = 10.0  # idle at the cap
    world.client.due("later", PREFETCH + 6)
    world.poller.tick()
    assert world.client.claimed == []
    assert world.poller.s.backlog is False
    due_at = world.poller.s.next_due
    assert due_at is not None and abs(due_at - (time.time() + PREFETCH + 6)) < 1
    assert 5 < world.poller.interval <= 6  # its window opens in 6 s, not at the cap
    assert world.poller.health()[1]["poll"]["interval_seconds"] <= 6


def test_a_later_run_sets_no_backlog_even_with_no_worker_free(tmp_path: Path) -> None:
    world = World(tmp_path, idle=0)
    world.client.due("later", PREFETCH + 6)
    world.poller.tick()
    assert world.poller.s.backlog is False  # no freed worker wakes the poller for it
    world.client.due("now", 0)
    world.poller.tick()
    assert world.poller.s.backlog is True  # as before: a due run no worker can take


def test_the_earliest_later_run_of_ours_is_the_next_due(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.client.due("not-ours", PREFETCH + 2, job_variables={"labels": ["gpu"]})
    world.client.due("ours", PREFETCH + 4)
    world.client.due("ours-too", PREFETCH + 8)
    world.client.due("cancelling", PREFETCH + 1, state_type="CANCELLING", state_name="x")
    world.poller.tick()
    due_at = world.poller.s.next_due
    assert due_at is not None and abs(due_at - (time.time() + PREFETCH + 4)) < 1
    assert world.client.claimed == []


def test_a_due_run_listed_after_a_later_one_is_claimed(tmp_path: Path) -> None:
    """The server sorts by work queue priority first: a due run may follow a later one."""
    world = World(tmp_path)
    world.client.due("later", PREFETCH + 5)
    world.client.due("due", PREFETCH - 1)
    world.poller.tick()
    assert world.client.claimed == ["due"]
    assert world.poller.interval == world.poller.s.config.poll_interval_min


def test_a_later_run_of_a_deleted_deployment_is_left_until_it_is_due(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.client.due("orphan", PREFETCH + 5, deployment_id=OTHER_DEPLOYMENT)
    world.poller.tick()
    assert world.client.cancelled == []
    assert world.poller.s.next_due is None
    world.client.runs.clear()
    world.client.due("orphan", 1, deployment_id=OTHER_DEPLOYMENT)
    world.poller.tick()
    assert world.client.cancelled == ["orphan"]  # as before, once it is due


def test_a_failed_poll_or_a_round_without_one_knows_no_next_run(tmp_path: Path) -> None:
    """A run seen before may be gone; and a time gone by would keep the poller at its
    shortest interval through an outage."""
    world = World(tmp_path)
    world.client.due("later", PREFETCH + 2)
    world.poller.tick()
    assert world.poller.s.next_due is not None
    world.client.refuse = True
    world.poller.s.next_due = time.time()  # what a stale one would say: poll now
    world.poller.interval = 8.0
    world.poller.tick()
    assert world.poller.s.next_due is None
    assert world.poller.interval == 10.0  # doubling to the cap, as after any failed poll
    world.client.refuse = False
    world.poller.tick()
    assert world.poller.s.next_due is not None
    world.poller.duty("claim").enabled = lambda: False
    world.poller.tick()
    assert world.poller.s.next_due is None


def test_a_deployment_event_polls_at_once_then_from_the_minimum(tmp_path: Path) -> None:
    world = World(tmp_path, events=True)
    world.connect()
    world.poller.interval = 30.0
    started = time.monotonic()
    world.poller.schedule_changed()
    world.poller._sleep(30.0)  # woken at once
    assert time.monotonic() - started < 1
    world.poller.tick()
    minimum = world.poller.s.config.poll_interval_min
    assert world.poller.interval == minimum
    world.poller.tick()
    assert world.poller.interval == 2 * minimum  # then doubling, as after work


def test_a_deployment_event_during_a_round_makes_the_next_round_reset_too(tmp_path: Path) -> None:
    world = World(tmp_path, events=True)
    world.poller.interval = 8.0
    world.poller.tick()
    assert world.poller.interval == 10.0
    world.poller.schedule_changed()  # after that round's poll
    world.poller.tick()
    assert world.poller.interval == world.poller.s.config.poll_interval_min


def test_when_the_stream_drops_the_sleep_ends_at_the_shorter_cap(tmp_path: Path) -> None:
    world = World(tmp_path, events=True, poll_interval_max=1.0)
    world.connect()
    world.poller.tick()
    assert world.poller.s.lookahead == 30.0
    assert world.poller.health()[1]["poll"]["interval_cap_seconds"] == 30.0
    threading.Timer(0.3, world.connect, kwargs={"up": False}).start()
    started = time.monotonic()
    world.poller._sleep(30.0)
    assert 0.9 < time.monotonic() - started < 2.0  # 1 s after the sleep began, not 30
    assert world.poller.health()[1]["poll"]["interval_cap_seconds"] == 1.0


# -- the setting (agent/cli/option_types.py, agent/settings/configfile.py) --------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("30s", 30.0), ("1m", 60.0), ("6", 6.0), (0.5, 0.5)]
)
def test_the_pushed_cap_takes_a_duration_or_seconds(value: str | float, seconds: float) -> None:
    assert parse_poll_cap(value, "--poll-interval-max-pushed") == seconds


@pytest.mark.parametrize("value", ["0", "-5", "0.2", "nan", "inf", "soon", ""])
def test_a_pushed_cap_of_zero_or_below_the_shortest_interval_is_refused_by_name(
    value: str,
) -> None:
    with pytest.raises(ConfigError, match=r"^AGENT_POLL_INTERVAL_MAX_PUSHED '"):
        parse_poll_cap(value, "AGENT_POLL_INTERVAL_MAX_PUSHED")


def test_the_pushed_cap_below_the_shortest_interval_says_why() -> None:
    with pytest.raises(ConfigError, match=r"at least 0\.5s \(the shortest poll interval\)"):
        parse_poll_cap("0.2", "--poll-interval-max-pushed")


def test_the_pushed_cap_has_a_config_file_key_of_the_options_name() -> None:
    assert configfile.check({"poll-interval-max-pushed": "45s"}, "f") == {
        "poll_interval_max_pushed": "45s"
    }
    with pytest.raises(ConfigError, match="poll-interval-max-pushed"):
        configfile.check({"poll-interval-max-pushed": True}, "f")


def test_the_pushed_cap_option_refuses_a_bad_value_from_the_environment() -> None:
    result = CliRunner().invoke(
        cli,
        ["local", "start", "--pool", "p", "--spool", "/nonexistent", "--print-config"],
        env={"PREFECT_API_URL": URL, "AGENT_POLL_INTERVAL_MAX_PUSHED": "0.1"},
    )
    assert result.exit_code == 2
    assert "AGENT_POLL_INTERVAL_MAX_PUSHED" in result.output
    assert "at least 0.5s (the shortest poll interval)" in result.output
