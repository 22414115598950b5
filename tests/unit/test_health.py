"""Health: `Poller.health()` (each check, its reason and values) and the HTTP body
`agent.httpd.health_body` makes of it. A real Poller with a fake API client, spool and
worker registry; the poll loop's own `tick()` sets what health reads."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import PrefectClient
from agent.core.errors import ApiError, AuthError, TransientApiError
from agent.core.jobvars import base_job_template
from agent.observe.httpd import health_body
from agent.poller.loop import Poller
from agent.settings import defaults
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import CUR, Spool
from agent.spool.registry import BUSY, DEAD, IDLE, Registry

URL = "http://prefect.invalid/api"
ROOT = Path("/srv/agent/spool")


class FakeClient(PrefectClient):
    """Answers the calls a tick makes; raises ``error`` for every call when set."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(url=URL))
        self.error: ApiError | None = None
        self.runs: list[dict[str, Any]] = []
        self.calls: list[str] = []

    def request(
        self, call: str, method: str, path: str, json: Any = None, deadline: float | None = None
    ) -> Any:
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        if call == "read_work_pool":
            return {"name": "pool", "type": "local-agent", "base_job_template": base_job_template()}
        if call == "get_scheduled_flow_runs":
            return self.runs
        if call in ("filter_flow_runs", "cancelling_flow_runs"):
            return []
        return None


# A due run as get_scheduled_flow_runs gives it.
DUE = {"flow_run": {"id": "run-1", "name": "r", "state": {"type": "SCHEDULED", "name": "Late"}}}


class FakeSpool(Spool):
    """An empty spool whose write probe and access check say what the test sets."""

    def __init__(self) -> None:
        super().__init__(ROOT)
        self.probe_error: str | None = None
        self.access = True
        self.running: list[str] = []  # specs in cur/: what busy workers run

    def run_ids(self, state: str) -> list[str]:
        return self.running if state == CUR else []

    def probe(self) -> str | None:
        return self.probe_error

    def writable(self) -> bool:
        return self.access


class FakeRegistry(Registry):
    def __init__(self, idle: int = 1, busy: int = 0, dead: int = 0) -> None:
        super().__init__(ROOT)
        self.set(idle, busy, dead)

    def set(self, idle: int = 0, busy: int = 0, dead: int = 0) -> None:
        self._counts = {IDLE: idle, BUSY: busy, DEAD: dead}

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


class World:
    def __init__(self) -> None:
        self.client = FakeClient()
        self.spool = FakeSpool()
        self.registry = FakeRegistry()
        config = PollerConfig(api=ApiSettings(url=URL), pool="pool", spool_dir=ROOT)
        self.poller = Poller(config, self.client, self.spool, self.registry)


@pytest.fixture
def world() -> World:
    return World()


def reasons(poller: Poller) -> dict[str, Any]:
    ok, checks = poller.health()
    body = health_body(ok, checks, verbose=False)
    assert body["healthy"] is ok
    return dict(body["reasons"])


# -- Poller.health() ---------------------------------------------------------------------


def test_all_ok_after_a_good_tick(world: World) -> None:
    world.poller.tick()
    assert world.client.calls[-1] == "get_scheduled_flow_runs"
    ok, checks = world.poller.health()
    assert ok
    assert {name: c["ok"] for name, c in checks.items()} == {
        "api": True,
        "poll": True,
        "workers": True,
        "spool": True,
        "containment": True,  # how runs are contained is shown, never a failure
        "events": True,  # the events stream: shown, never a failure (polling covers)
    }
    assert checks["containment"]["version"] == "unknown"  # no worker recorded it yet
    assert all(c["reason"] is None for c in checks.values())
    assert reasons(world.poller) == {}
    assert checks["poll"]["last_error"] is None
    assert checks["poll"]["max_age_seconds"] == 30.0  # max(3 x 10 s, 30 s)
    assert 0 <= checks["poll"]["last_successful_poll_age_seconds"] < 5
    assert checks["workers"] == {"ok": True, "reason": None, IDLE: 1, BUSY: 0, DEAD: 0}
    assert checks["api"] == {
        "ok": True,
        "reason": None,
        "unavailable_since": None,
        "not_prefect_since": None,
        "outbox_reports": 0,
    }
    assert checks["spool"] == {
        "ok": True,
        "reason": None,
        "path": str(ROOT),
        "depth": {"waiting": 0, "running": 0},
    }


def test_poll_too_old_names_the_age_the_limit_and_the_last_error(world: World) -> None:
    world.poller.tick()
    world.client.error = TransientApiError("get_scheduled_flow_runs", f"cannot reach {URL}")
    world.poller.tick()
    # A failed round (its calls retried for 20 s) is an outage, which the api check names;
    # the poll check fails only after no success for longer than its limit. The last
    # error names the duty that failed.
    outage = (
        "the Prefect API has been unavailable for 0s, claiming nothing: "
        f"claim: get_scheduled_flow_runs: cannot reach {URL}"
    )
    assert reasons(world.poller) == {"api": outage}
    assert world.client.calls[-1] == "get_scheduled_flow_runs"
    assert world.poller.health()[1]["poll"]["last_error"] == (
        f"claim: get_scheduled_flow_runs: cannot reach {URL}"
    )

    assert world.poller.s.last_success is not None
    world.poller.s.last_success -= 95
    assert reasons(world.poller) == {
        "api": outage,
        "poll": f"no successful poll for 95s (limit 30s): {world.poller.s.last_error}",
    }
    ok, checks = world.poller.health()
    assert not ok
    assert checks["poll"]["ok"] is False
    assert 95 <= checks["poll"]["last_successful_poll_age_seconds"] < 100

    world.client.error = None
    world.poller.tick()
    assert reasons(world.poller) == {}
    assert world.poller.s.last_error is None


def test_never_polled_counts_from_the_start_and_shows_the_auth_error(world: World) -> None:
    world.client.error = AuthError(
        "read_work_pool", "HTTP 401, the API key or auth string is wrong: Unauthorized", 401
    )
    world.poller.tick()
    assert world.poller.s.last_success is None
    assert reasons(world.poller) == {}  # within the limit of the start

    world.poller.started_at -= 31
    # An auth error is no outage: every API duty due tried, and each names the error.
    error = "read_work_pool: HTTP 401, the API key or auth string is wrong: Unauthorized"
    failed = ("work pool", "heartbeat", "stranded runs", "claim")
    assert reasons(world.poller) == {
        "poll": "no successful poll since the agent started 31s (limit 30s): "
        + "; ".join(f"{duty}: {error}" for duty in failed)
    }
    assert world.poller.health()[1]["poll"]["last_successful_poll_age_seconds"] is None


def test_old_poll_without_an_error_says_only_the_age(world: World) -> None:
    world.poller.s.last_success = time.time() - 40
    assert reasons(world.poller) == {"poll": "no successful poll for 40s (limit 30s)"}


def test_no_live_worker(world: World) -> None:
    world.registry.set(idle=0, busy=0, dead=2)
    assert reasons(world.poller) == {"workers": "no live worker process (2 dead)"}
    world.registry.set(idle=0, busy=1, dead=2)  # a busy worker is alive
    assert reasons(world.poller) == {}
    world.registry.set()
    assert reasons(world.poller) == {"workers": "no live worker process (0 dead)"}
    assert world.poller.health()[1]["workers"] == {
        "ok": False,
        "reason": "no live worker process (0 dead)",
        IDLE: 0,
        BUSY: 0,
        DEAD: 0,
    }


def test_spool_probe_error_from_the_tick(world: World) -> None:
    world.spool.probe_error = "cannot write: No space left on device"
    world.poller.tick()  # a full disk still passes os.access: only the probe sees it
    assert reasons(world.poller) == {
        "spool": f"spool {ROOT}: cannot write: No space left on device"
    }
    assert world.poller.s.last_error is None  # the poll itself went fine
    world.spool.probe_error = None
    world.poller.tick()
    assert reasons(world.poller) == {}


def test_spool_not_writable_before_any_probe(world: World) -> None:
    world.spool.access = False
    assert reasons(world.poller) == {
        "spool": f"spool {ROOT}: not writable (read-only or permissions)"
    }


def test_spool_error_claims_nothing_and_does_not_poll_faster(world: World) -> None:
    """A due run while the spool is not writable: seen, not claimed, and the poller
    keeps its idle pace (the run waits on the disk, not on a worker)."""
    world.client.runs = [DUE]
    world.spool.probe_error = "cannot write: Read-only file system"
    assert world.poller.tick() == 0
    assert "set_flow_run_state" not in world.client.calls
    assert reasons(world.poller) == {"spool": f"spool {ROOT}: cannot write: Read-only file system"}
    started = time.monotonic()
    world.poller._sleep(1.0)
    assert time.monotonic() - started >= 0.9


def test_a_run_left_for_want_of_a_worker_wakes_the_poller_when_one_is_free(world: World) -> None:
    world.client.runs = [DUE]
    world.registry.set(busy=1)
    world.spool.running = ["run-0"]
    assert world.poller.tick() == 0
    assert world.poller.s.backlog
    world.registry.set(idle=1)
    world.spool.running = []
    started = time.monotonic()
    world.poller._sleep(5.0)
    assert time.monotonic() - started < 1


def test_with_runs_waiting_the_poller_looks_for_a_free_worker_more_often_than_idle(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst's next run is claimed as soon as a slot frees, not at the next local look.
    monkeypatch.setattr(defaults, "LOCAL_CHECK_SECONDS", 10.0)
    world.client.runs = [DUE]
    world.registry.set(busy=1)
    world.spool.running = ["run-0"]
    assert world.poller.tick() == 0
    assert world.poller.s.backlog

    def free() -> None:
        world.registry.set(idle=1)
        world.spool.running = []

    threading.Timer(0.2, free).start()  # the worker ends its run while the poller sleeps
    started = time.monotonic()
    world.poller._sleep(30.0)
    assert time.monotonic() - started < 5


def test_every_failing_check_has_a_reason(world: World) -> None:
    world.poller.s.last_success = time.time() - 60
    world.poller.s.last_error = "get_scheduled_flow_runs: HTTP 503: Service Unavailable"
    world.registry.set(dead=1)
    world.spool.access = False
    assert set(reasons(world.poller)) == {"poll", "workers", "spool"}


# -- health_body ----------------------------------------------------------------------


CHECKS: dict[str, Any] = {
    "poll": {"ok": True, "reason": None, "last_error": None},
    "workers": {"ok": False, "reason": "no live worker process (1 dead)", IDLE: 0, DEAD: 1},
    "spool": {"ok": False, "reason": "spool /s: cannot write: Read-only file system"},
}


def test_health_body_lists_only_the_failing_checks_with_their_reasons() -> None:
    assert health_body(False, CHECKS, verbose=False) == {
        "healthy": False,
        "reasons": {
            "workers": "no live worker process (1 dead)",
            "spool": "spool /s: cannot write: Read-only file system",
        },
        "checks": {"poll": True, "workers": False, "spool": False},
    }


def test_health_body_verbose_carries_every_value() -> None:
    body = health_body(False, CHECKS, verbose=True)
    assert body["checks"] == CHECKS
    assert body["reasons"] == {
        "workers": "no live worker process (1 dead)",
        "spool": "spool /s: cannot write: Read-only file system",
    }


def test_health_body_healthy() -> None:
    checks = {name: {"ok": True, "reason": None} for name in ("poll", "workers", "spool")}
    assert health_body(True, checks, verbose=False) == {
        "healthy": True,
        "reasons": {},
        "checks": {"poll": True, "workers": True, "spool": True},
    }


def test_with_the_events_stream_connected_a_poll_may_be_three_pushed_caps_old(
    world: World,
) -> None:
    """Idle polls 30 s apart must never look overdue: the limit is 3 x the cap in force."""
    assert world.poller.events is not None
    world.poller.events.connected_since = time.time()
    world.poller.tick()
    world.poller.s.last_success = time.time() - 45  # one and a half idle sleeps
    ok, checks = world.poller.health()
    assert ok
    assert checks["poll"]["max_age_seconds"] == 90.0
    world.poller.s.last_success = time.time() - 95
    assert set(reasons(world.poller)) == {"poll"}
