"""The poller through an API outage: a real Poller with a fake API client (each call
recorded with whether it was made as a single attempt; ``reachable()`` answers from a
script), a fake worker registry and a spool whose outbox is real files in tmp_path."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.api.outbox import PID, STATE, Outbox, Report, parse
from agent.core.errors import ApiError, AuthError, NotFoundError, TransientApiError
from agent.core.jobvars import base_job_template
from agent.core.spec import JobSpec, dumps
from agent.poller.loop import Poller
from agent.poller.outage import RECOVERY_SECONDS, Outage, is_outage
from agent.settings import defaults
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.files import read_json_object
from agent.spool.locks import read_poller_state
from agent.spool.moves import CUR, DONE, NEW, Spool
from agent.spool.registry import BUSY, DEAD, IDLE, Registry

URL = "http://prefect.invalid/api"
DOWN = TransientApiError("get_scheduled_flow_runs", f"cannot reach {URL}")
CRASHED = {"type": "CRASHED", "name": "Crashed", "message": "Flow run infrastructure died"}


class OutageClient(PrefectClient):
    """Answers a tick's calls. ``error`` is raised by every call, or only by those in
    ``failing`` when that is set. ``probes`` scripts `reachable()`: one answer per
    probe, the last repeated."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.error: ApiError | None = None
        self.failing: set[str] | None = None
        self.calls: list[tuple[str, bool]] = []  # (call, made as a single attempt)
        self.runs: list[dict[str, Any]] = []
        self.states: dict[str, str] = {}
        self.probes: list[bool] = [False]
        self.probed = 0
        self.cancelling: set[str] = set()  # shown Cancelling, of the runs asked about

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append((call, self._single_attempt))
        if self.error is not None and (self.failing is None or call in self.failing):
            raise self.error
        if call == "read_work_pool":
            return {"name": "pool", "type": "local-agent", "base_job_template": base_job_template()}
        if call == "get_scheduled_flow_runs":
            return self.runs
        if call == "cancelling_flow_runs":
            asked = json["flow_runs"]["id"]["any_"]
            return [
                {"id": i, "state": {"type": "CANCELLING"}} for i in asked if i in self.cancelling
            ]
        if call == "filter_flow_runs":
            return []
        if call == "read_flow_run":
            run_id = path.rsplit("/", 1)[1]
            return {"id": run_id, "state": {"type": self.states.get(run_id, "RUNNING")}}
        if call == "set_flow_run_state":
            self.states[path.split("/")[2]] = json["state"]["type"]
            return {"status": "ACCEPT", "state": json["state"]}
        return None

    def reachable(self) -> bool:
        answer = self.probes[min(self.probed, len(self.probes) - 1)]
        self.probed += 1
        return answer

    def names(self) -> list[str]:
        return [call for call, _ in self.calls]

    def fail(self, error: ApiError | None, *calls: str) -> None:
        self.error = error
        self.failing = set(calls) or None


class FakeSpool(Spool):
    """An empty spool (no spec waiting or running unless a test lists some) at a real
    path: the outbox is real."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.running: list[str] = []
        self.waiting: list[str] = []

    def run_ids(self, state: str) -> list[str]:
        return {CUR: self.running, NEW: self.waiting}.get(state, [])

    def probe(self) -> str | None:
        return None

    def writable(self) -> bool:
        return True


class FakeRegistry(Registry):
    def counts(self) -> dict[str, int]:
        return {IDLE: 1, BUSY: 0, DEAD: 0}


class World:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.client = OutageClient()
        self.spool = FakeSpool(root)
        config = PollerConfig(api=ApiSettings(url=URL), pool="pool", spool_dir=root, name="a1")
        self.poller = Poller(config, self.client, self.spool, FakeRegistry(root))
        self.outbox = Outbox(root)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "spool")


@pytest.fixture
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "API_PROBE_SECONDS", 0.02)
    monkeypatch.setattr(defaults, "LOCAL_CHECK_SECONDS", 0.005)


def go_down(world: World, error: ApiError = DOWN) -> None:
    """A good tick (pool set up), then one whose calls fail: the outage starts."""
    world.poller.tick()
    world.client.fail(error)
    world.poller.tick()
    assert world.poller.s.outage.down_since is not None


def timed_sleep(poller: Poller, seconds: float) -> float:
    started = time.monotonic()
    poller._sleep(seconds)
    return time.monotonic() - started


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


# -- the outbox in a tick -----------------------------------------------------------------------


def test_the_outbox_is_delivered_before_the_poll(world: World) -> None:
    world.poller.tick()
    world.client.calls.clear()
    world.outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    world.poller.tick()
    names = world.client.names()
    assert names.index("read_flow_run") < names.index("set_flow_run_state")
    assert names.index("set_flow_run_state") < names.index("get_scheduled_flow_runs")
    assert world.client.states["r1"] == "CRASHED"
    assert world.outbox.count() == 0
    assert world.poller.health()[0]


def test_the_outbox_goes_first_in_the_first_tick_after_an_outage(world: World) -> None:
    go_down(world)
    world.outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    world.client.fail(None)
    world.client.calls.clear()
    world.poller.tick()
    assert world.client.names() == ["update_flow_run", "get_scheduled_flow_runs"]
    assert world.outbox.count() == 0
    assert world.poller.s.outage.down_since is None


@pytest.mark.parametrize("call", ["read_flow_run", "set_flow_run_state"])
def test_a_transient_failure_delivering_the_outbox_is_an_outage(world: World, call: str) -> None:
    world.poller.tick()
    path = world.outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    world.client.calls.clear()
    world.client.fail(TransientApiError(call, "HTTP 503: Service Unavailable", 503), call)
    assert world.poller.tick() == 0
    assert path.exists()
    assert "get_scheduled_flow_runs" not in world.client.names()  # no claims meanwhile
    assert world.poller.s.outage.down_since is not None
    assert world.poller.s.last_error == f"outbox delivery: {call}: HTTP 503: Service Unavailable"
    reason = world.poller.health()[1]["api"]["reason"]
    assert reason.endswith("; 1 reports wait in the outbox")

    world.client.fail(None)
    world.poller.tick()
    assert not path.exists()
    assert world.client.states["r1"] == "CRASHED"
    assert world.poller.s.outage.down_since is None


def test_one_report_the_server_keeps_failing_does_not_stop_claims_for_good(world: World) -> None:
    """The API answers every call but this report's (an HTTP 500 the server gives it each
    time: a server bug, a payload it chokes on). Kept and retried, fine; but the claims
    of every other run must not wait on it forever."""
    world.poller.tick()
    world.outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    world.client.fail(
        ApiError("set_flow_run_state", "HTTP 500: Internal Server Error", 500), "set_flow_run_state"
    )
    world.client.calls.clear()
    for _ in range(5):
        world.poller.tick()
    assert "get_scheduled_flow_runs" in world.client.names()


def test_an_outbox_the_poller_cannot_list_does_not_end_the_poller(world: World) -> None:
    """Something took the outbox's name (or the folder became unreadable, or the disk
    fails): the loop must not die of it (`run` has no guard around `tick`, which catches
    only ApiError and SpoolError), and health must still answer."""
    world.outbox.dir.write_bytes(b"")
    world.poller.tick()
    world.poller.health()


# -- reports the poller makes itself -----------------------------------------------------------


def cancel_a_waiting_run(world: World) -> str:
    """A spec waiting in new/ whose run Prefect shows Cancelling: the cancellation duty
    takes it out of the spool and reports it Cancelled (through the poller's reporter)."""
    run_id = "r1"
    world.spool.ensure()
    world.spool.write_ahead(run_id, dumps(JobSpec(run_id, "pool", "claim-1", "a1")))
    world.spool.publish(run_id)
    world.spool.waiting = [run_id]
    world.client.cancelling = {run_id}
    world.poller.cancellations.run()
    world.spool.waiting = []
    assert world.spool.dir(DONE).joinpath(f"{run_id}.json").exists()
    return run_id


def test_a_cancelled_report_that_fails_waits_in_the_outbox(world: World) -> None:
    world.client.fail(
        TransientApiError("set_flow_run_state", f"cannot reach {URL}"), "set_flow_run_state"
    )
    cancel_a_waiting_run(world)
    [(path, report, problem)] = list(world.outbox.pending())
    assert problem == "" and report is not None
    assert path.parent == world.spool.root / "outbox"
    assert report.kind == STATE
    assert report.flow_run_id == "r1"
    assert report.force is True
    assert report.state == {
        "type": "CANCELLED",
        "name": "Cancelled",
        "message": "Cancelled by agent a1 before it started",
    }
    assert report.source == "poller"
    assert parse(read_json_object(path) or {}) == report

    # Delivered once the API answers: forced over the Cancelling the run is in.
    world.client.fail(None)
    world.client.states["r1"] = "CANCELLING"
    world.poller.tick()
    assert world.client.states["r1"] == "CANCELLED"
    assert world.outbox.count() == 0


def test_a_cancelled_report_the_server_refuses_is_not_kept(world: World) -> None:
    world.client.fail(
        ApiError("set_flow_run_state", "HTTP 422: Unprocessable Entity", 422),
        "set_flow_run_state",
    )
    cancel_a_waiting_run(world)
    assert world.client.names().count("set_flow_run_state") == 1  # tried once
    assert world.outbox.count() == 0


# -- the client's part ----------------------------------------------------------------------


class FlakyClient(PrefectClient):
    """A real client whose transport fails ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.sleeps: list[float] = []
        super().__init__(ApiSettings(url=URL), sleep=self.sleeps.append)
        self.failures = failures
        self.attempts = 0

    def _once(self, call: str, method: str, path: str, json: Any) -> Any:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransientApiError(call, f"cannot reach {URL}")
        return {"ok": True}


def test_single_attempt_makes_one_attempt_and_retries_resume_after() -> None:
    client = FlakyClient(failures=1)
    with client.single_attempt(), pytest.raises(TransientApiError):
        client.request("read_flow_run", "GET", "/flow_runs/r1")
    assert (client.attempts, client.sleeps) == (1, [])
    assert client._single_attempt is False

    client = FlakyClient(failures=1)
    assert client.request("read_flow_run", "GET", "/flow_runs/r1") == {"ok": True}
    assert client.attempts == 2 and len(client.sleeps) == 1

    client = FlakyClient(failures=1)
    with client.single_attempt(False):
        assert client.request("read_flow_run", "GET", "/flow_runs/r1") == {"ok": True}
    assert client.attempts == 2


def test_single_attempt_is_restored_when_the_block_raises() -> None:
    client = FlakyClient(failures=0)
    with pytest.raises(RuntimeError), client.single_attempt():
        assert client._single_attempt is True
        raise RuntimeError("boom")
    assert client._single_attempt is False


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
