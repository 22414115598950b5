"""Benchmark local-agent against Prefect's own process worker, in one run, on one
Prefect server and one machine.

    python -m ops.benchmark [--runs 20] [--concurrency 2] [--idle 20] [--keep]
                            [--prefect-query-seconds 1] [--timeout S]

(from the repository's root)

Starts a real Prefect server (own PREFECT_HOME, loopback), then:

  B. ``prefect worker start --pool bench-process --type process --limit C`` with
     PREFECT_WORKER_QUERY_SECONDS=1 (Prefect's default is 10 s);
  A. local-agent under real supervisord (the repository's supervisord.conf,
     AGENT_WORKERS=C) on pool ``bench-agent``.

For each: wait until it is registered with the pool, let it idle ``--idle`` seconds,
submit ``--runs`` runs of the same one-line flow at once, wait for all to be Completed,
and read the figures from what Prefect recorded; RSS is sampled from /proc every 0.5 s.
At the end of A the server is stopped and the agent's /api/health is timed again.
See ops/benchmark.md for what each figure means. Exit 0 when every run completed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from agent import __version__ as agent_version
from agent.api.client import PrefectClient
from agent.settings import defaults
from agent.settings.config import ApiSettings
from examples import demo
from tests.integration.harness import (
    BIN,
    REPO,
    Procs,
    Supervisor,
    free_port,
    prefect_server,
    tagged_pids,
    wait_for,
)

AUTH = "bench:bench-auth-string"
FLOWS_DIR = REPO / "tests" / "flows"
FLOW, ENTRYPOINT = "record", "agent_test_flows.py:record"  # appends its run id to a file
SAMPLE_SECONDS = 0.5
HEALTH_REQUESTS = 50
SERVER_DOWN_SECONDS = 5.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes and their memory ---------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str


def process_table() -> dict[int, Proc]:
    """Every process now: pid -> (ppid, command line)."""
    table: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = Proc(int(entry.name), ppid, cmdline)
    return table


def children(table: dict[int, Proc], pid: int) -> list[Proc]:
    return [p for p in table.values() if p.ppid == pid]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used, from /proc/<pid>/stat; 0 if gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return 0.0


def short_command(cmdline: str) -> str:
    """`.../bin/agent local start --x` -> `agent local start`."""
    words = cmdline.split()
    scripts = [i for i, w in enumerate(words) if Path(w).name in ("agent", "prefect")]
    if not scripts:
        return Path(words[0]).name if words else "?"
    subcommand = []
    for word in words[scripts[0] + 1 : scripts[0] + 3]:
        if word.startswith("-"):
            break
        subcommand.append(word)
    return " ".join([Path(words[scripts[0]]).name, *subcommand])


def proc_kib(path: str, key: str) -> int:
    """A ``key: N kB`` line of a /proc file; 0 if the process is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS: resident memory, counting shared pages in full."""
    return proc_kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """Pss: resident memory with each shared page divided among the processes sharing it."""
    return proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


# A classifier sorts the processes of one side into named groups; "flows" are counted
# (how many run at once) and every other group's RSS is summed.
Classifier = Callable[[dict[int, Proc]], dict[str, list[int]]]


def classify_agent(supervisord_pid: int) -> Classifier:
    """supervisord -> poller and workers (ours) -> per-run shim -> flow."""

    def classify(table: dict[int, Proc]) -> dict[str, list[int]]:
        own = children(table, supervisord_pid)
        workers = [p for p in own if " worker" in p.cmdline]
        shims = [
            c for w in workers for c in children(table, w.pid) if "agent.worker.shim" in c.cmdline
        ]
        flows = [c for s in shims for c in children(table, s.pid)]
        return {
            "own": [p.pid for p in own],
            "supervisord": [supervisord_pid],
            "shims": [s.pid for s in shims],
            "flows": [f.pid for f in flows],
        }

    return classify


def classify_prefect(worker_pid: int) -> Classifier:
    """The `prefect worker start` process; each flow is its child (a workspace
    supervisor that execs `python -m prefect.engine`) with the flow's own children."""

    def classify(table: dict[int, Proc]) -> dict[str, list[int]]:
        return {
            "own": [worker_pid] if worker_pid in table else [],
            "flows": [p.pid for p in children(table, worker_pid)],
        }

    return classify


@dataclass
class Sample:
    at: float  # time.time()
    rss: dict[str, int]  # group -> summed VmRSS, KiB
    pss: dict[str, int]  # group -> summed Pss, KiB (shared pages split between sharers)
    count: dict[str, int]  # group -> processes
    cpu: dict[str, float]  # group -> CPU seconds its current processes have used so far


class Sampler:
    """Samples every group every SAMPLE_SECONDS in a thread. Also keeps each own
    process's peak RSS, and the CPU time of short-lived helpers (the shims) per pid."""

    def __init__(self, classify: Classifier) -> None:
        self.classify = classify
        self.samples: list[Sample] = []
        self.own_peaks: dict[int, tuple[str, int]] = {}  # pid -> (command, peak KiB)
        self.shim_cpu: dict[int, tuple[float, float]] = {}  # pid -> (first seen, max CPU s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        now, table = time.time(), process_table()
        groups = self.classify(table)
        flows = len(groups.pop("flows", []))
        pids = [pid for members in groups.values() for pid in members]
        rss = {pid: rss_kib(pid) for pid in pids}
        pss = {pid: pss_kib(pid) for pid in pids}
        cpu = {pid: cpu_seconds(pid) for pid in pids}
        self.samples.append(
            Sample(
                now,
                {name: sum(rss[pid] for pid in members) for name, members in groups.items()},
                {name: sum(pss[pid] for pid in members) for name, members in groups.items()},
                {"flows": flows, **{name: len(members) for name, members in groups.items()}},
                {name: sum(cpu[pid] for pid in members) for name, members in groups.items()},
            )
        )
        for pid in groups.get("own", []):
            command = short_command(table[pid].cmdline) if pid in table else "?"
            self.own_peaks[pid] = (command, max(rss[pid], self.own_peaks.get(pid, ("", 0))[1]))
        for pid in groups.get("shims", []):
            first, used = self.shim_cpu.get(pid, (now, 0.0))
            self.shim_cpu[pid] = (first, max(used, cpu[pid]))

    def peaks(self) -> str:
        return ", ".join(f"{cmd} {mib(kib)}" for cmd, kib in self.own_peaks.values())

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def shims_cpu(self, start: float, end: float) -> tuple[int, float]:
        """Shims first seen in the window: how many, and their CPU seconds (as last sampled,
        so a little low: up to SAMPLE_SECONDS of each shim's life is missed)."""
        seen = [used for first, used in self.shim_cpu.values() if start <= first <= end]
        return len(seen), sum(seen)


# -- figures ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


@dataclass
class Health:
    latencies: list[float] = field(default_factory=list)  # seconds
    codes: Counter[str] = field(default_factory=Counter)

    def cell(self) -> str:
        if not self.latencies:
            return "-"
        ms = [x * 1000 for x in self.latencies]
        codes = " ".join(f"{n}x{code}" for code, n in sorted(self.codes.items()))
        return f"{statistics.median(ms):.1f} / {max(ms):.1f} ({codes})"


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
class Result:
    name: str
    settings: list[str]
    processes: str  # what "own" RSS covers
    runs: list[dict[str, Any]] = field(default_factory=list)
    executions: int = 0
    submitted_at: float = 0.0
    idle: list[Sample] = field(default_factory=list)
    burst: list[Sample] = field(default_factory=list)
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run -> states
    own_peaks: str = ""
    shims: tuple[int, float] = (0, 0.0)  # shims started during the burst, their CPU s
    health_up: Health | None = None
    health_down: Health | None = None

    @property
    def completed(self) -> int:
        return sum(1 for r in self.runs if (r.get("state") or {}).get("type") == "COMPLETED")

    def times(self, key: str) -> list[float]:
        return [t for r in self.runs if (t := ts(r.get(key))) is not None]

    def wall(self) -> float:
        ends = self.times("end_time")
        return max(ends) - min(self.times("created")) if ends else float("nan")

    def start_delays(self) -> list[float]:
        """Scheduled time (expected_start_time) to start_time (entering Running)."""
        out = []
        for r in self.runs:
            scheduled, started = ts(r.get("expected_start_time")), ts(r.get("start_time"))
            if scheduled is not None and started is not None:
                out.append(started - scheduled)
        return out

    def between(self, first: str, then: str) -> list[float]:
        """Per run, from entering state type ``first`` to entering ``then``."""
        out = []
        for states in self.histories.values():
            when = {s["type"]: ts(s["timestamp"]) for s in reversed(states)}  # earliest wins
            a, b = when.get(first), when.get(then)
            if a is not None and b is not None:
                out.append(b - a)
        return out

    def latencies(self) -> list[float]:
        """Created to end_time."""
        out = []
        for r in self.runs:
            created, ended = ts(r.get("created")), ts(r.get("end_time"))
            if created is not None and ended is not None:
                out.append(ended - created)
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.settings,
            "runs": self.runs,
            "executions": self.executions,
            "histories": self.histories,
            "own_peaks": self.own_peaks,
            "health_up": self.health_up.__dict__ if self.health_up else None,
            "health_down": self.health_down.__dict__ if self.health_down else None,
            "samples": {
                "idle": [s.__dict__ for s in self.idle],
                "burst": [s.__dict__ for s in self.burst],
            },
        }


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def memory_cell(samples: list[Sample], group: str, kind: str = "rss") -> str:
    """Peak / mean over the samples of the group's summed RSS (or PSS), MiB."""
    values = [getattr(x, kind)[group] for x in samples if group in getattr(x, kind)]
    if not values or not any(values):
        return "-"
    return f"{mib(max(values))} / {mib(statistics.fmean(values))}"


def cpu_cell(samples: list[Sample], group: str) -> str:
    """CPU seconds the group's processes used over the window, and as % of one core."""
    if len(samples) < 2 or samples[-1].at <= samples[0].at or group not in samples[0].cpu:
        return "-"
    used = samples[-1].cpu[group] - samples[0].cpu[group]
    return f"{used:.2f} ({100 * used / (samples[-1].at - samples[0].at):.1f}%)"


def p50_max(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {max(values, default=float('nan')):.1f}"


def throughput(r: Result, runs: int) -> str:
    wall = r.wall()
    return f"{runs / wall * 60:.1f}" if wall > 0 else "-"  # NaN > 0 is False


def peak_count(samples: list[Sample], group: str) -> int:
    return max((x.count.get(group, 0) for x in samples), default=0)


def start_delay(r: Result) -> str:
    delays = r.start_delays()
    p50, p90 = percentile(delays, 0.5), percentile(delays, 0.9)
    return f"{p50:.1f} / {p90:.1f} / {max(delays, default=float('nan')):.1f}"


def latency(r: Result) -> str:
    e2e = r.latencies()
    return f"{percentile(e2e, 0.5):.1f} / {percentile(e2e, 0.9):.1f}"


Cell = Callable[[Result, int], str]  # (result, --runs) -> table cell

ROWS: list[tuple[str, Cell]] = [
    ("runs Completed", lambda r, n: f"{r.completed}/{n}"),
    ("flow executions recorded", lambda r, n: str(r.executions)),
    ("wall time, first created -> last Completed (s)", lambda r, n: f"{r.wall():.1f}"),
    ("throughput (runs/min)", throughput),
    ("start delay p50 / p90 / max (s)", lambda r, n: start_delay(r)),
    ("end-to-end latency p50 / p90 (s)", lambda r, n: latency(r)),
    ("  Scheduled -> Pending (claim) p50 / max (s)",
     lambda r, n: p50_max(r.between("SCHEDULED", "PENDING"))),
    ("  Pending -> Running (launch) p50 / max (s)",
     lambda r, n: p50_max(r.between("PENDING", "RUNNING"))),
    ("  Running -> Completed (flow) p50 / max (s)",
     lambda r, n: p50_max(r.between("RUNNING", "COMPLETED"))),
    ("flows running at once (peak seen)", lambda r, n: str(peak_count(r.burst, "flows"))),
    ("own processes measured",
     lambda r, n: f"{r.processes} ({peak_count(r.burst, 'own')})"),
    ("own RSS while idle, peak / mean (MiB)", lambda r, n: memory_cell(r.idle, "own")),
    ("own RSS during burst, peak / mean (MiB)", lambda r, n: memory_cell(r.burst, "own")),
    ("own PSS during burst, peak / mean (MiB)",
     lambda r, n: memory_cell(r.burst, "own", "pss")),
    ("own CPU s while idle (% of a core)", lambda r, n: cpu_cell(r.idle, "own")),
    ("own CPU s during burst (% of a core)", lambda r, n: cpu_cell(r.burst, "own")),
    ("supervisord RSS during burst, peak / mean (MiB)",
     lambda r, n: memory_cell(r.burst, "supervisord")),
    ("supervisord CPU s during burst", lambda r, n: cpu_cell(r.burst, "supervisord")),
    ("per-run shims, summed RSS peak / mean (MiB)",
     lambda r, n: memory_cell(r.burst, "shims")),
    ("per-run shims, CPU s in all (shims seen)",
     lambda r, n: f"{r.shims[1]:.2f} ({r.shims[0]})" if r.shims[0] else "-"),
    ("/api/health, server up: median / max ms",
     lambda r, n: r.health_up.cell() if r.health_up else "-"),
    ("/api/health, server stopped: median / max ms",
     lambda r, n: r.health_down.cell() if r.health_down else "-"),
]  # fmt: skip


def print_report(results: list[Result], args: argparse.Namespace, machine: list[str]) -> None:
    print()
    print(f"local-agent vs Prefect process worker: {args.runs} runs, concurrency "
          f"{args.concurrency}, after {args.idle:.0f} s idle")  # fmt: skip
    for line in machine:
        print(f"  {line}")
    for result in results:
        print(f"{result.name} settings:")
        for line in result.settings:
            print(f"  {line}")
        if result.own_peaks:
            print(f"  own processes, peak RSS MiB: {result.own_peaks}")
    print()
    by_name = {r.name: r for r in results}
    columns = [by_name[name] for name in ("local-agent", "prefect process") if name in by_name]
    cells = [[cell(r, args.runs) for _, cell in ROWS] for r in columns]
    width = max(len(label) for label, _ in ROWS)
    widths = [
        max(len(r.name), *(len(c) for c in col)) for r, col in zip(columns, cells, strict=True)
    ]
    print(
        "  ".join([" " * width, *(r.name.rjust(w) for r, w in zip(columns, widths, strict=True))])
    )
    for i, (label, _) in enumerate(ROWS):
        values = [col[i].rjust(w) for col, w in zip(cells, widths, strict=True)]
        print("  ".join([label.ljust(width), *values]))


# -- the scenarios ---------------------------------------------------------------------


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


def prefect_worker_defaults(world: World) -> dict[str, str]:
    """The worker settings Prefect would use with nothing set (read from prefect itself)."""
    code = (
        "from prefect.settings import get_current_settings as g; w = g().worker; "
        "print(w.query_seconds, w.prefetch_seconds, w.heartbeat_seconds)"
    )
    env = {k: v for k, v in world.procs.env.items() if not k.startswith("PREFECT_WORKER_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    query, prefetch, heartbeat = out.stdout.split() if out.returncode == 0 else ("?", "?", "?")
    return {"query": query, "prefetch": prefetch, "heartbeat": heartbeat}


def scenario_prefect(world: World) -> Result:
    pool, n = "bench-process", world.args.concurrency
    query = f"{world.args.prefect_query_seconds:g}"
    env = {
        **world.env(world.tmp / "process" / "prefect-home"),
        "PREFECT_WORKER_QUERY_SECONDS": query,
    }
    found = prefect_worker_defaults(world)
    result = Result(
        "prefect process",
        [
            f"prefect worker start --pool {pool} --type process --limit {n}",
            f"PREFECT_WORKER_QUERY_SECONDS={query} (set; default {found['query']} s); "
            f"prefetch {found['prefetch']} s, heartbeat {found['heartbeat']} s (defaults)",
            f"Prefect's default poll: PREFECT_WORKER_QUERY_SECONDS={found['query']} s",
        ],
        "worker",
    )
    created = world.procs.run(
        [str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], env, timeout=120
    )
    if created.returncode != 0:
        raise RuntimeError(f"cannot create pool {pool}: {created.stdout}{created.stderr}")
    argv = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    argv += ["--limit", str(n), "--name", "bench-process-worker"]
    log(f"{result.name}: starting {' '.join(argv[1:])}")
    worker = world.procs.start("prefect-worker", argv, env)
    sampler = Sampler(classify_prefect(worker.pid))
    sampler.start()

    def worker_up() -> bool:
        if worker.poll() is not None:
            tail = world.procs.log("prefect-worker")[-2000:]
            raise RuntimeError(f"prefect worker exited with {worker.returncode}:\n{tail}")
        return world.registered(pool)

    try:
        wait_for(worker_up, 120, "the worker")
        world.burst(result, pool, sampler)
    finally:
        sampler.stop()
        # Stop it now so that it does not compete with the agent for the CPU.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    return result


def scenario_agent(world: World, stop_server: Callable[[], None]) -> Result:
    pool, n = "bench-agent", world.args.concurrency
    run_dir = world.tmp / "agent" / "run"
    run_dir.mkdir(parents=True)
    address = f"http://127.0.0.1:{free_port()}"
    env = {
        **world.env(world.tmp / "agent" / "prefect-home"),
        "AGENT_POOL": pool,
        "AGENT_WORKERS": str(n),
        "AGENT_SPOOL_DIR": str(world.tmp / "agent" / "spool"),
        "AGENT_RUN_DIR": str(run_dir),
        "AGENT_ADDRESS": address,
    }
    result = Result(
        "local-agent",
        [
            f"supervisord -c supervisord.conf; AGENT_WORKERS={n}, pool {pool} (local-agent)",
            f"poll every {defaults.POLL_INTERVAL_MIN:g} s while claiming, doubling to "
            f"{defaults.POLL_INTERVAL_MAX:g} s while idle; prefetch "
            f"{defaults.PREFETCH_SECONDS:g} s, heartbeat {defaults.HEARTBEAT_SECONDS:g} s "
            "(defaults, not settable)",
        ],
        "poller+workers",
    )
    demo.ensure_pool(world.client, pool)
    sup = Supervisor(world.procs, run_dir, env)
    sampler: Sampler | None = None
    log(f"{result.name}: starting supervisord and `supervisorctl start agent`")
    try:
        sup.start()
        started = sup.ctl("start", "agent")
        if started.returncode != 0:
            raise RuntimeError(f"supervisorctl start agent: {started.stdout}{started.stderr}")
        wait_for(
            lambda: list(sup.status().values()) == ["RUNNING"] * (n + 1), 60, "agent and workers"
        )
        supervisord_pid = int((run_dir / "supervisord.pid").read_text())
        sampler = Sampler(classify_agent(supervisord_pid))
        sampler.start()
        wait_for(lambda: world.registered(pool), 60, "the agent's heartbeat")
        world.burst(result, pool, sampler)
        sampler.stop()
        health = f"{address}/api/health"
        log(f"{result.name}: timing {HEALTH_REQUESTS} GET /api/health with the server up")
        result.health_up = time_health(health, HEALTH_REQUESTS, 0.05)
        log("stopping the Prefect server")
        stop_server()
        log(f"{result.name}: timing GET /api/health for {SERVER_DOWN_SECONDS:.0f} s, server down")
        spacing = SERVER_DOWN_SECONDS / HEALTH_REQUESTS
        result.health_down = time_health(health, HEALTH_REQUESTS, spacing)
    finally:
        if sampler:
            sampler.stop()
        sup.shutdown()
    return result


# -- main ------------------------------------------------------------------------------


def machine() -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, load average {load}",
        f"Python {platform.python_version()}, prefect "
        f"{importlib.metadata.version('prefect')}, local-agent {agent_version}",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.benchmark",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--runs", type=int, default=20, help="flow runs per side (default 20)")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="runs at once per side (default 2)"
    )
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds each side idles first (default 20)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the runs (default 60 + 15/run)",
    )
    parser.add_argument(
        "--prefect-query-seconds",
        type=float,
        default=1.0,
        help="PREFECT_WORKER_QUERY_SECONDS for Prefect's worker (default 1; Prefect's is 10)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, results)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.concurrency < 1:
        parser.error("--runs and --concurrency must be at least 1")
    if args.timeout is None:
        args.timeout = 60.0 + 15.0 * args.runs
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so that every `finally` below runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    log(f"working in {tmp}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_"))}
    procs = Procs(base_env, tmp)
    results: list[Result] = []
    server = contextlib.ExitStack()
    ok = False
    try:
        with terminate_as_interrupt():
            home = tmp / "server-home"
            home.mkdir()
            log("starting the Prefect server")
            url = server.enter_context(prefect_server(home, AUTH))
            client = PrefectClient(ApiSettings(url=url, auth_string=AUTH))
            world = World(url, client, procs, tmp, args)
            about = machine()
            # Prefect's worker first: the agent's scenario ends by stopping the server.
            results.append(scenario_prefect(world))
            results.append(scenario_agent(world, server.close))
            about.append(
                "load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
            )
            print_report(results, args, about)
            (tmp / "results.json").write_text(
                json.dumps([r.as_json() for r in results], indent=1, default=str)
            )
            ok = all(r.completed == args.runs for r in results)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        procs.close()
        server.close()
        if left := tagged_pids(procs.tag):
            log(f"warning: processes still running after clean-up: {left}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep:
            log(f"kept {tmp} (logs, results.json)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not ok:
        log("some runs did not complete")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
