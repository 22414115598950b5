"""The README's first command, run as a new user would: twice, then down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import REPO, free_port, tagged_pids, wait_for


def test_demo_script_is_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    tag = os.urandom(8).hex()
    state = tmp_path / "demo"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_"))},
        "DEMO_DIR": str(state),
        "VENV": str(Path(sys.executable).parent.parent),
        "DEMO_PREFECT_PORT": str(free_port()),
        "DEMO_AGENT_PORT": str(free_port()),
        "LOCAL_AGENT_TEST_TAG": tag,
    }

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO / "scripts" / "demo.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    try:
        first = demo()
        assert first.returncode == 0, first.stdout + first.stderr
        assert "all flow runs Completed" in first.stdout
        assert "/api/health" in first.stdout and "/metrics" in first.stdout
        assert "scripts/demo.sh down" in first.stdout

        second = demo()  # everything is up already: reused, and 3 more runs complete
        assert second.returncode == 0, second.stdout + second.stderr
        assert "Prefect server already up" in second.stdout
        assert "supervisord already running" in second.stdout
        assert "all flow runs Completed" in second.stdout
        assert tagged_pids(tag)
    finally:
        down = demo("down")
    assert down.returncode == 0, down.stdout + down.stderr
    wait_for(lambda: not tagged_pids(tag), 20, "every demo process to be gone")
