"""Crash loops: what the poller (free slots, health) and `agent status` (its snapshot,
problems, exit code and table) make of a worker in backoff."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api.client import PrefectClient
from agent.cli.status import EXIT_DEGRADED, collect, exit_code, problems
from agent.cli.status_table import render_table
from agent.core.crashloop import Verdict
from agent.poller.loop import Poller
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import Spool
from agent.spool.registry import BACKOFF, BUSY, DEAD, IDLE, Registry
from tests.unit.crashloop_support import URL, crash

# -- what the poller and `agent status` make of it ---------------------------------------------


@pytest.fixture
def looping(tmp_path: Path) -> Iterator[tuple[Spool, Registry]]:
    """A spool with w0 idle and w1 in backoff (5 unexpected exits), both held by us."""
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    idle = Registry(spool.root)
    idle.register("w0")
    for _ in range(5):
        crash(lambda: Registry(spool.root), "w1")
    backoff = Registry(spool.root)
    assert backoff.register("w1").verdict == Verdict(5, 10.0)
    yield spool, backoff
    idle.release()
    backoff.release()


def test_a_worker_in_backoff_is_no_free_slot(looping: tuple[Spool, Registry]) -> None:
    spool, registry = looping
    config = PollerConfig(api=ApiSettings(url=URL), pool="p", spool_dir=spool.root)
    poller = Poller(config, PrefectClient(config.api), spool, Registry(spool.root))
    assert poller.s.free_slots() == 1  # w0 only
    registry.set_state(IDLE)
    assert poller.s.free_slots() == 2


def test_health_fails_naming_the_crash_looping_worker(looping: tuple[Spool, Registry]) -> None:
    spool, registry = looping
    config = PollerConfig(api=ApiSettings(url=URL), pool="p", spool_dir=spool.root)
    poller = Poller(config, PrefectClient(config.api), spool, Registry(spool.root))
    ok, checks = poller.health()
    assert not ok
    workers = checks["workers"]
    assert workers["ok"] is False
    assert (workers[IDLE], workers[BUSY], workers[BACKOFF], workers[DEAD]) == (1, 0, 1, 0)
    [entry] = workers["crash_looping"]
    assert entry["worker_id"] == "w1" and entry["exits"] == 5
    assert entry["until"] - time.time() == pytest.approx(10, abs=2)
    assert workers["reason"].startswith(
        "worker w1 is crash-looping (exited unexpectedly 5 times in the last 10 min); "
        "it takes runs again in "
    )
    assert all(c["ok"] for name, c in checks.items() if name != "workers")
    registry.set_state(IDLE)
    ok, checks = poller.health()
    assert ok and checks["workers"]["reason"] is None and "crash_looping" not in checks["workers"]


def test_status_shows_backoff_and_recent_exits(looping: tuple[Spool, Registry]) -> None:
    spool, _ = looping
    now = time.time()
    snapshot = collect(spool.root, now=now)
    rows = {w["worker_id"]: w for w in snapshot["workers"]}
    assert (rows["w0"]["state"], rows["w0"]["recent_exits"], rows["w0"]["backoff_until"]) == (
        IDLE,
        0,
        None,
    )
    assert (rows["w1"]["state"], rows["w1"]["alive"], rows["w1"]["recent_exits"]) == (
        BACKOFF,
        True,
        5,
    )
    assert rows["w1"]["backoff_until"] == pytest.approx(now + 10, abs=2)
    assert snapshot == json.loads(json.dumps(snapshot))
    found = problems(snapshot)
    assert len(found) == 2 and found[0] == "poller not running"
    assert found[1].startswith("worker w1 crash-looping (5 unexpected exits in 10 min, takes runs")
    assert exit_code(snapshot) == EXIT_DEGRADED
    table = render_table(snapshot)
    assert "WORKERS (2: 0 busy, 1 idle, 1 backoff, 0 dead)" in table
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("WORKER "))
    assert lines[header].split()[-1] == "EXITS"
    assert lines[header + 1].split()[:2] == ["w0", "idle"] and lines[header + 1].split()[-1] == "0"
    assert lines[header + 2].split()[:2] == ["w1", "backoff"]
    assert lines[header + 2].split()[-1] == "5"
    # Ten minutes on, the exits have left the window.
    assert {w["recent_exits"] for w in collect(spool.root, now=now + 700)["workers"]} == {0}
