"""agent/worker/shim.py: a run that cannot join its cgroup is not started and says why; a
run that can, joins it before its flow exists; a daemon the flow leaves holding its output
open does not keep the exit status from being recorded. A real shim and real flows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from agent.worker.shim import read_lines

SHIM = [sys.executable, "-I", "-m", "agent.worker.shim"]


def shim_argv(run_dir: Path, flow: list[str], cgroups: list[Path] | None = None) -> list[str]:
    joins = [arg for cgroup in cgroups or [] for arg in ("--cgroup", str(cgroup))]
    return [*SHIM, "--run-dir", str(run_dir), "--max-bytes", "65536", *joins, "--", *flow]


def python_flow(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def status_of(run_dir: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((run_dir / "status.json").read_text())
    return status


def output_of(run_dir: Path) -> str:
    return (run_dir / "output.log").read_text()


def new_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    return run_dir


# -- a cgroup the run cannot join -------------------------------------------------------


TOUCH = "import sys; open(sys.argv[1], 'w').close()"


def test_a_run_that_cannot_join_its_cgroup_is_not_started_and_its_status_says_why(
    tmp_path: Path,
) -> None:
    run_dir = new_run_dir(tmp_path)
    missing = tmp_path / "no-such-cgroup"
    marker = tmp_path / "the-flow-ran"
    result = subprocess.run(
        shim_argv(run_dir, python_flow(TOUCH, str(marker)), [missing]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    status = status_of(run_dir)
    assert status["phase"] == "ended"
    assert status["returncode"] == 127
    assert status["error"].startswith(f"cannot join the run's cgroup {missing}: ")
    assert "pid" not in status  # no flow process ever existed
    assert f"local-agent: cannot join the run's cgroup {missing}: " in output_of(run_dir)


def test_a_run_that_can_join_one_of_its_cgroups_but_not_the_next_is_not_started(
    tmp_path: Path,
) -> None:
    run_dir = new_run_dir(tmp_path)
    joinable = tmp_path / "memory"
    joinable.mkdir()
    (joinable / "cgroup.procs").touch()
    missing = tmp_path / "pids"
    marker = tmp_path / "the-flow-ran"
    result = subprocess.run(
        shim_argv(run_dir, python_flow(TOUCH, str(marker)), [joinable, missing]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert status_of(run_dir)["returncode"] == 127
    assert str(missing) in status_of(run_dir)["error"]


# -- a cgroup the run can join ------------------------------------------------------------


def test_the_shim_writes_its_own_pid_to_the_cgroup_and_the_flow_runs(tmp_path: Path) -> None:
    run_dir = new_run_dir(tmp_path)
    cgroup = tmp_path / "run-cgroup"
    cgroup.mkdir()
    (cgroup / "cgroup.procs").touch()  # a plain file standing in for the cgroup's
    marker = tmp_path / "the-flow-ran"
    shim = subprocess.Popen(
        shim_argv(run_dir, python_flow(TOUCH, str(marker)), [cgroup]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = shim.communicate(timeout=60)
    assert shim.returncode == 0, stderr
    assert (cgroup / "cgroup.procs").read_text() == str(shim.pid)
    assert marker.exists()
    status = status_of(run_dir)
    assert status["phase"] == "ended"
    assert status["returncode"] == 0
    assert "error" not in status


# -- a daemon left holding the flow's output open ---------------------------------------


def kill_processes_with(marker: str) -> int:
    """SIGKILL every process of ours whose argv holds ``marker`` (the daemon a test left);
    how many there were."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if marker.encode() in argv:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue
    return killed


# The flow starts a daemon that inherits its stdout (the shim's pipe) and sleeps on with
# it, then exits at once.
LEAVES_A_DAEMON = (
    "import subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', sys.argv[1]])\n"
    "print('started', flush=True)\n"
)


def test_a_daemon_holding_the_flows_output_open_does_not_keep_the_shim_from_ending(
    tmp_path: Path,
) -> None:
    run_dir = new_run_dir(tmp_path)
    marker = f"leftover-daemon-{uuid.uuid4().hex}"
    try:
        begun = time.monotonic()
        result = subprocess.run(
            shim_argv(run_dir, python_flow(LEAVES_A_DAEMON, marker)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - begun
        assert result.returncode == 0, result.stderr
        assert took < 10, f"the shim waited {took:.1f}s for the daemon's output"
        status = status_of(run_dir)
        assert status["phase"] == "ended"
        assert status["returncode"] == 0
        assert "started\n" in output_of(run_dir)
        assert kill_processes_with(marker) == 1  # the daemon was still there, holding on
    finally:
        kill_processes_with(marker)


def test_read_lines_stops_reading_soon_after_the_flow_exits_though_its_daemon_lives() -> None:
    marker = f"leftover-daemon-{uuid.uuid4().hex}"
    flow = subprocess.Popen(python_flow(LEAVES_A_DAEMON, marker), stdout=subprocess.PIPE)
    try:
        begun = time.monotonic()
        lines = list(read_lines(flow, linger=0.3))
        took = time.monotonic() - begun
        assert lines == [b"started\n"]
        assert took < 10
        assert flow.poll() == 0
        assert kill_processes_with(marker) == 1  # the daemon was still there, holding on
    finally:
        kill_processes_with(marker)
        assert flow.stdout is not None
        flow.stdout.close()
        flow.wait(30)


# -- read_lines on its own ---------------------------------------------------------------


def lines_of(code: str) -> list[bytes]:
    flow = subprocess.Popen(python_flow(code), stdout=subprocess.PIPE)
    try:
        return list(read_lines(flow))
    finally:
        assert flow.stdout is not None
        flow.stdout.close()
        flow.wait(30)


WRITE = "import sys; sys.stdout.buffer.write({!r}); sys.stdout.flush()"


def test_read_lines_yields_each_line_with_its_newline() -> None:
    assert lines_of(WRITE.format(b"one\ntwo\n\nfour\n")) == [b"one\n", b"two\n", b"\n", b"four\n"]


def test_read_lines_yields_a_last_line_that_has_no_newline() -> None:
    assert lines_of(WRITE.format(b"first\nlast without end")) == [
        b"first\n",
        b"last without end",
    ]


def test_read_lines_yields_nothing_for_a_flow_that_prints_nothing() -> None:
    assert lines_of("pass") == []


def test_read_lines_passes_a_very_long_line_on_in_pieces_and_loses_nothing() -> None:
    size = 300_000  # over 64 KiB, several times
    code = (
        "import sys\n"
        f"sys.stdout.buffer.write(bytes(48 + i % 10 for i in range({size})))\n"
        "sys.stdout.buffer.write(b'\\nafter\\n')\n"
    )
    lines = lines_of(code)
    expected = bytes(48 + i % 10 for i in range(size)) + b"\nafter\n"
    assert b"".join(lines) == expected
    assert len(lines) > 2  # the long line came in more than one piece
    assert lines[-1] == b"after\n"
    assert all(len(piece) >= 65536 for piece in lines[:-2])  # each piece a full read's worth


def test_read_lines_passes_on_a_long_line_with_no_newline_at_all() -> None:
    size = 200_000
    lines = lines_of(f"import sys; sys.stdout.buffer.write(b'x' * {size})")
    assert b"".join(lines) == b"x" * size
    assert len(lines) > 1
    assert all(b"\n" not in piece for piece in lines)
