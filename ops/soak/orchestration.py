"""One soak from start to report: the agent under supervisord, the runs in bursts while
the killer acts, the wait for every run to be final, the quiet period, the report."""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.api.client import PrefectClient
from examples import demo
from ops.benchmark.console import log
from ops.soak.accounting import (
    account,
    breakdown,
    history,
    parse_executions,
    patiently,
    read_json,
    read_states,
    render,
    spool_counts,
    spool_leftovers,
    spool_listing,
    state_paths,
    verdict,
)
from ops.soak.chaos import POLLER, Agent, Killer
from tests.integration.harness import Procs, Supervisor, execution, wait_for

FLOW_DIR = Path(__file__).resolve().parents[1]  # ops/: soak_flow.py
FLOW, ENTRYPOINT = "soak", "soak_flow.py:soak"
PROGRESS_SECONDS = 15.0
LATE_SECONDS = 3.0  # then this much more, so that a late second execution shows


def create_run(client: PrefectClient, deployment: str, parameters: dict[str, Any], key: str) -> str:
    """Create a run; the idempotency key makes a retry after a lost reply return the run
    the first try created instead of a second one."""
    body = {"parameters": parameters, "job_variables": {}, "idempotency_key": key}
    path = f"/deployments/{deployment}/create_flow_run"
    run = patiently("create a run", lambda: client.request("create_flow_run", "POST", path, body))
    return str(run["id"])


def burst_sizes(rng: random.Random, runs: int, bursts: int) -> list[int]:
    """``runs`` split into ``bursts`` random non-empty parts."""
    bursts = max(1, min(bursts, runs))
    cuts = sorted(rng.sample(range(1, runs), bursts - 1)) if bursts > 1 else []
    edges = [0, *cuts, runs]
    return [b - a for a, b in itertools.pairwise(edges)]


@dataclass
class Soak:
    args: argparse.Namespace
    tmp: Path
    procs: Procs
    client: PrefectClient
    env: dict[str, str]  # the agent's
    seed: int
    t0: float  # when the soak began (time.time())
    run_ids: list[str] = field(default_factory=list)
    timeline: list[tuple[str, str]] = field(default_factory=list)
    final_at_kill_stop: int = 0  # runs final when the kills stopped
    final_after_kills: int = 0  # runs that became final in the quiet period after
    anomalies: list[str] = field(default_factory=list)  # not in the verdict; evidence kept

    def mark(self, what: str) -> None:
        self.timeline.append((what, f"{time.time() - self.t0:.1f} s"))

    def run(self) -> int:
        args = self.args
        pool = str(self.env["AGENT_POOL"])
        spool = Path(self.env["AGENT_SPOOL_DIR"])
        run_dir = Path(self.env["AGENT_RUN_DIR"])
        executions = self.tmp / "executions.txt"
        executions.touch()
        demo.ensure_pool(self.client, pool)
        deployment = demo.ensure_deployment(
            self.client, pool, FLOW, ENTRYPOINT, FLOW_DIR, name=pool
        )
        sup = Supervisor(self.procs, run_dir, self.env)
        agent = Agent(sup, self.procs.tag)
        log(f"pool {pool}; starting supervisord ({args.workers} workers) and the agent")
        sup.start()
        started = sup.ctl("start", POLLER)
        if started.returncode != 0:
            raise RuntimeError(f"supervisorctl start agent: {started.stdout}{started.stderr}")
        wait_for(
            lambda: list(sup.status().values()) == ["RUNNING"] * (args.workers + 1),
            90,
            "the agent and its workers RUNNING",
        )
        self.mark("agent up")
        rng = random.Random(f"{self.seed}:plan")
        killer = Killer(
            agent,
            random.Random(f"{self.seed}:kills"),
            (args.kill_every[0], args.kill_every[1]),
            args.kinds,
            self.tmp / "kills.jsonl",
            self.t0,
        )
        killer.start()
        try:
            self._bursts(rng, deployment, executions)
            self.mark("last run created")
            deadline = time.monotonic() + args.timeout
            self._wait_final(deadline, killer, executions)
        except BaseException:
            killer.stop(timeout=5.0)  # interrupted or failed: do not wait for an action
            raise
        log("stopping the kills")
        killer.stop()  # an action under way finishes first
        self.mark("kills stopped")
        self._settle(agent, killer, spool)
        self.mark("settled")
        states = read_states(self.client, self.run_ids)
        lines = parse_executions(executions.read_text())
        acc = account(self.run_ids, states, lines, killer.flows_killed, spool_listing(spool))
        kills = killer.by_kind()
        code, _ = verdict(acc, sum(kills.values()))
        histories = {run: history(self.client, run) for run in self.run_ids}
        info = self._info(killer, spool, agent)
        info.append(("state paths", breakdown(state_paths(histories.values()))))
        if acc.spool_leftovers:
            # Only a spec in two folders at once fails the verdict, but any leftover is
            # not how a drained agent looks: say what each is, and keep the evidence.
            self.anomalies.append(f"spool not drained: {' '.join(acc.spool_leftovers)}")
            count = Counter(lines)
            for where in acc.spool_leftovers:
                run = where.split("/", 1)[1]
                status = read_json(execution(spool, run) / "status.json")
                also = [d for d in ("done", "failed") if (spool / d / f"{run}.json").exists()]
                info.append(
                    (
                        "spool leftover",
                        f"{where}: Prefect {states.get(run)}, {count[run]} executions, "
                        f"also in {'/'.join(also) or 'no other folder'}, shim status "
                        f"{status.get('phase')} rc {status.get('returncode')}",
                    )
                )
        print(render(acc, kills, info), flush=True)
        for run in dict.fromkeys([*acc.lost, *acc.twice, *acc.not_final, *acc.wrong]):
            print(f"  history {run}: {' -> '.join(histories[run])}")
        report = {
            "seed": self.seed,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "run_ids": self.run_ids,
            "states": states,
            "accounting": asdict(acc),
            "exit": code,
            "kills": [asdict(a) for a in killer.actions],
            "heals": [asdict(a) for a in killer.heals],
            "killer_errors": killer.errors,
            "histories": histories,
            "anomalies": self.anomalies,
            "info": dict(info),
            "tmp": str(self.tmp),
        }
        (self.tmp / "report.json").write_text(json.dumps(report, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return code

    def _bursts(self, rng: random.Random, deployment: str, executions: Path) -> None:
        sizes = burst_sizes(rng, self.args.runs, self.args.bursts)
        for i, size in enumerate(sizes):
            if i:
                gap = rng.uniform(*self.args.burst_gap)
                log(f"next burst in {gap:.1f} s")
                time.sleep(gap)
            log(f"burst {i + 1}/{len(sizes)}: creating {size} runs")
            for _ in range(size):
                pause = round(rng.uniform(*self.args.flow_seconds), 2)
                params = {"executions": str(executions), "pause": pause}
                key = f"{self.env['AGENT_POOL']}-{len(self.run_ids)}"
                self.run_ids.append(create_run(self.client, deployment, params, key))
            (self.tmp / "runs.txt").write_text("".join(f"{r}\n" for r in self.run_ids))

    def _wait_final(self, deadline: float, killer: Killer, executions: Path) -> None:
        next_progress = 0.0
        while True:
            states = read_states(self.client, self.run_ids)
            final = sum(1 for r in self.run_ids if states.get(r) in demo.FINAL)
            if time.monotonic() >= next_progress or final == len(self.run_ids):
                done = len(parse_executions(executions.read_text()))
                log(
                    f"{final}/{len(self.run_ids)} final, {done} executions, "
                    f"{len(killer.actions)} kills"
                )
                next_progress = time.monotonic() + PROGRESS_SECONDS
            self.final_at_kill_stop = final
            if final == len(self.run_ids):
                self.mark("all runs final")
                return
            if time.monotonic() > deadline:
                missing = len(self.run_ids) - final
                log(
                    f"timed out after {self.args.timeout:.0f} s: {missing} not final; "
                    f"the kills stop, they get up to {self.args.settle:.0f} s more"
                )
                self.mark("timed out")
                return
            time.sleep(2.0)

    def _settle(self, agent: Agent, killer: Killer, spool: Path) -> None:
        """The quiet period: no more kills. Start anything left stopped, then wait up to
        --settle seconds for every run to be final, the spool's tmp/, new/ and cur/ to be
        empty and the last flow process to exit; then LATE_SECONDS more."""
        killer.heal()
        deadline = time.monotonic() + self.args.settle
        while True:
            states = read_states(self.client, self.run_ids)
            final = sum(1 for r in self.run_ids if states.get(r) in demo.FINAL)
            leftovers, flows = spool_leftovers(spool), agent.flow_processes()
            if final == len(self.run_ids) and not leftovers and not flows:
                break
            if time.monotonic() > deadline:
                log(
                    f"settle: after {self.args.settle:.0f} s, {len(self.run_ids) - final} runs "
                    f"not final, spool not drained: {' '.join(leftovers) or '-'}, flow "
                    f"processes: {' '.join(str(p.pid) for p in flows) or '-'}"
                )
                break
            time.sleep(2.0)
        self.final_after_kills = final - self.final_at_kill_stop
        if self.final_after_kills:
            log(f"{self.final_after_kills} runs became final after the kills stopped")
        time.sleep(LATE_SECONDS)

    def _info(self, killer: Killer, spool: Path, agent: Agent) -> list[tuple[str, str]]:
        a = self.args
        counts = spool_counts(spool)
        snap = agent.snapshot()
        supervisor = Counter(snap.states.values())
        return [
            (
                "soak",
                f"{a.runs} runs in {a.bursts} bursts, {a.workers} workers, a kill every "
                f"{a.kill_every[0]:g}-{a.kill_every[1]:g} s, flows sleep "
                f"{a.flow_seconds[0]:g}-{a.flow_seconds[1]:g} s, seed {self.seed}",
            ),
            ("times", ", ".join(f"{what} {when}" for what, when in self.timeline)),
            ("wall time", f"{time.time() - self.t0:.1f} s"),
            ("final only after the kills", str(self.final_after_kills)),
            ("heals (operator restarts)", str(len(killer.heals))),
            ("killer errors", str(len(killer.errors))),
            ("spool at the end", breakdown(counts)),
            ("supervisor at the end", breakdown(dict(supervisor))),
        ]
