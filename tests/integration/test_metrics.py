"""Metrics end to end, under the repository's supervisord.conf against a real server: a
real Prometheus scrapes true counts summed over every agent process, and the counters
survive worker and poller restarts, but start from zero when the whole agent starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.settings import defaults
from tests.integration.conftest import Agent, executions
from tests.integration.harness import Supervisor, free_port, wait_for

PACKAGE = "prometheus"  # Debian's package with the `prometheus` server (.ci/run installs it)
POLLER = "agent"
WORKERS = ["agent-worker:agent-worker_00", "agent-worker:agent-worker_01"]
WHOLE_AGENT_STARTS = "the whole agent is starting"

T = TypeVar("T")


# -- helpers -----------------------------------------------------------------------------


def settle(read: Callable[[], T], expected: T, timeout: float, what: str) -> None:
    """Wait until ``read()`` equals ``expected``; on timeout show the last value read."""
    deadline = time.monotonic() + timeout
    while True:
        last = read()
        if last == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout:.0f}s:\n  got  {last}\n  want {expected}")
        time.sleep(0.5)


def start_agent(sup: Supervisor, workers: int) -> None:
    result = sup.ctl("start", POLLER)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [POLLER, *WORKERS[:workers]]
    wait_for(
        lambda: [sup.status().get(n) for n in names] == ["RUNNING"] * len(names),
        30,
        f"{', '.join(names)} RUNNING",
    )


def pid_of(sup: Supervisor, name: str) -> int:
    out = sup.ctl("pid", name).stdout.strip()
    assert out.isdigit() and int(out) > 0, f"supervisorctl pid {name}: {out!r}"
    return int(out)


def running_with_new_pid(sup: Supervisor, name: str, old: int) -> bool:
    if sup.status().get(name) != "RUNNING":
        return False
    return pid_of(sup, name) != old


def run_records(agent: Agent, deployment: str, marker: Path, n: int) -> list[str]:
    run_ids = [agent.run(deployment, {"marker": str(marker)}) for _ in range(n)]
    states = agent.wait(run_ids, timeout=90)
    assert {r: states[r].get("type") for r in run_ids} == dict.fromkeys(run_ids, "COMPLETED")
    return run_ids


def metrics_text(agent: Agent) -> str:
    response = requests.get(f"{agent.env['AGENT_ADDRESS']}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return response.text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed the way prometheus_client reads it."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def counters(agent: Agent) -> dict[str, float]:
    """The run counters of /metrics; a series not exported yet counts as 0."""
    found = samples(metrics_text(agent))
    return {
        "claimed": found.get(("agent_flow_runs_claimed_total", ()), 0.0),
        "started": found.get(("agent_flow_runs_started_total", ()), 0.0),
        "completed": sum(
            value
            for (name, labels), value in found.items()
            if name == "agent_flow_runs_finished_total" and ("outcome", "completed") in labels
        ),
        "durations": found.get(("agent_flow_run_duration_seconds_count", ()), 0.0),
    }


def totals(n: int) -> dict[str, float]:
    return dict.fromkeys(("claimed", "started", "completed", "durations"), float(n))


def metrics_file_pids(directory: Path) -> set[int]:
    """Pids named by prometheus_client's multiprocess files (``<kind>_<pid>.db``)."""
    pids = set()
    for path in directory.glob("*.db"):
        found = re.search(r"_(\d+)\.db$", path.name)
        if found:
            pids.add(int(found.group(1)))
    return pids


def runs_started_by(sup: Supervisor, worker: str) -> set[str]:
    """Flow run ids a worker's log says it started (its supervisord log file)."""
    log = sup.log(worker.split(":")[1])
    return set(re.findall(r"flow run ([0-9a-f-]{36}) started: pid", log))


# -- Prometheus ---------------------------------------------------------------------------


def start_prometheus(agent: Agent, tmp: Path) -> str:
    """A real Prometheus on a free loopback port, scraping the agent every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            f"the `prometheus` server is not on PATH: install Debian's {PACKAGE!r} package "
            f"(apt-get install {PACKAGE}; .ci/run does)"
        )
    port = free_port()
    target = urlsplit(agent.env["AGENT_ADDRESS"]).netloc
    config = tmp / "prometheus.yml"
    # JSON is YAML.
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "local-agent",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    proc = agent.procs.start(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=tmp,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {agent.procs.log('prometheus')}")
        try:
            return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, 30, "Prometheus to be ready")
    return url


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def values(prometheus: str, exprs: list[str]) -> dict[str, list[float]]:
    """Each expression's values, one per series (so a duplicate series shows too)."""
    return {e: sorted(float(r["value"][1]) for r in query(prometheus, e)) for e in exprs}


# -- tests --------------------------------------------------------------------------------


def test_prometheus_scrapes_true_counts_across_workers(
    agent: Agent, marker: Path, tmp_path: Path
) -> None:
    prometheus = start_prometheus(agent, tmp_path)
    sup = agent.supervisor(workers=2)
    start_agent(sup, workers=2)

    record = agent.deploy("record")
    records = [agent.run(record, {"marker": str(marker)}) for _ in range(6)]
    failing = agent.run(agent.deploy("boom"))
    crashing = agent.run(agent.deploy("hard_exit"))
    run_ids = [*records, failing, crashing]
    states = agent.wait(run_ids, timeout=75)
    assert {r: states[r].get("type") for r in run_ids} == {
        **dict.fromkeys(records, "COMPLETED"),
        failing: "FAILED",
        crashing: "CRASHED",
    }
    assert sorted(executions(marker)) == sorted(records)

    # Both worker processes ran runs, and each run ran in exactly one of them: so the
    # counts below are sums over processes, not one process's.
    by_worker = [runs_started_by(sup, w) for w in WORKERS]
    assert all(by_worker), f"a worker ran no run: {by_worker}"
    assert not by_worker[0] & by_worker[1]
    assert by_worker[0] | by_worker[1] == set(run_ids)

    # What Prometheus stored from scraping the poller's /metrics, once the last
    # outcomes are counted and scraped. One series per expression.
    expected = {
        'up{job="local-agent"}': [1.0],
        "agent_flow_runs_claimed_total": [8.0],
        "agent_flow_runs_started_total": [8.0],
        # By what Prefect shows and what ended the process: all three exited with a code.
        'agent_flow_runs_finished_total{outcome="completed",cause="exit_code"}': [6.0],
        'agent_flow_runs_finished_total{outcome="failed",cause="exit_code"}': [1.0],
        'agent_flow_runs_finished_total{outcome="crashed",cause="exit_code"}': [1.0],
        "sum(agent_flow_runs_finished_total)": [8.0],
        "agent_flow_run_duration_seconds_count": [8.0],
        "agent_flow_run_start_delay_seconds_count": [8.0],
        # Each known reason is exported at 0 from the start, so increase() works.
        "agent_claim_conflicts_total": [0.0, 0.0, 0.0],
        'agent_workers{state="idle"}': [2.0],
        'agent_workers{state="busy"}': [0.0],
        'agent_spool_runs{state="waiting"}': [0.0],
        'agent_spool_runs{state="running"}': [0.0],
        "agent_polls_total > bool 0": [1.0],
        'agent_api_request_duration_seconds_count{endpoint="get_scheduled_flow_runs"} > bool 0': [
            1.0
        ],
        "time() - agent_last_successful_poll_timestamp_seconds < bool 60": [1.0],
        "agent_info": [1.0],
    }
    settle(lambda: values(prometheus, list(expected)), expected, 30, "Prometheus's values")

    info = query(prometheus, "agent_info")[0]["metric"]
    assert {k: info.get(k) for k in ("version", "name", "pool")} == {
        "version": __version__,
        "name": defaults.AGENT_NAME,
        "pool": agent.pool,
    }

    # Bounded labels only: no flow run id in any series, neither in the exposition nor
    # in what Prometheus stored.
    text = metrics_text(agent)
    series = requests.get(
        f"{prometheus}/api/v1/series", params={"match[]": '{job="local-agent"}'}, timeout=5
    ).json()
    assert series["status"] == "success", series
    stored = json.dumps(series["data"])
    assert agent.pool in text and agent.pool in stored  # the scan sees label values
    for run_id in run_ids:
        assert run_id not in text, f"flow run id {run_id} in /metrics"
        assert run_id not in stored, f"flow run id {run_id} in a series Prometheus stored"


def test_worker_restarts_neither_reset_nor_double_counters(agent: Agent, marker: Path) -> None:
    sup = agent.supervisor(workers=2)
    start_agent(sup, workers=2)
    metrics_dir = agent.run_dir / "metrics"
    record = agent.deploy("record")

    run_records(agent, record, marker, 2)
    settle(lambda: counters(agent), totals(2), 20, "counters after 2 runs")

    # One worker killed -9 (supervisor restarts it), the other restarted gracefully:
    # every count the workers made so far now sits in files of dead pids.
    killed, restarted = pid_of(sup, WORKERS[0]), pid_of(sup, WORKERS[1])
    os.kill(killed, signal.SIGKILL)
    result = sup.ctl("restart", WORKERS[1])
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: running_with_new_pid(sup, WORKERS[0], killed), 30, "worker_00 restarted")
    wait_for(lambda: running_with_new_pid(sup, WORKERS[1], restarted), 30, "worker_01 restarted")
    assert {killed, restarted} <= metrics_file_pids(metrics_dir)
    assert counters(agent) == totals(2), "worker restarts reset the counters"

    run_records(agent, record, marker, 2)
    settle(lambda: counters(agent), totals(4), 20, "counters after 4 runs")
    time.sleep(2)  # nothing counts late, twice
    assert counters(agent) == totals(4)

    # The poller alone restarts while the workers stay up: its claims carry on.
    poller = pid_of(sup, POLLER)
    assert sup.ctl("stop", POLLER).returncode == 0
    assert sup.ctl("start", POLLER).returncode == 0
    wait_for(lambda: running_with_new_pid(sup, POLLER, poller), 30, "the poller restarted")
    assert counters(agent) == totals(4), "a poller restart reset the counters"
    assert sup.log(POLLER).count(WHOLE_AGENT_STARTS) == 1  # only its very first start

    # The whole agent stops and starts: a new life, counting from zero, with the files
    # of every earlier process gone.
    old_pids = metrics_file_pids(metrics_dir)
    assert {killed, restarted, poller} <= old_pids
    result = sup.ctl("stop", POLLER, "agent-worker:*")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(sup.status().values()) == {"STOPPED"}
    start_agent(sup, workers=2)
    assert counters(agent) == totals(0), "the whole agent started, counters did not reset"
    assert sup.log(POLLER).count(WHOLE_AGENT_STARTS) == 2
    assert not metrics_file_pids(metrics_dir) & old_pids
    assert len(executions(marker)) == 4
