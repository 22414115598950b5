"""Crash loops: the policy (agent/core/crashloop.py), how the registry detects and records a
worker's unexpected exits (real files and flocks in a tmp spool; killed children for
real kills), how `Worker.run` backs off and exits (cleanly or not), and what the poller
(free slots, health) and `agent status` make of a worker in backoff."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.cli.main import _crash_loop_threshold
from agent.cli.status import EXIT_DEGRADED, collect, exit_code, problems
from agent.cli.status_table import render_table
from agent.core.crashloop import Policy, Verdict, assess, delay_for, describe, recent, window_text
from agent.core.errors import ConfigError
from agent.poller.loop import Poller
from agent.settings import defaults
from agent.settings.config import ApiSettings, PollerConfig, WorkerConfig
from agent.spool.moves import Spool
from agent.spool.registry import BACKOFF, BUSY, DEAD, IDLE, Registry
from agent.worker.launcher import ShimLauncher
from agent.worker.loop import Worker

URL = "http://prefect.invalid/api"
NOW = 1_700_000_000.0


# -- the policy ----------------------------------------------------------------------------


def test_defaults_are_5_exits_in_10_minutes_then_10_s_doubling_to_5_minutes() -> None:
    policy = Policy()
    assert (policy.threshold, policy.window) == (5, 600.0)
    assert (policy.first_delay, policy.max_delay) == (10.0, 300.0)
    assert policy.threshold == defaults.CRASH_LOOP_THRESHOLD


def test_no_wait_below_the_threshold_then_doubling_up_to_the_cap() -> None:
    policy = Policy()
    delays = [delay_for(n, policy) for n in range(12)]
    assert delays == [0, 0, 0, 0, 0, 10, 20, 40, 80, 160, 300, 300]
    assert delay_for(10_000, policy) == 300  # no overflow, however many


def test_a_lower_threshold_starts_waiting_sooner() -> None:
    policy = Policy(threshold=2, first_delay=1.5, max_delay=5)
    assert [delay_for(n, policy) for n in range(6)] == [0, 0, 1.5, 3, 5, 5]


def test_recent_keeps_the_window_oldest_first_and_drops_future_times() -> None:
    exits = [NOW - 601, NOW - 600, NOW - 599, NOW, NOW - 5, NOW + 30]
    assert recent(exits, NOW, 600) == [NOW - 599, NOW - 5, NOW]


def test_assess_counts_the_window_and_waits_only_after_an_unexpected_exit() -> None:
    policy = Policy()
    exits = [NOW - 700, *(NOW - 60 * i for i in range(6))]  # 6 in the window, 1 older
    assert assess(exits, NOW, policy) == Verdict(exits=6, delay=20.0)
    # The previous process exited cleanly (e.g. `supervisorctl restart`): no wait.
    assert assess(exits, NOW, policy, just_exited=False) == Verdict(exits=6, delay=0.0)
    # Ten minutes later they have all left the window.
    assert assess(exits, NOW + 600, policy) == Verdict(exits=0, delay=0.0)


def test_describe() -> None:
    assert describe(6, 600) == "exited unexpectedly 6 times in the last 10 min"
    assert describe(1, 90) == "exited unexpectedly once in the last 90 s"
    assert window_text(60) == "1 min"


def test_the_hidden_threshold_setting() -> None:
    assert _crash_loop_threshold(None) == _crash_loop_threshold(" ") == 5
    assert _crash_loop_threshold("2") == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="AGENT_CRASH_LOOP_THRESHOLD"):
            _crash_loop_threshold(bad)
    assert WorkerConfig(ApiSettings(URL), Path("/s"), "w", "python").crash_loop == Policy()


# -- the registry: detecting and recording unexpected exits ---------------------------------


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[Callable[[], Registry]]:
    """Registry objects on one spool (one per "process"); their locks are let go after."""
    made: list[Registry] = []

    def make() -> Registry:
        made.append(Registry(tmp_path))
        return made[-1]

    yield make
    for registry in made:
        registry.release()


def crash(
    make: Callable[[], Registry], worker_id: str = "w1", policy: Policy | None = None
) -> Registry:
    """A process of ``worker_id`` that starts and then dies of an error (entry kept)."""
    registry = make()
    registry.register(worker_id, policy)
    registry.release()
    return registry


def exits_file(tmp_path: Path, worker_id: str = "w1") -> list[float]:
    body = json.loads((tmp_path / "workers" / f"{worker_id}.exits").read_text())
    times: list[float] = body["exits"]
    return times


def test_a_first_start_is_no_crash(tmp_path: Path, registries: Callable[[], Registry]) -> None:
    joined = registries().register("w1")
    assert not joined.crashed
    assert joined.verdict == Verdict(0, 0.0) and joined.until is None
    assert not (tmp_path / "workers" / "w1.exits").exists()


def test_a_clean_exit_is_no_crash(tmp_path: Path, registries: Callable[[], Registry]) -> None:
    for _ in range(3):
        registry = registries()
        assert not registry.register("w1", Policy(threshold=1)).crashed
        registry.unregister()
    registry = registries()
    assert not registry.register("w1", Policy(threshold=1)).crashed
    assert registry.counts()[IDLE] == 1
    assert registry.recent_exits("w1") == []


def test_an_entry_left_behind_is_an_unexpected_exit_recorded_with_its_time(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    crash(registries)
    registry = registries()
    assert registry.workers()[0].state == DEAD  # what `agent status` shows meanwhile
    before = time.time()
    joined = registry.register("w1")
    assert joined.crashed
    assert joined.verdict == Verdict(1, 0.0)  # one is no loop: it takes runs at once
    assert joined.reason == "exited unexpectedly once in the last 10 min"
    [at] = exits_file(tmp_path)
    assert before <= at <= time.time()
    assert registry.recent_exits("w1") == [at]
    assert registry.counts() == {IDLE: 1, BUSY: 0, BACKOFF: 0, DEAD: 0}


_CHILD = """
import sys, time
from pathlib import Path
from agent.spool.registry import BUSY, Registry
registry = Registry(Path(sys.argv[1]))
registry.register("w1")
registry.set_state(BUSY, "run-1")
if sys.argv[2] == "stopping":
    registry.mark_stopping()
print("ready", flush=True)
time.sleep(60)
"""


def killed_child(tmp_path: Path, mode: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_worker_killed_with_sigkill_is_counted_by_the_next_start(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    killed_child(tmp_path, "running")
    assert registries().register("w1").crashed
    assert len(exits_file(tmp_path)) == 1


def test_a_worker_killed_after_it_was_asked_to_stop_is_not_counted(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    """supervisor's SIGKILL after stopwaitsecs, of a worker draining after SIGTERM."""
    killed_child(tmp_path, "stopping")
    body = json.loads((tmp_path / "workers" / "w1.json").read_text())
    assert body["stopping"] is True and body["state"] == BUSY  # the state is kept
    joined = registries().register("w1", Policy(threshold=1))
    assert not joined.crashed and joined.verdict.delay == 0
    assert not (tmp_path / "workers" / "w1.exits").exists()


def test_mark_stopping_survives_later_states_and_is_gone_with_a_new_process(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    registry = registries()
    registry.register("w1")
    registry.mark_stopping()
    registry.set_state(IDLE)  # the run it drained finished
    body = json.loads((tmp_path / "workers" / "w1.json").read_text())
    assert body["stopping"] is True and body["state"] == IDLE
    registry.release()
    registry = registries()
    registry.register("w1")
    assert "stopping" not in json.loads((tmp_path / "workers" / "w1.json").read_text())


def test_after_the_threshold_a_worker_starts_in_backoff(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    policy = Policy(threshold=3, first_delay=10, max_delay=300)
    for _ in range(3):  # the first start, then two crashes recorded: no wait yet
        crash(registries, policy=policy)
    assert len(exits_file(tmp_path)) == 2
    registry = registries()
    before = time.time()
    joined = registry.register("w1", policy)  # the third unexpected exit
    assert joined.crashed and joined.verdict == Verdict(3, 10.0)
    assert joined.until is not None and before + 10 <= joined.until <= time.time() + 10
    # Alive, but no free slot: its own state, counted apart from idle and busy.
    assert registry.counts() == {IDLE: 0, BUSY: 0, BACKOFF: 1, DEAD: 0}
    [info] = registry.crash_looping()
    assert info.state == BACKOFF and info.exits == 3 and info.until == joined.until
    assert info.reason == "exited unexpectedly 3 times in the last 10 min"
    assert info.describe_backoff(joined.until - 35) == (
        "worker w1 is crash-looping (exited unexpectedly 3 times in the last 10 min); "
        "it takes runs again in 35s"
    )
    registry.set_state(IDLE)  # the wait is over
    assert registry.counts()[IDLE] == 1 and registry.crash_looping() == []
    # One more crash: the wait doubles.
    registry.release()
    assert registries().register("w1", policy).verdict == Verdict(4, 20.0)


def test_exits_older_than_the_window_are_pruned(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    crash(registries)
    now = time.time()
    old = [now - 900, now - 700]
    (tmp_path / "workers" / "w1.exits").write_text(json.dumps({"exits": [*old, now - 60]}))
    joined = registries().register("w1", Policy(threshold=2))
    assert joined.verdict.exits == 2 and joined.verdict.delay == 10
    assert [t for t in exits_file(tmp_path) if t in old] == []
    assert len(exits_file(tmp_path)) == 2


def test_the_history_is_bounded_and_garbage_in_it_is_ignored(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    crash(registries)
    now = time.time()
    junk = ["x", None, True, float("nan")]
    many = [now - 500 + i for i in range(300)]
    (tmp_path / "workers" / "w1.exits").write_text(json.dumps({"exits": [*junk, *many]}))
    joined = registries().register("w1")
    assert joined.verdict.exits == defaults.CRASH_LOOP_HISTORY_MAX
    assert len(exits_file(tmp_path)) == defaults.CRASH_LOOP_HISTORY_MAX
    (tmp_path / "workers" / "w1.exits").write_text("not json")
    assert Registry(tmp_path).recent_exits("w1") == []


def test_an_other_ids_crashes_are_not_counted(
    tmp_path: Path, registries: Callable[[], Registry]
) -> None:
    for _ in range(3):
        crash(registries, "w0")
    assert not registries().register("w1", Policy(threshold=1)).crashed


# -- Worker.run ------------------------------------------------------------------------------


def make_worker(tmp_path: Path, worker_id: str, policy: Policy | None = None) -> Worker:
    spool = Spool(tmp_path / "spool")
    config = WorkerConfig(
        api=ApiSettings(url=URL),
        spool_dir=spool.root,
        worker_id=worker_id,
        flow_python=sys.executable,
        idle_sleep=0.02,
        crash_loop=policy or Policy(),
    )
    return Worker(
        config, PrefectClient(config.api), spool, Registry(spool.root), ShimLauncher(1 << 20)
    )


def crashes(worker_id: str) -> float:
    value = REGISTRY.get_sample_value("agent_worker_crashes_total", {"worker": worker_id})
    return 0.0 if value is None else value


class Boom(Exception):
    pass


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    """``worker.run()`` in a thread, stopped (as by SIGTERM) and joined on the way out."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


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
