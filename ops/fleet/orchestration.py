"""One fleet run from start to report: K hosts up, a quiet minute, the runs in bursts
while hosts are killed and the server restarted once, the wait for every run to be
final, another quiet minute, the accounting and the figures."""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.api.client import PrefectClient
from examples import demo
from ops.benchmark.console import log
from ops.fleet import report
from ops.fleet.chaos import HostKiller, live_runs_reader
from ops.fleet.hosts import Host
from ops.fleet.sampler import (
    Sampler,
    conflicts,
    connection_stats,
    cpu_percent,
    requests_per_host_minute,
)
from ops.soak.accounting import account, parse_executions, patiently, read_states
from ops.soak.orchestration import ENTRYPOINT, FLOW, FLOW_DIR, burst_sizes
from tests.integration.harness import PrefectServer

PROGRESS_SECONDS = 20.0


@dataclass
class Fleet:
    args: argparse.Namespace
    tmp: Path
    client: PrefectClient
    server: PrefectServer
    hosts: list[Host]
    sampler: Sampler
    restart_server: Any  # () -> None: stop and start the server, same port and database
    seed: int
    t0: float
    run_ids: list[str] = field(default_factory=list)
    restricted: list[str] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # what -> time.time()
    server_restarts: int = 0

    def mark(self, what: str) -> None:
        self.marks[what] = time.time()
        log(f"-- {what} ({time.time() - self.t0:.0f} s)")

    def run(self, pool: str) -> int:
        args = self.args
        executions = self.tmp / "executions.txt"
        executions.touch()
        demo.ensure_pool(self.client, pool)
        deployment = demo.ensure_deployment(
            self.client, pool, FLOW, ENTRYPOINT, FLOW_DIR, name=pool
        )
        rng = random.Random(f"{self.seed}:plan")
        n_doomed = args.dead_for_good if len(self.hosts) > 1 else 0
        doomed = set(rng.sample([h.index for h in self.hosts], n_doomed))
        survivors = [h for h in self.hosts if h.index not in doomed]
        log(f"starting {len(self.hosts)} hosts; to be killed for good: {sorted(doomed) or '-'}")
        for host in self.hosts:
            host.start()
        deadline = time.monotonic() + 60 + 30 * len(self.hosts)
        while not all(h.running() for h in self.hosts):
            if time.monotonic() > deadline:
                raise RuntimeError("the hosts' agents and workers did not all reach RUNNING")
            time.sleep(2.0)
        self.sampler.start()
        self.mark("hosts up")
        time.sleep(args.idle)
        self.mark("first burst")
        killer = HostKiller(
            self.hosts,
            doomed,
            random.Random(f"{self.seed}:kills"),
            (args.kill_every[0], args.kill_every[1]),
            live_runs_reader(self.client, pool),
            self.t0,
        )
        killer.start()
        try:
            self._bursts(rng, deployment, executions, survivors)
            self._wait_final(time.monotonic() + args.timeout, killer)
        finally:
            log("stopping the kills (a host down for now is started again)")
            killer.stop()
        self.mark("kills stopped")
        self._wait_final(time.monotonic() + args.settle, killer)
        self.mark("all final")
        time.sleep(args.idle)
        self.mark("idle after")
        self.sampler.stop()
        return self._report(killer, executions, doomed)

    def _bursts(
        self, rng: random.Random, deployment: str, executions: Path, survivors: list[Host]
    ) -> None:
        sizes = burst_sizes(rng, self.args.runs, self.args.bursts)
        restart_after = (len(sizes) - 1) // 2  # the middle burst
        for i, size in enumerate(sizes):
            if i:
                gap = rng.uniform(*self.args.burst_gap)
                log(f"next burst in {gap:.1f} s")
                time.sleep(gap)
            log(f"burst {i + 1}/{len(sizes)}: creating {size} runs")
            for _ in range(size):
                self._create(rng, deployment, executions, survivors)
            (self.tmp / "runs.txt").write_text("".join(f"{r}\n" for r in self.run_ids))
            if i == restart_after:
                time.sleep(min(10.0, self.args.burst_gap[0]))  # runs in flight meanwhile
                log("restarting the Prefect server")
                self.restart_server()
                self.server_restarts += 1
                self.mark("server restarted")
        self.mark("last run created")

    def _create(
        self, rng: random.Random, deployment: str, executions: Path, survivors: list[Host]
    ) -> None:
        pause = round(rng.uniform(*self.args.flow_seconds), 2)
        job_variables: dict[str, Any] = {}
        target = None
        if rng.random() < self.args.restricted and survivors:
            target = rng.choice(survivors)
            job_variables = {"labels": [target.label]}
        body = {
            "parameters": {"executions": str(executions), "pause": pause},
            "job_variables": job_variables,
            "idempotency_key": f"{self.tmp.name}-{len(self.run_ids)}",
        }
        path = f"/deployments/{deployment}/create_flow_run"

        def call() -> Any:
            return self.client.request("create_flow_run", "POST", path, body)

        run_id = str(patiently("create a run", call)["id"])
        self.run_ids.append(run_id)
        if target is not None:
            self.restricted.append(run_id)

    def _wait_final(self, deadline: float, killer: HostKiller) -> None:
        next_progress = 0.0
        while True:
            states = read_states(self.client, self.run_ids)
            final = sum(1 for r in self.run_ids if states.get(r) in demo.FINAL)
            if time.monotonic() >= next_progress or final == len(self.run_ids):
                alive = sum(1 for h in self.hosts if h.alive)
                log(
                    f"{final}/{len(self.run_ids)} final; {len(killer.kills)} host kills, "
                    f"{alive}/{len(self.hosts)} hosts up"
                )
                next_progress = time.monotonic() + PROGRESS_SECONDS
            if final == len(self.run_ids) or time.monotonic() > deadline:
                return
            time.sleep(3.0)

    def _report(self, killer: HostKiller, executions: Path, doomed: set[int]) -> int:
        args, m = self.args, self.marks
        runs = report.read_runs(self.client, self.run_ids)
        states = {r: report.state_of(runs.get(r)).get("type") for r in self.run_ids}
        lines = parse_executions(executions.read_text())
        excused = killer.hit | set(report.reaped(runs))
        acc = account(self.run_ids, states, lines, excused)
        code, reasons = report.verdict(acc, len(killer.kills), self.server_restarts)
        s = self.sampler
        measured: dict[str, Any] = {
            "conflicts": conflicts(s),
            "api_idle_before": requests_per_host_minute(s, m["hosts up"], m["first burst"]),
            "api_busy": requests_per_host_minute(s, m["first burst"], m["all final"]),
            "api_idle_after": requests_per_host_minute(s, m["all final"], m["idle after"]),
            "cpu_busy": cpu_percent(s, m["first burst"], m["all final"]),
            "cpu_idle_after": cpu_percent(s, m["all final"], m["idle after"]),
            "cpu_all": cpu_percent(s, m["hosts up"], m["idle after"]),
            "db_cpu_busy": cpu_percent(s, m["first burst"], m["all final"], database=True),
            "db_cpu_idle_after": cpu_percent(s, m["all final"], m["idle after"], True),
            "pg_connections": connection_stats(s),
            "restricted": self.restricted,
        }
        kills = killer.report()
        info = [
            (
                "fleet",
                f"{args.backend}, {len(self.hosts)} hosts x {args.workers} workers, "
                f"{args.runs} runs in {args.bursts} bursts, flows sleep "
                f"{args.flow_seconds[0]:g}-{args.flow_seconds[1]:g} s, seed {self.seed}",
            ),
            (
                "chaos",
                f"{len(kills)} host kills ({sum(1 for k in kills if k['dropped_spool'])} with "
                f"the spool deleted, {sum(1 for k in kills if k['for_good'])} for good: "
                f"{', '.join(f'fleet-host-{i}' for i in sorted(doomed)) or '-'}), "
                f"server restarts {self.server_restarts}",
            ),
            ("wall time", f"{time.time() - self.t0:.0f} s"),
        ]
        rows = report.figures(acc, runs, measured)
        result = f"FAIL: {'; '.join(reasons)}" if code else "PASS"
        print(report.render(info, rows, result), flush=True)
        for label, items in (
            ("lost", acc.lost),
            ("executed twice", list(acc.twice)),
            ("not final", list(acc.not_final)),
            ("ended wrongly", list(acc.wrong)),
        ):
            for run in items:
                print(f"  {label}: {run} {states.get(run)}")
        data = {
            "seed": self.seed,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "exit": code,
            "reasons": reasons,
            "table": dict([*info, *rows]),
            "measured": measured,
            "accounting": asdict(acc),
            "reaped": report.reaped(runs),
            "kills": kills,
            "killer_errors": killer.errors,
            "marks": {k: round(v - self.t0, 1) for k, v in m.items()},
            "samples": {
                "cpu": s.cpu,
                "db_cpu": s.db_cpu,
                "pg_connections": s.conns,
                "hosts": s.scrapes,
            },
            "tmp": str(self.tmp),
        }
        (self.tmp / "report.json").write_text(json.dumps(data, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1))
        return code
