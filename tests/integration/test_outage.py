"""The Prefect server stopped for a minute in the middle of a burst, then started again on
the same port with the same database. Real server, real supervisord, real flows.

While it is away: no agent process exits, nothing is claimed or started, health says
why, and the Crashed report of a flow killed meanwhile waits in the spool's outbox.
Once it is back: polling resumes within seconds, the outbox is delivered once, the flows
that finished during the outage report their own Completed (the engine retries), and
every run ends final, executed exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest

from agent.api.client import PrefectClient
from agent.settings.config import ApiSettings
from examples import demo
from tests.integration.conftest import OWN_AUTH, Agent, executions
from tests.integration.harness import PrefectServer, Supervisor, wait_for
from tests.integration.test_health import get_health, wait_health

OUTAGE_SECONDS = 60
RUNS = 10
PAUSE = 10.0


def program_pids(sup: Supervisor) -> dict[str, int]:
    found = {}
    for name in sup.status():
        out = sup.ctl("pid", name).stdout.strip()
        found[name] = int(out) if out.isdigit() else 0
    return found


def running_unrecorded_flow(agent: Agent, marker: Path) -> tuple[str, int] | None:
    """A run that Prefect shows Running (so its flow code runs) and that has not recorded
    itself yet (it is mid-pause): its id and the flow's pid."""
    recorded = set(executions(marker))
    for path in (agent.spool / "runs").glob("*/*/status.json"):
        run_id = path.parent.parent.name
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if status.get("phase") != "running" or not status.get("flow") or run_id in recorded:
            continue
        if demo.read_run(agent.client, run_id)["state"]["type"] == "RUNNING":
            return run_id, int(status["flow"]["pid"])
    return None


def worker_logs(sup: Supervisor) -> str:
    return sup.log("agent-worker_00") + sup.log("agent-worker_01")


def outbox(agent: Agent) -> list[str]:
    folder = agent.spool / "outbox"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


@pytest.mark.backends
def test_a_minute_without_the_api_mid_burst_loses_and_repeats_nothing(
    agent: Agent, own_server: PrefectServer, marker: Path
) -> None:
    url = own_server.start()
    # The test's own calls ride out a stall of its server, as the session client's do
    # (CI once timed out creating a run here at the default 30 s on a loaded machine).
    settings = ApiSettings(url=url, auth_string=OWN_AUTH, read_timeout=60.0, retry_deadline=120.0)
    client = PrefectClient(settings)
    env = {**agent.env, "PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": OWN_AUTH}
    agent = dataclasses.replace(agent, client=client, env=env)
    demo.ensure_pool(client, agent.pool)
    deployment = agent.deploy("slow_record")
    sup = agent.supervisor(workers=2)
    assert sup.ctl("start", "agent").returncode == 0
    wait_for(lambda: set(sup.status().values()) == {"RUNNING"}, 30, "the agent RUNNING")
    before = program_pids(sup)
    address = env["AGENT_ADDRESS"]
    wait_health(address, 200, 30, "a healthy agent")

    params = {"marker": str(marker), "pause": PAUSE}
    run_ids = [agent.run(deployment, params) for _ in range(RUNS)]
    wait_for(lambda: len(executions(marker)) >= 2, 120, "two runs to complete")
    wait_for(lambda: running_unrecorded_flow(agent, marker), 60, "a Running flow mid-pause")
    found = running_unrecorded_flow(agent, marker)
    assert found is not None
    killed, flow_pid = found

    own_server.stop()
    down_at = time.monotonic()
    os.kill(flow_pid, signal.SIGKILL)  # its worker must report Crashed once the API is back
    done_before = len(executions(marker))

    # Health names the API; the other checks stay green.
    body = wait_health(
        address,
        503,
        60,
        "503 naming the unavailable API",
        check=lambda b: "api" in b["reasons"],
    )
    assert "the Prefect API has been unavailable for" in body["reasons"]["api"]
    assert "cannot reach" in body["reasons"]["api"]
    assert "workers" not in body["reasons"] and "spool" not in body["reasons"]
    # The killed run's worker waits for the API before it decides anything (the run may
    # have reported its own end): its spec stays in cur/, nothing goes to the outbox.
    wait_for(
        lambda: "waits for the Prefect API to settle" in worker_logs(sup),
        60,
        "the killed run's worker to wait for the API",
    )
    assert (agent.spool / "cur" / f"{killed}.json").exists()
    while time.monotonic() - down_at < OUTAGE_SECONDS:
        time.sleep(1)
        _, verbose = get_health(address, verbose=True)
        assert verbose["checks"]["api"]["ok"] is False
    # Nothing was started meanwhile: a flow's engine could not have reported. (The second
    # flow running at the stop may have finished its sleep and recorded itself.)
    assert len(executions(marker)) <= done_before + 1

    own_server.start()  # same port, same database; returns once /health answers
    back = time.monotonic()
    # The probe runs every second and a round follows at once (tests/unit/test_outage_sleep.py
    # pins that). The bound is loose: on a loaded machine a just-started server answers
    # /health while its first other calls still fail with 503 (SQLite busy), and those
    # rounds back off like any 5xx outage.
    wait_health(address, 200, 60, "200 once the API is back")
    resumed = time.monotonic() - back
    print(f"health green {resumed:.1f}s after the API answered /health again")

    states = agent.wait(run_ids, timeout=180)
    finals = {rid: states[rid]["type"] for rid in run_ids}
    # The killed run was Running: Crashed once, never run again. Every other run
    # Completed and executed exactly once, including one whose engine started just as
    # the API went away: it exited while still Pending (no user code ran) and was
    # started again once the API answered.
    assert finals == {rid: "CRASHED" if rid == killed else "COMPLETED" for rid in run_ids}
    assert "without reporting a final state" in str(states[killed]["message"]), states[killed]
    assert agent.states(killed).count("CRASHED") == 1, agent.states(killed)
    ran = sorted(r for r in run_ids if r != killed)
    assert sorted(executions(marker)) == ran
    assert outbox(agent) == []
    # No agent process exited or was restarted through it all.
    assert program_pids(sup) == before
    assert set(sup.status().values()) == {"RUNNING"}
    log = sup.log("agent")
    assert "the Prefect API is unavailable: claiming nothing" in log
    assert "the Prefect API answers again after" in log
    assert "the Prefect API answers again after" in worker_logs(sup)
