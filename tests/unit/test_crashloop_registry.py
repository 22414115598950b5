"""Crash loops: how the registry detects and records a worker's unexpected exits (real
files and flocks in a tmp spool; killed children for real kills), what is no crash (a
clean exit, a kill after it was asked to stop), and when a worker starts in backoff."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.core.crashloop import Policy, Verdict
from agent.settings import defaults
from agent.spool.registry import BACKOFF, BUSY, DEAD, IDLE, Registry
from tests.unit.crashloop_support import crash

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
