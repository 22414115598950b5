"""Prefect 1 parity options against a real server: backend config (and its live reload),
backend logs (and their absence with --no-cloud-logs), the config file, JSON logs."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from examples import demo
from tests.integration.conftest import AUTH, Agent
from tests.integration.harness import wait_for


def run_logs(agent: Agent, run_id: str) -> list[dict[str, Any]]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    logs: list[dict[str, Any]] = agent.client.request("logs", "POST", "/logs/filter", body)
    return logs


def variable(agent: Agent, value: object) -> str:
    name = f"agent_cfg_{uuid.uuid4().hex[:8]}"
    agent.client.request("variable", "POST", "/variables/", {"name": name, "value": value})
    return name


def seen_env(path: Path) -> dict[str, str | None]:
    env: dict[str, str | None] = json.loads(path.read_text())["env"]
    return env


def test_backend_config_overrides_flags_and_reloads_without_restart(agent: Agent) -> None:
    name = variable(agent, {"labels": ["bk1"], "env_vars": {"FROM": "backend-1"}})
    first = agent.deploy("show_env", job_variables={"labels": ["bk1"]}, name="bk1")
    second = agent.deploy("show_env", job_variables={"labels": ["bk2"]}, name="bk2")
    flagged = agent.deploy("show_env", job_variables={"labels": ["flaglabel"]}, name="flag")
    agent.start_poller(
        "--agent-config-id", name, "--agent-config-refresh", "1",
        "-e", "FROM=flag", "-e", "FLAG_ONLY=f", "-l", "flaglabel", "--no-hostname-label",
    )  # fmt: skip
    agent.start_worker()

    out = agent.tmp / "one.json"
    one = agent.run(first, {"out": str(out), "keys": ["FROM", "FLAG_ONLY"]})
    never = agent.run(flagged, {"out": str(agent.tmp / "never.json"), "keys": []})
    assert agent.wait([one])[one]["type"] == "COMPLETED"
    # The variable's env_vars replace the flags' (they sit above flags and environment).
    assert seen_env(out) == {"FROM": "backend-1", "FLAG_ONLY": None}

    # Change the variable: the running agent applies it to its next claims.
    agent.client.request(
        "variable",
        "PATCH",
        f"/variables/name/{name}",
        {"value": {"labels": ["bk2"], "env_vars": {"FROM": "backend-2", "NEW": "n"}}},
    )
    wait_for(lambda: "labels ['bk1'] -> ['bk2']" in agent.procs.log("poller"), 30, "the reload")
    poller_log = agent.procs.log("poller")
    assert "env vars: added NEW; changed FROM" in poller_log
    assert "backend-2" not in poller_log  # values are never logged

    out = agent.tmp / "two.json"
    later_first = agent.run(first, {"out": str(agent.tmp / "late.json"), "keys": []})
    two = agent.run(second, {"out": str(out), "keys": ["FROM", "NEW"]})
    assert agent.wait([two])[two]["type"] == "COMPLETED"
    assert seen_env(out) == {"FROM": "backend-2", "NEW": "n"}
    # Labels from flags never applied, and bk1 is no longer ours since the reload.
    for run_id in (never, later_first):
        assert demo.read_run(agent.client, run_id)["state"]["type"] == "SCHEDULED"


def test_bad_backend_config_stops_the_agent_with_a_clear_error(agent: Agent) -> None:
    missing = f"no_such_{uuid.uuid4().hex[:8]}"
    cases = {
        missing: f"agent config variable '{missing}' does not exist",
        variable(agent, "{not json"): "does not hold valid JSON",
        variable(agent, {"labels": "gpu"}): "key 'labels' must be a list of strings",
        variable(agent, {"lables": ["a"]}): "unknown key 'lables'",
    }
    for name, message in cases.items():
        result = agent.procs.run(["agent", "local", "start", "--agent-config-id", name])
        assert result.returncode == 78, (name, result.stderr)
        assert message in result.stderr, result.stderr
        assert f"'{name}'" in result.stderr
        assert "Traceback" not in result.stderr


def test_print_config_shows_backend_values_and_sources(agent: Agent) -> None:
    name = variable(agent, {"labels": ["from-backend"], "show_flow_logs": True})
    result = agent.procs.run(
        ["agent", "local", "start", "--agent-config-id", name, "--print-config", "-l", "flag"],
        {"PREFECT__CLOUD__AGENT__NAME": "env-name"},
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "from-backend" in rows["labels"] and rows["labels"].endswith("(backend)")
    assert rows["show-flow-logs"].endswith("(backend)")
    assert rows["name"].split()[1:] == ["env-name", "(env)"]
    assert AUTH not in result.stdout


def test_agent_writes_its_run_log_lines_to_the_api(agent: Agent) -> None:
    deployment = agent.deploy("show_env")
    agent.start_poller("-n", "logger-agent")
    agent.start_worker()
    run_id = agent.run(deployment, {"out": str(agent.tmp / "o.json"), "keys": []})
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"

    def ours() -> list[str]:
        return [x["message"] for x in run_logs(agent, run_id) if x["name"] == "local-agent"]

    wait_for(lambda: len(ours()) >= 3, 20, "the agent's three run log lines")
    claimed, started, ended = ours()
    assert claimed.startswith("Submitted for execution by agent 'logger-agent' on ")
    assert started.startswith("Process started by worker worker on ")
    assert "PID " in started
    assert ended.startswith("Process exited with status code 0 after ")
    # The engine's own logging reaches the API too (what --no-cloud-logs turns off).
    assert any(x["name"] != "local-agent" for x in run_logs(agent, run_id))


def test_no_cloud_logs_sends_nothing_and_turns_off_flow_logging(agent: Agent) -> None:
    deployment = agent.deploy("show_env")
    agent.start_poller("--no-cloud-logs")
    agent.start_worker()
    out = agent.tmp / "o.json"
    run_id = agent.run(deployment, {"out": str(out), "keys": ["PREFECT_LOGGING_TO_API_ENABLED"]})
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"
    assert seen_env(out) == {"PREFECT_LOGGING_TO_API_ENABLED": "false"}
    wait_for((agent.spool / "done" / f"{run_id}.json").exists, 20, "the run to be settled")
    # The worker has finished with the run and the shippers flush every second.
    wait_for(lambda: "finished: completed" in agent.procs.log("worker"), 20, "worker done")
    import time

    time.sleep(3)
    assert run_logs(agent, run_id) == []


def test_one_config_file_configures_poller_and_workers(agent: Agent) -> None:
    conf = agent.tmp / "agent.toml"
    conf.write_text(
        f'api = "{agent.env["PREFECT_API_URL"]}"\n'
        f'auth-string = "{AUTH}"\n'
        f'pool = "{agent.pool}"\n'
        f'spool = "{agent.spool}"\n'
        'name = "file-agent"\n'
        'labels = ["from-file"]\n'
        'env = { FROM_FILE = "yes" }\n'
        'log-format = "json"\n'
    )
    conf.chmod(0o600)
    deployment = agent.deploy("show_env", job_variables={"labels": ["from-file"]})
    # Nothing but the file: the environment's settings are blanked out.
    blank = {k: "" for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "AGENT_POOL")}
    blank["AGENT_SPOOL_DIR"] = ""
    blank["AGENT_LOG_LEVEL"] = ""
    agent.procs.start(
        "poller", ["agent", "local", "start", "--config", str(conf)], {**blank, "AGENT_ADDRESS": ""}
    )
    agent.procs.start(
        "worker", ["agent", "worker", "--worker-id", "w1"], {**blank, "AGENT_CONFIG": str(conf)}
    )
    out = agent.tmp / "o.json"
    run_id = agent.run(deployment, {"out": str(out), "keys": ["FROM_FILE"]})
    assert agent.wait([run_id])[run_id]["type"] == "COMPLETED"
    assert seen_env(out) == {"FROM_FILE": "yes"}

    workers = agent.client.request(
        "workers", "POST", f"/work_pools/{agent.pool}/workers/filter", {}
    )
    assert [w["name"] for w in workers] == ["file-agent"]
    # JSON log lines, each carrying role and (for a run's lines) its flow run id.
    lines = [json.loads(x) for x in agent.procs.log("poller").splitlines() if x.startswith("{")]
    assert lines and all(x["role"] == "agent" for x in lines)
    claimed = [x for x in lines if x["message"].endswith("claimed")]
    assert claimed and claimed[0]["flow_run_id"] == run_id
    assert AUTH not in agent.procs.log("poller") + agent.procs.log("worker")
    assert os.stat(conf).st_mode & 0o077 == 0
