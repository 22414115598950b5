"""agent/worker/shim.py: a flow's output and exit status are readable by the agent's user
only, whatever the umask: the output may hold the flow's secrets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path


def run_shim(run_dir: Path, code: str, max_bytes: int = 1024) -> None:
    shim = [sys.executable, "-I", "-m", "agent.worker.shim", "--run-dir", str(run_dir)]
    subprocess.run(
        [*shim, "--max-bytes", str(max_bytes), "--", sys.executable, "-c", code],
        check=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),  # the usual umask: files would be 0644
    )


def modes(run_dir: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir()}


def test_flow_output_and_status_files_are_readable_by_the_agent_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    # Two lines over the bound: the log rotates once, so both files are there.
    run_shim(run_dir, "print('x' * 600); print('y' * 600)")
    assert modes(run_dir) == {"output.log": 0o600, "output.log.1": 0o600, "status.json": 0o600}
    assert json.loads((run_dir / "status.json").read_text())["returncode"] == 0


def test_an_output_log_left_readable_by_others_is_made_private(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    old = run_dir / "output.log"
    old.write_bytes(b"from an earlier attempt\n")
    old.chmod(0o644)
    run_shim(run_dir, "print('again')")
    assert modes(run_dir)["output.log"] == 0o600
    assert old.read_bytes() == b"from an earlier attempt\nagain\n"
