"""No secret is printed anywhere (issue 11, item 6). Distinct secrets are planted in the
auth string (the test server requires it), an API key, a password in the API URL and an
--env value; a workload with runs and errors goes through the supervised agent (a run
that completes, one that fails, one that crashes) and through a poller and a worker
whose URL and key the server refuses or cannot be reached with. Then every output
channel is searched for them: the logs at DEBUG, supervisord's logs, --print-config,
`agent status --json`, `agent local install`, /metrics, /api/health?verbose, every spool
file (specs, run folders, outbox) and the argv of every process the test started.

A process's *environment* is not searched: the flow run gets the credential through it
by design, and the shim's environment is being narrowed separately (issue 11, item 3).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import requests

from agent.core.spec import JobSpec, dumps
from agent.spool.moves import Spool
from tests.integration.conftest import AUTH, Agent
from tests.integration.harness import free_port, tagged_pids, wait_for

KEY = f"pnu_plantedkey{uuid.uuid4().hex}"
URL_PASSWORD = f"urlpass{uuid.uuid4().hex}"
ENV_VALUE = f"envsecret{uuid.uuid4().hex}"
AUTH_PASSWORD = AUTH.split(":", 1)[1]
SECRETS = {
    "api key": KEY,
    "URL password": URL_PASSWORD,
    "--env value": ENV_VALUE,
    "auth string": AUTH_PASSWORD,
    "auth string (basic)": base64.b64encode(AUTH.encode()).decode(),
}


def _leaks(channel: str, text: str) -> list[str]:
    return [f"{name} in {channel}" for name, value in SECRETS.items() if value in text]


def _argv_of_test_processes(tag: str) -> str:
    lines = []
    for pid in tagged_pids(tag):
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # ended meanwhile
    return "\n".join(lines)


def _files(root: Path) -> str:
    """Every regular file under ``root``, as text."""
    return "\n".join(
        f"{p}: {p.read_bytes().decode(errors='replace')}"
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    )


def _get(url: str) -> str:
    return requests.get(url, timeout=10).text


def test_no_planted_secret_appears_in_any_output_channel(agent: Agent, tmp_path: Path) -> None:
    env_vars = json.dumps({"PLANTED_ENV": ENV_VALUE})
    found: list[str] = []
    argv: list[str] = []

    # The supervised agent, against the real server (which requires the auth string).
    sup = agent.supervisor(workers=2, PREFECT__CLOUD__AGENT__ENV_VARS=env_vars)
    assert sup.ctl("start", "agent").returncode == 0
    runs = {
        "completed": agent.run(agent.deploy("record"), {"marker": str(tmp_path / "m.txt")}),
        "failed": agent.run(agent.deploy("boom")),
        "crashed": agent.run(agent.deploy("hard_exit"), {"code": 3}),
    }
    argv.append(_argv_of_test_processes(agent.procs.tag))  # while the flows run

    # A poller that cannot reach its URL at all (retry warnings), and a worker the server
    # refuses (URL password, API key), with a run of its own waiting.
    refused_url = agent.env["PREFECT_API_URL"].replace("http://", f"http://me:{URL_PASSWORD}@")
    gone_url = f"http://me:{URL_PASSWORD}@127.0.0.1:{free_port()}/api"
    other = tmp_path / "spool-b"
    spool_b = Spool(other)
    spool_b.ensure()
    # First an unusable spec: its Failed cannot be reported (refused), so it waits in the
    # outbox; then a run that waits for the API.
    bad = str(uuid.uuid4())
    spool_b.write_ahead(bad, json.dumps({"version": 1, "flow_run_id": bad}).encode())
    spool_b.publish(bad)
    time.sleep(0.05)  # taken oldest first
    run_b = str(uuid.uuid4())
    spool_b.write_ahead(run_b, dumps(JobSpec(run_b, agent.pool, "c", "agent", env_vars={})))
    spool_b.publish(run_b)
    address_b = f"http://127.0.0.1:{free_port()}"
    secret_env = {"PREFECT_API_KEY": KEY, "PREFECT__CLOUD__AGENT__ENV_VARS": env_vars}
    agent.procs.start(
        "poller-b",
        ["agent", "local", "start", "--spool", str(other), "--agent-address", address_b],
        {**secret_env, "PREFECT_API_URL": gone_url, "AGENT_API_RETRY_SECONDS": "3"},
    )
    agent.procs.start(
        "worker-b",
        ["agent", "worker", "--spool", str(other), "--worker-id", "wb"],
        {**secret_env, "PREFECT_API_URL": refused_url},
    )

    states = agent.wait(list(runs.values()), timeout=150)
    assert {k: states[r]["type"] for k, r in runs.items()} == {
        "completed": "COMPLETED",
        "failed": "FAILED",
        "crashed": "CRASHED",
    }
    wait_for(lambda: "Retrying" in agent.procs.log("poller-b"), 60, "poller B retrying")
    wait_for(lambda: "HTTP 401" in agent.procs.log("worker-b"), 60, "worker B refused")
    wait_for(lambda: any((other / "outbox").glob("*")), 60, "a report in the outbox")
    argv.append(_argv_of_test_processes(agent.procs.tag))

    # Every channel.
    address = agent.env["AGENT_ADDRESS"]
    for where in (address, address_b):
        found += _leaks(f"{where}/metrics", _get(f"{where}/metrics"))
        found += _leaks(f"{where}/api/health?verbose", _get(f"{where}/api/health?verbose"))
    for spool in (agent.spool, other):
        status = agent.procs.run(["agent", "status", "--json", "--spool", str(spool)])
        assert status.stdout.startswith("{"), status.stderr
        found += _leaks("agent status --json", status.stdout + status.stderr)
    everything = {**secret_env, "PREFECT_API_URL": refused_url}
    printed = agent.procs.run(["agent", "local", "start", "--print-config"], everything)
    assert printed.returncode == 0, printed.stderr
    found += _leaks("--print-config", printed.stdout + printed.stderr)
    install = agent.procs.run(
        ["agent", "local", "install", "--run-dir", str(agent.run_dir)], everything
    )
    assert install.returncode == 0, install.stderr
    found += _leaks("agent local install", install.stdout + install.stderr)
    found += _leaks("agent and supervisord logs", _files(agent.run_dir))
    found += _leaks("logs of poller B", agent.procs.log("poller-b"))
    found += _leaks("logs of worker B", agent.procs.log("worker-b"))
    found += _leaks("spool files", _files(agent.spool) + _files(other))
    found += _leaks("argv of a process", "\n".join(argv))
    assert found == []
    # The searches looked where the secrets would be: the logs are at DEBUG and hold
    # the errors, and the spool holds finished specs and run output.
    assert " DEBUG " in sup.log("agent")
    assert list((agent.spool / "done").glob("*.json"))
