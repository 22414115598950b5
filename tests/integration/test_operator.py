"""The operator's commands on a real host set-up: `agent local install` output run by a
real supervisord against a real server, and `agent status` reporting on it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import AUTH, Agent, executions
from tests.integration.harness import Supervisor, wait_for

# The fixture's environment configures the agent; blank it so that only the generated
# configuration and the config file it references can make the agent work.
BLANK = {
    k: "" for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "AGENT_POOL", "AGENT_SPOOL_DIR")
}


def test_install_output_runs_under_supervisord_and_status_reports(
    agent: Agent, marker: Path
) -> None:
    toml = agent.tmp / "agent.toml"
    # --env values may be secrets: they reach the agent through the config file.
    toml.write_text(f'auth-string = "{AUTH}"\nenv = {{ GREETING = "it\'s 100% fine, really" }}\n')
    toml.chmod(0o600)
    result = agent.procs.run(
        [
            "agent", "local", "install", "--config", str(toml), "--run-dir", str(agent.run_dir),
            "--workers", "2", "--pool", agent.pool, "--spool", str(agent.spool),
            "-n", "installed", "-e", "ALSO=never-printed-value",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The auth string was in install's environment: named as not written, never written.
    assert "not written to the configuration: PREFECT_API_AUTH_STRING" in result.stderr
    assert AUTH not in result.stdout
    # So was an --env value given to install: named as not written, never printed.
    assert "PREFECT__CLOUD__AGENT__ENV_VARS" in result.stderr
    assert "never-printed-value" not in result.stdout + result.stderr
    conf = agent.tmp / "supervisord.conf"
    conf.write_text(result.stdout)

    sup = Supervisor(agent.procs, agent.run_dir, {**agent.env, **BLANK}, conf)
    sup.start()
    assert sup.ctl("start", "agent").returncode == 0
    wait_for(lambda: list(sup.status().values()) == ["RUNNING"] * 3, 30, "agent + 2 workers")

    deployment = agent.deploy("record")
    run_ids = [agent.run(deployment, {"marker": str(marker)}) for _ in range(2)]
    states = agent.wait(run_ids, timeout=120)
    assert [states[r]["type"] for r in run_ids] == ["COMPLETED", "COMPLETED"]
    assert sorted(executions(marker)) == sorted(run_ids)
    # --env from the config file the generated configuration names reaches flows.
    shown = agent.deploy("show_env", name="env")
    out = agent.tmp / "env.json"
    run_id = agent.run(shown, {"out": str(out), "keys": ["GREETING"]})
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"
    assert json.loads(out.read_text())["env"] == {"GREETING": "it's 100% fine, really"}
    workers = agent.client.request("w", "POST", f"/work_pools/{agent.pool}/workers/filter", {})
    assert [w["name"] for w in workers] == ["installed"]

    def status(*args: str) -> tuple[int, str]:
        done = agent.procs.run(["agent", "status", "--spool", str(agent.spool), *args])
        return done.returncode, done.stdout

    def completed() -> int:
        snap = json.loads(status("--json")[1])
        count: int = snap["runs"]["finished_last_hour"]["completed"]
        return count

    wait_for(lambda: completed() == 3, 20, "the three runs settled")
    code, text = status("--json")
    snap = json.loads(text)
    assert code == 0
    assert snap["poller"]["alive"] is True
    assert snap["poller"]["pool"] == agent.pool
    assert snap["poller"]["name"] == "installed"
    assert snap["poller"]["last_successful_poll_age_seconds"] < 30
    assert sorted((w["worker_id"], w["alive"]) for w in snap["workers"]) == [
        ("agent-worker_00", True),
        ("agent-worker_01", True),
    ]
    code, table = status()
    assert code == 0
    assert f"pool       {agent.pool}" in table
    assert "WORKERS (2:" in table
    assert "it's 100% fine" not in table  # --env values are never shown

    # Stopping the poller is what `agent status` exists to notice.
    assert sup.ctl("stop", "agent").returncode == 0
    code, table = status()
    assert code == 3
    assert "NOT RUNNING" in table
