"""Multiprocess metrics files: when they are reset and which ones a dead process leaves."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.causes import Cause
from agent.core.claim import CONFLICT_REASONS
from agent.observe import exposition, metrics


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
    assert exposition.reset_if_whole_agent_starts(own) is True
    assert sorted(p.name for p in mp_dir.iterdir()) == [f"counter_{own}.db", "notes.txt"]


def test_a_live_worker_means_a_restart_so_nothing_goes(
    mp_dir: Path, live_pid: int, dead_pid: int
) -> None:
    own = os.getpid()
    names = [f"counter_{own}.db", f"counter_{live_pid}.db", f"counter_{dead_pid}.db"]
    touch(mp_dir, *names)
    assert exposition.reset_if_whole_agent_starts(own) is False
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
    exposition.sweep_dead()
    assert sorted(p.name for p in mp_dir.iterdir()) == sorted(
        [
            f"counter_{dead_pid}.db",
            f"gauge_mostrecent_{dead_pid}.db",
            f"gauge_livemax_{live_pid}.db",
        ]
    )


def test_without_a_multiprocess_dir_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert exposition.reset_if_whole_agent_starts(os.getpid()) is False
    exposition.sweep_dead()


def test_counts_merge_across_processes_and_survive_their_death(tmp_path: Path) -> None:
    """Two short-lived 'workers' each count; a third process renders the sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    count = (
        "import os; from agent.observe import metrics; "
        "metrics.STARTED.inc(); metrics.mark_process_dead(os.getpid())"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True)
    show = "from agent.observe import exposition; print(exposition.render().decode())"
    out = subprocess.run(
        [sys.executable, "-c", show], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert "agent_flow_runs_started_total 2.0" in out


# -- known label values, the startup warning, file modes -----------------------------------


def run_python(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def without_multiproc() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}


@pytest.mark.parametrize("multiprocess", [True, False])
def test_labelled_counters_show_every_known_label_at_zero_before_anything_happens(
    tmp_path: Path, multiprocess: bool
) -> None:
    env = without_multiproc()
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    out = run_python(
        "from agent.observe import exposition; print(exposition.render().decode())", env
    )
    assert out.returncode == 0, out.stderr
    expected = [
        *(f'agent_claim_conflicts_total{{reason="{r}"}} 0.0' for r in CONFLICT_REASONS),
        *(
            f'agent_flow_runs_finished_total{{cause="{c.value}",outcome="{o}"}} 0.0'
            for o in ("completed", "failed", "crashed", "cancelled")
            for c in Cause
        ),
        *(f'agent_outbox_kept_total{{kind="{k}"}} 0.0' for k in ("state", "pid", "logs")),
        *(f'agent_outbox_delivered_total{{kind="{k}"}} 0.0' for k in ("state", "pid", "logs")),
        *(
            f'agent_run_logs_dropped_total{{reason="{r}"}} 0.0'
            for r in ("queue_full", "rejected", "invalid", "shutdown")
        ),
    ]
    lines = set(out.stdout.splitlines())
    assert [line for line in expected if line not in lines] == []


def test_known_label_values_are_the_ones_the_code_counts_with() -> None:
    from agent.api import outbox
    from agent.core.claim import Claim

    # What the poller counts: every claim result but the two that are no conflict.
    assert set(CONFLICT_REASONS) == {
        c.value for c in Claim if c not in (Claim.ACCEPTED, Claim.WAIT)
    }
    assert set(metrics.OUTBOX_KINDS) == {outbox.STATE, outbox.PID, outbox.LOGS}
    source = (Path(metrics.__file__).parents[1] / "api" / "runlogs.py").read_text()
    calls = re.findall(r"_drop\(([^()]*(?:\([^()]*\)[^()]*)*)\)", source)
    counted = {r for call in calls for r in re.findall(r'"(\w+)"', call)}
    assert counted and counted <= set(metrics.RUN_LOG_DROP_REASONS)


def test_the_poller_start_logs_no_prometheus_warning(tmp_path: Path) -> None:
    # What the poller does at start and at each change of its backend config.
    publish = (
        "from agent.observe import exposition, metrics\n"
        "for name in ('agent-a', 'agent-b'):\n"
        "    metrics.INFO.clear()\n"
        "    metrics.INFO.labels('1.0', name, 'pool').set(1)\n"
        "print(exposition.render().decode())\n"
    )
    env = {**without_multiproc(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = run_python(publish, env, "-W", "error::UserWarning")
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr
    assert 'agent_info{name="agent-b",pool="pool",version="1.0"} 1.0' in out.stdout
    assert 'agent_info{name="agent-a",pool="pool",version="1.0"} 0.0' in out.stdout


def test_metrics_files_are_0600_and_the_folders_made_for_them_0700(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "metrics"
    env = {**without_multiproc(), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    code = (
        "import os; os.umask(0o022)\n"
        "from agent.observe import metrics\n"
        "metrics.INFO.labels('1.0', 'agent', 'pool').set(1)\n"
        "metrics.API_LATENCY.labels('poll').observe(0.1)\n"
    )
    out = run_python(code, env)
    assert out.returncode == 0, out.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert len(modes) == 4  # counter, histogram, two kinds of gauge
    assert set(modes.values()) == {0o600}, modes
    for folder in (tmp_path / "run", directory):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_process_that_only_counts_never_loads_prometheus_clients_exposition(
    tmp_path: Path,
) -> None:
    """Workers import agent.observe.metrics alone: their values reach the files without
    prometheus_client's HTTP exposition (http.server, urllib.request, ssl: ~10 MiB)."""
    count = (
        "import sys; from agent.observe import metrics\n"
        "metrics.STARTED.inc(); metrics.FINISHED.labels('completed', 'exit_code').inc()\n"
        "heavy = {'prometheus_client.exposition', 'http.server', 'urllib.request', 'ssl'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    env = {**without_multiproc(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = run_python(count, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    shown = run_python(
        "from agent.observe import exposition; print(exposition.render().decode())", env
    )
    assert "agent_flow_runs_started_total 1.0" in shown.stdout
    assert (
        'agent_flow_runs_finished_total{cause="exit_code",outcome="completed"} 1.0' in shown.stdout
    )


def test_someone_elses_plain_import_of_prometheus_client_gets_the_whole_package() -> None:
    code = (
        "from agent.observe import metrics\n"
        "from prometheus_client import CollectorRegistry, Counter, generate_latest\n"
        "assert Counter is metrics.Counter\n"
        "print(generate_latest(CollectorRegistry()) == b'')\n"
    )
    out = run_python(code, without_multiproc())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
