"""Crash loops: how `Worker.run` backs off and exits (cleanly or not): an error escaping
run is counted by the next start, a stop is a clean exit, a crash-looping worker waits in
backoff before it takes runs, and a stop while busy marks its entry stopping. A real
Worker in a thread, on a tmp spool."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.core.crashloop import Policy
from agent.spool.registry import BACKOFF, BUSY, DEAD, IDLE, Registry
from tests.unit.crashloop_support import crash, make_worker, running

# -- Worker.run ------------------------------------------------------------------------------


def crashes(worker_id: str) -> float:
    value = REGISTRY.get_sample_value("agent_worker_crashes_total", {"worker": worker_id})
    return 0.0 if value is None else value


class Boom(Exception):
    pass


def test_an_error_escaping_run_is_no_clean_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker(tmp_path, "run-error")

    def take() -> None:
        raise Boom("a bug in the loop")

    monkeypatch.setattr(worker.spool, "take", take)
    with pytest.raises(Boom):
        worker.run()
    workers = tmp_path / "spool" / "workers"
    assert (workers / "run-error.json").exists()  # kept, and its lock is let go of
    assert Registry(tmp_path / "spool").workers()[0].state == DEAD
    before = crashes("run-error")
    with running(make_worker(tmp_path, "run-error")):
        wait(lambda: crashes("run-error") == before + 1, "the crash counted")
        assert Registry(tmp_path / "spool").recent_exits("run-error") != []
    assert not (workers / "run-error.json").exists()  # a stop is a clean exit


def test_a_stop_is_a_clean_exit_and_is_not_counted(tmp_path: Path) -> None:
    before = crashes("run-stop")
    for _ in range(2):
        with running(make_worker(tmp_path, "run-stop", Policy(threshold=1))):
            wait(lambda: state_of(tmp_path, "run-stop") == IDLE, "registered, idle")
    assert crashes("run-stop") == before
    assert (
        REGISTRY.get_sample_value("agent_worker_crashes_total", {"worker": "run-stop"}) is not None
    )
    assert Registry(tmp_path / "spool").recent_exits("run-stop") == []


def wait(predicate: Callable[[], object], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def state_of(tmp_path: Path, worker_id: str) -> str | None:
    try:
        body = json.loads((tmp_path / "spool" / "workers" / f"{worker_id}.json").read_text())
    except (OSError, ValueError):
        return None
    state: str = body["state"]
    return state


def test_a_crash_looping_worker_waits_in_backoff_then_takes_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crash(lambda: Registry(tmp_path / "spool"), "run-loop")  # an entry left behind
    policy = Policy(threshold=1, first_delay=0.6, max_delay=5)
    worker = make_worker(tmp_path, "run-loop", policy)
    taken = threading.Event()
    worker.spool.ensure()
    worker.spool.take = lambda: taken.set()  # type: ignore[method-assign]
    started = time.monotonic()
    with running(worker):
        wait(lambda: state_of(tmp_path, "run-loop") == BACKOFF, "backoff")
        assert not taken.is_set()  # it does not look for runs while it waits
        wait(lambda: state_of(tmp_path, "run-loop") == IDLE, "idle after the wait")
        assert time.monotonic() - started >= 0.5
        wait(taken.is_set, "looking for runs")
    assert "worker run-loop exited unexpectedly once in the last 10 min; waiting 1 s" in caplog.text


def test_a_stop_during_backoff_ends_it_at_once_and_cleanly(tmp_path: Path) -> None:
    crash(lambda: Registry(tmp_path / "spool"), "run-wait")
    worker = make_worker(tmp_path, "run-wait", Policy(threshold=1, first_delay=60))
    with running(worker):
        wait(lambda: state_of(tmp_path, "run-wait") == BACKOFF, "backoff")
        started = time.monotonic()  # the way out stops it, as SIGTERM does
    assert time.monotonic() - started < 2
    assert state_of(tmp_path, "run-wait") is None  # unregistered: not counted next time


def test_a_stop_while_busy_marks_the_entry_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that supervisor's SIGKILL of a worker draining too long is no crash."""
    worker = make_worker(tmp_path, "run-drain")
    worker.spool.ensure()
    worker.spool.write_ahead("run-1", b"{}")
    worker.spool.publish("run-1")
    release = threading.Event()
    monkeypatch.setattr(worker, "handle", lambda lease: release.wait(10))
    path = tmp_path / "spool" / "workers" / "run-drain.json"
    with running(worker):
        try:
            wait(lambda: state_of(tmp_path, "run-drain") == BUSY, "busy")
            assert "stopping" not in json.loads(path.read_text())
            worker.stop()
            wait(lambda: json.loads(path.read_text()).get("stopping") is True, "marked stopping")
            assert json.loads(path.read_text())["state"] == BUSY
        finally:
            release.set()
    assert not path.exists()
