"""scripts/demo.sh down prints only what it does: not one line per process it cannot read
(another user's: Permission denied; one that just ended: No such process)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_demo_down_with_nothing_running_prints_one_line_and_no_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "DEMO_"))}
    env.update(DEMO_DIR=str(tmp_path / "demo"), DEMO_PREFECT_PORT="1")  # nothing listens on 1
    result = subprocess.run(
        ["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout == "==> stopped; nothing of the demo is running\n"
