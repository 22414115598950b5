"""Measuring one side: what both sides share (the server, a client, the processes
started), one burst of runs from idle to read-back, and /api/health timing."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from agent.api.client import PrefectClient
from examples import demo
from ops.benchmark.console import log
from ops.benchmark.results import Health, Result
from ops.benchmark.sampling import Sampler
from tests.integration.harness import REPO, Procs

AUTH = "bench:bench-auth-string"
FLOWS_DIR = REPO / "tests" / "flows"
FLOW, ENTRYPOINT = "record", "agent_test_flows.py:record"  # appends its run id to a file


def time_health(url: str, count: int, spacing: float) -> Health:
    """GET url ``count`` times, a fresh connection each (like a probe), ``spacing`` apart."""
    health = Health()
    for _ in range(count):
        started = time.perf_counter()
        try:
            code = str(requests.get(url, timeout=5).status_code)
        except requests.RequestException as exc:
            code = type(exc).__name__
        health.latencies.append(time.perf_counter() - started)
        health.codes[code] += 1
        time.sleep(spacing)
    return health


@dataclass
class World:
    """What both scenarios share: the server, a client, the processes we started."""

    url: str
    client: PrefectClient
    procs: Procs
    tmp: Path
    args: argparse.Namespace

    def env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PREFECT_API_URL": self.url,
            "PREFECT_API_AUTH_STRING": AUTH,
            "PREFECT_HOME": str(home),
        }

    def registered(self, pool: str) -> bool:
        workers = self.client.request("workers", "POST", f"/work_pools/{pool}/workers/filter", {})
        return bool(workers)

    def burst(self, result: Result, pool: str, sampler: Sampler) -> None:
        """Idle, then submit the runs at once and wait for all of them to be final."""
        deployment = demo.ensure_deployment(
            self.client, pool, FLOW, ENTRYPOINT, FLOWS_DIR, name=pool
        )
        marker = self.tmp / f"{pool}.executions"
        marker.touch()
        idle_from = time.time()
        log(f"{result.name}: ready; idling {self.args.idle:.0f} s before the burst")
        time.sleep(self.args.idle)
        result.submitted_at = time.time()
        result.idle = sampler.window(idle_from, result.submitted_at)
        ids = [
            demo.create_run(self.client, deployment, {"marker": str(marker)})
            for _ in range(self.args.runs)
        ]
        log(f"{result.name}: submitted {len(ids)} runs; waiting for them to finish")
        demo.wait_final(self.client, ids, timeout=self.args.timeout)
        done = time.time()
        result.burst = sampler.window(result.submitted_at, done)
        result.shims = sampler.shims_cpu(result.submitted_at, done)
        body = {"flow_runs": {"id": {"any_": ids}}}
        result.runs = self.client.request("filter_flow_runs", "POST", "/flow_runs/filter", body)
        for run_id in ids:
            path = f"/flow_run_states/?flow_run_id={run_id}"
            states = self.client.request("states", "GET", path)
            result.histories[run_id] = sorted(states, key=lambda s: str(s["timestamp"]))
        result.own_peaks = sampler.peaks()
        lines = [line for line in marker.read_text().splitlines() if line]
        result.executions = len(lines)
        log(f"{result.name}: {result.completed}/{len(ids)} Completed, {len(lines)} executions")
