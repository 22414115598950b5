"""Multiprocess metrics files: when they are reset and which ones a dead process leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.observe import metrics


@pytest.fixture
def mp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"")


def test_whole_agent_start_removes_every_other_file(mp_dir: Path, dead_pid: int) -> None:
    own = os.getpid()
    touch(mp_dir, f"counter_{own}.db", f"counter_{dead_pid}.db", f"histogram_{dead_pid}.db")
    touch(mp_dir, "notes.txt")  # not ours to judge
    assert metrics.reset_if_whole_agent_starts(own) is True
    assert sorted(p.name for p in mp_dir.iterdir()) == [f"counter_{own}.db", "notes.txt"]


def test_a_live_worker_means_a_restart_so_nothing_goes(
    mp_dir: Path, live_pid: int, dead_pid: int
) -> None:
    own = os.getpid()
    names = [f"counter_{own}.db", f"counter_{live_pid}.db", f"counter_{dead_pid}.db"]
    touch(mp_dir, *names)
    assert metrics.reset_if_whole_agent_starts(own) is False
    assert sorted(p.name for p in mp_dir.iterdir()) == sorted(names)


def test_sweep_drops_live_gauges_of_dead_pids_only(
    mp_dir: Path, live_pid: int, dead_pid: int
) -> None:
    touch(
        mp_dir,
        f"gauge_livemax_{dead_pid}.db",
        f"counter_{dead_pid}.db",  # counts survive their process
        f"gauge_mostrecent_{dead_pid}.db",  # e.g. the last poll time
        f"gauge_livemax_{live_pid}.db",
    )
    metrics.sweep_dead()
    assert sorted(p.name for p in mp_dir.iterdir()) == sorted(
        [
            f"counter_{dead_pid}.db",
            f"gauge_mostrecent_{dead_pid}.db",
            f"gauge_livemax_{live_pid}.db",
        ]
    )


def test_without_a_multiprocess_dir_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert metrics.reset_if_whole_agent_starts(os.getpid()) is False
    metrics.sweep_dead()


def test_counts_merge_across_processes_and_survive_their_death(tmp_path: Path) -> None:
    """Two short-lived 'workers' each count; a third process renders the sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    count = (
        "import os; from agent.observe import metrics; "
        "metrics.STARTED.inc(); metrics.mark_process_dead(os.getpid())"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True)
    show = "from agent.observe import metrics; print(metrics.render().decode())"
    out = subprocess.run(
        [sys.executable, "-c", show], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert "agent_flow_runs_started_total 2.0" in out
