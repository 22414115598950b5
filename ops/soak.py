#!/usr/bin/env python3
"""Soak test: a few hundred short flow runs through local-agent under real supervisord,
while agent processes are killed at random times. Then it counts what went wrong.

    python ops/soak.py [--runs 300] [--workers 4] [--kill-every 3 10] [--seed N]
                       [--flow-seconds 0 2] [--bursts 4] [--burst-gap 5 30]
                       [--kinds KIND,...] [--timeout S] [--settle S] [--api-url URL]
                       [--json FILE] [--keep]

Without --api-url it starts its own Prefect server (own PREFECT_HOME in a temp dir, a
free loopback port, a random auth string). With --api-url it uses that server, with the
credential from PREFECT_API_AUTH_STRING or PREFECT_API_KEY if it needs one.

It creates a work pool of its own and a deployment of ``ops/soak_flow.py:soak``, a flow
that first appends ``<flow run id> <pid> <time>`` to an executions file (one O_APPEND
write: one line per execution) and then sleeps ``--flow-seconds``. It starts supervisord
with the repository's supervisord.conf (``--workers`` workers), ``supervisorctl start
agent``, creates the runs in ``--bursts`` bursts, and meanwhile, every ``--kill-every``
MIN..MAX seconds, does one of these to a process of that agent (only ever to processes
it started; every action is logged with its time, targets and runs):

    poller-kill9        kill -9 the poller (supervisor restarts it)
    poller-kill9-publish  kill -9 the poller inside a publish, between its link of the
                        spec into new/ and its unlink from tmp/ (caught with inotify)
    worker-kill9        kill -9 a worker (its flow goes on; a live worker adopts the run)
    worker-flow-kill9   kill -9 a busy worker and its run's process group (shim + flow)
    flow-kill9          kill -9 a flow process alone (its shim records the signal)
    worker-term         SIGTERM a worker (it finishes its run; supervisor restarts it)
    agent-stop-start    supervisorctl stop agent, a pause, supervisorctl start agent
    workers-restart     supervisorctl restart agent-worker:*

Before each action, a program supervisor gave up on (FATAL) or that stays stopped is
started again with supervisorctl, as an operator would ("heals", reported).

When every run is final (or --timeout seconds after the last burst) the killing stops.
In a quiet period of up to --settle seconds the soak waits for every run to be final and
the spool to drain (a worker killed often waits in the agent's crash-loop backoff, up to
300 s, before it takes runs again); then it reads each run's state from Prefect and the
executions file. What it counts, per run created:

- executed twice: the run's id is on two or more lines of the executions file. Nothing
  the soak does excuses that: the agent must never start a run twice.
- not final: the run is not COMPLETED, FAILED, CRASHED or CANCELLED at the end.
- lost: the run never executed (no line) and the soak never killed a flow of that run.
  Final or not: a run ended Crashed without ever running, or still Scheduled or Pending
  at the end, is lost. (A run stuck unexecuted counts as lost and as not final.)
- ended wrongly: the run executed once but ended other than COMPLETED, and the soak
  never killed a flow of that run. The flow cannot fail on its own, so the agent (or the
  engine under it) declared a healthy run Crashed/Failed/Cancelled.
- in the spool twice (per spec, not per run): a spec still in tmp/, new/ or cur/ while
  the same run's spec is in done/ or failed/: the agent's spool is inconsistent. A spec
  merely left in tmp/new/cur is reported (and the temp dir kept), not counted.

"Killed a flow of that run" means worker-flow-kill9 or flow-kill9 sent SIGKILL to that
run's shim or flow process: such a run is expected to end Crashed, with one line (the
flow wrote its line before the kill) or none (killed while the engine was still
starting, before the flow's code ran), or Completed (the kill landed after the engine
reported it, or before the flow existed and the adopting worker then started it). The
report lists these runs and their states separately ("flows killed by the soak") and
counts none of them as lost or ended wrongly; a second execution still counts. The other
kinds never kill a flow, so after them every run must be Completed, executed once.

Exit status: 0 when lost, executed twice, not final, ended wrongly and in the spool
twice are all 0 and at least one action was made; 1 otherwise; 3 when the soak itself
could not go on (setup failed, the API stayed unreachable): no verdict; 130 when
interrupted (Ctrl-C, SIGTERM). On 1 and 3, or when the spool did not drain, the temp dir
(kill log, executions file, spool, agent and server logs, report.json) is kept whatever
--keep says. Every process it started is killed by pid in the end, whatever happened.
See ops/soak.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import itertools
import json
import os
import random
import secrets
import select
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
import xmlrpc.client
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "examples")]

import demo  # noqa: E402

from agent.api.client import FINAL_STATE_TYPES, PrefectClient  # noqa: E402
from agent.core.errors import TransientApiError  # noqa: E402
from agent.settings.config import ApiSettings  # noqa: E402
from ops.benchmark import Proc, children, log, process_table, terminate_as_interrupt  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    TAG,
    Procs,
    Supervisor,
    free_port,
    prefect_server,
    tagged_pids,
    wait_for,
)

FLOW_DIR = REPO / "ops"
FLOW, ENTRYPOINT = "soak", "soak_flow.py:soak"
POLLER, WORKER_GROUP = "agent", "agent-worker"

KINDS: dict[str, str] = {
    "poller-kill9": "kill -9 the poller",
    "poller-kill9-publish": "kill -9 the poller inside a publish (tmp/ -> new/)",
    "worker-kill9": "kill -9 a worker",
    "worker-flow-kill9": "kill -9 a busy worker and its run's shim + flow",
    "flow-kill9": "kill -9 a flow process alone",
    "worker-term": "SIGTERM a worker",
    "agent-stop-start": "supervisorctl stop agent; start agent",
    "workers-restart": "supervisorctl restart agent-worker:*",
}
# Relative weights of the kinds: the hard kills most often.
WEIGHTS: dict[str, int] = {
    "poller-kill9": 3,
    "poller-kill9-publish": 1,
    "worker-kill9": 3,
    "worker-flow-kill9": 2,
    "flow-kill9": 1,
    "worker-term": 1,
    "agent-stop-start": 1,
    "workers-restart": 1,
}
# The soak's own server does not mark waiting runs Late: with SQLite, that service's
# writes for hundreds of waiting runs fight every other write for the database lock
# (HTTP 503 "database is locked" to the runs' own state changes). Late is a Prefect
# display state of type SCHEDULED: the agent claims such runs the same way.
SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}
STATE_CHUNK = 100  # runs per /flow_runs/filter call (the API's default limit is 200)
PROGRESS_SECONDS = 15.0
PUBLISH_WAIT_SECONDS = 20.0  # poller-kill9-publish: how long it waits for a publish
API_PATIENCE_SECONDS = 300.0  # how long the soak's own API calls retry a busy server
LATE_SECONDS = 3.0  # then this much more, so that a late second execution shows


# -- accounting (pure) -----------------------------------------------------------------


def parse_executions(text: str) -> list[str]:
    """Flow run ids from the executions file, one per line, in order (a line is
    ``<id> <pid> <time>``; only the id matters)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


@dataclass
class Accounting:
    """What became of the runs a soak created. See the module docstring for each list."""

    created: int
    states: dict[str, int]  # final state type (or "NOT FINAL: <type>") -> runs
    executions: int  # lines of the executions file that name a run of this soak
    executed: int  # runs executed at least once
    flows_killed: dict[str, int]  # runs whose flow the soak killed: state -> runs
    lost: list[str] = field(default_factory=list)
    twice: dict[str, int] = field(default_factory=dict)  # run -> executions (>= 2)
    not_final: dict[str, str] = field(default_factory=dict)  # run -> state type
    wrong: dict[str, str] = field(default_factory=dict)  # run -> state type
    strangers: list[str] = field(default_factory=list)  # lines naming no run created
    spool_twice: list[str] = field(default_factory=list)  # "cur/<id>" also in done|failed
    spool_leftovers: list[str] = field(default_factory=list)  # "cur/<id>" etc.

    @property
    def failures(self) -> int:
        return (
            len(self.lost)
            + len(self.twice)
            + len(self.not_final)
            + len(self.wrong)
            + len(self.spool_twice)
        )


def account(
    run_ids: Sequence[str],
    states: Mapping[str, str | None],
    executions: Sequence[str],
    flows_killed: Collection[str],
    spool: Mapping[str, Collection[str]] | None = None,
) -> Accounting:
    """``states``: each run's state type now (None or missing: unknown); ``executions``:
    run ids as read from the executions file; ``flows_killed``: runs whose shim or flow
    process the soak sent SIGKILL to; ``spool``: the run ids in each spool folder (tmp,
    new, cur, done, failed) at the end."""
    count = Counter(executions)
    created = set(run_ids)
    breakdown: Counter[str] = Counter()
    killed_states: Counter[str] = Counter()
    acc = Accounting(
        created=len(run_ids),
        states={},
        executions=sum(n for run, n in count.items() if run in created),
        executed=sum(1 for run in run_ids if count[run] > 0),
        flows_killed={},
        strangers=sorted(run for run in count if run not in created),
    )
    for run in run_ids:
        state = states.get(run) or "UNKNOWN"
        final = state in FINAL_STATE_TYPES
        breakdown[state if final else f"NOT FINAL: {state}"] += 1
        killed = run in flows_killed
        if killed:
            killed_states[state] += 1
        if count[run] >= 2:
            acc.twice[run] = count[run]
        if not final:
            acc.not_final[run] = state
        if count[run] == 0 and not killed:
            acc.lost.append(run)
        elif count[run] == 1 and final and state != "COMPLETED" and not killed:
            acc.wrong[run] = state
    acc.states = dict(breakdown.most_common())
    acc.flows_killed = dict(killed_states.most_common())
    spool = spool or {}
    retired = {run for folder in ("done", "failed") for run in spool.get(folder, ())}
    for folder in ("tmp", "new", "cur"):
        for run in sorted(spool.get(folder, ())):
            acc.spool_leftovers.append(f"{folder}/{run}")
            if run in retired:
                acc.spool_twice.append(f"{folder}/{run}")
    return acc


def verdict(acc: Accounting, actions: int) -> tuple[int, list[str]]:
    """Exit status and why: 1 if any run was lost, executed twice, not final or ended
    wrongly, if a spec is in the spool twice (tmp/new/cur and done/failed at once: the
    agent's spool is inconsistent), or if the soak made no action at all (then it
    proved nothing). A spec merely left in tmp/new/cur is shown, not counted."""
    reasons = []
    for label, items in (
        ("lost", acc.lost),
        ("executed twice", acc.twice),
        ("not final", acc.not_final),
        ("ended wrongly", acc.wrong),
    ):
        if items:
            reasons.append(f"{len(items)} run(s) {label}")
    if acc.spool_twice:
        reasons.append(f"{len(acc.spool_twice)} spec(s) in the spool twice")
    if actions == 0:
        reasons.append("no kill or restart was made: nothing was soaked")
    return (1 if reasons else 0), reasons


def breakdown(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"


def render(acc: Accounting, kills: Mapping[str, int], info: Sequence[tuple[str, str]]) -> str:
    """The report: ``info`` lines first (settings, times), then the figures."""
    code, reasons = verdict(acc, sum(kills.values()))
    rows: list[tuple[str, str]] = [
        *info,
        ("runs created", str(acc.created)),
        ("final states", breakdown(acc.states)),
        ("executions recorded", f"{acc.executions} ({acc.executed} runs executed)"),
        (
            "flows killed by the soak",
            f"{sum(acc.flows_killed.values())} runs ({breakdown(acc.flows_killed)}), "
            "expected, not counted as lost",
        ),
        ("kills and restarts", f"{sum(kills.values())} ({breakdown(kills)})"),
    ]
    if acc.strangers:
        rows.append(("lines naming no run", f"{len(acc.strangers)} ({', '.join(acc.strangers)})"))
    rows += [
        ("runs lost", str(len(acc.lost))),
        ("runs executed twice", str(len(acc.twice))),
        ("runs not final", str(len(acc.not_final))),
        ("runs ended wrongly", str(len(acc.wrong))),
        ("specs in the spool twice", str(len(acc.spool_twice))),
        ("result", f"FAIL: {'; '.join(reasons)}" if code else "PASS"),
    ]
    width = max(len(label) for label, _ in rows) + 1
    lines = [f"{label + ':':<{width}} {value}" for label, value in rows]
    for label, runs in (
        ("lost", {run: "" for run in acc.lost}),
        ("executed twice", {run: f"{n} executions" for run, n in acc.twice.items()}),
        ("not final", acc.not_final),
        ("ended wrongly", acc.wrong),
        ("in the spool twice", {where: "(also in done/ or failed/)" for where in acc.spool_twice}),
        ("left in the spool", {where: "" for where in acc.spool_leftovers}),
    ):
        for run, what in runs.items():
            lines.append(f"  {label}: {run} {what}".rstrip())
    return "\n".join(lines)


# -- the agent's processes -------------------------------------------------------------


def read_argv(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def read_environ(pid: int) -> dict[str, str]:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    return {}


def shim_run(pid: int) -> str | None:
    """The flow run id of a shim, from its ``--run-dir .../runs/<id>``."""
    argv = read_argv(pid)
    if "agent.worker.shim" not in argv or "--run-dir" not in argv[:-1]:
        return None
    return Path(argv[argv.index("--run-dir") + 1]).name


@dataclass
class Snapshot:
    """The soak's agent now: supervisor's view, plus shims and flows from /proc."""

    poller: int | None  # pid, when RUNNING
    workers: dict[str, int]  # RUNNING workers: process name -> pid
    busy: dict[str, tuple[int, str]]  # worker name -> (its shim's pid, run id)
    flows: dict[int, str]  # our flow processes (children of a shim): pid -> run id
    stuck: list[str]  # FATAL, EXITED or STOPPED programs, as "group:name"
    states: dict[str, str]  # "group:name" -> supervisor state


class Agent:
    """The supervisord world the soak attacks; every process in it carries the tag."""

    def __init__(self, sup: Supervisor, tag: str) -> None:
        self.sup, self.tag = sup, tag

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        sock = f"unix://{self.sup.run_dir / 'supervisor.sock'}"
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, sock)
        )

    def owned(self, pid: int) -> bool:
        """Started by this soak: never signal anyone else's process (a reused pid)."""
        return read_environ(pid).get(TAG) == self.tag

    def snapshot(self) -> Snapshot:
        infos: list[dict[str, Any]] = self.rpc().supervisor.getAllProcessInfo()
        states = {f"{i['group']}:{i['name']}": str(i["statename"]) for i in infos}
        running = [i for i in infos if i["statename"] == "RUNNING" and i["pid"]]
        poller = next((int(i["pid"]) for i in running if i["name"] == POLLER), None)
        workers = {str(i["name"]): int(i["pid"]) for i in running if i["group"] == WORKER_GROUP}
        table = process_table()
        mine = set(tagged_pids(self.tag))
        shims = {p.pid: run for p in table.values() if p.pid in mine and (run := shim_run(p.pid))}
        busy: dict[str, tuple[int, str]] = {}
        for name, pid in workers.items():
            for child in children(table, pid):
                if child.pid in shims:
                    busy[name] = (child.pid, shims[child.pid])
        flows: dict[int, str] = {}
        for shim in shims:
            for flow in children(table, shim):
                if "prefect.engine" in flow.cmdline and flow.pid in mine:
                    flows[flow.pid] = read_environ(flow.pid).get("PREFECT__FLOW_RUN_ID", "?")
        stuck = [name for name, state in states.items() if state in ("FATAL", "EXITED", "STOPPED")]
        return Snapshot(poller, workers, busy, flows, stuck, states)

    def flow_processes(self) -> list[Proc]:
        mine = set(tagged_pids(self.tag))
        return [
            p for p in process_table().values() if p.pid in mine and "prefect.engine" in p.cmdline
        ]


@dataclass
class Action:
    """One entry of the kill log."""

    at: float  # seconds since the soak began
    clock: str
    kind: str
    targets: list[str]
    runs: list[str] = field(default_factory=list)  # runs whose flow this action killed
    took: float = 0.0
    note: str = ""

    def line(self) -> str:
        runs = f" runs {' '.join(self.runs)}" if self.runs else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.kind}: {', '.join(self.targets)}{runs}{note}"


class Killer:
    """A thread that does one random action every MIN..MAX seconds until stopped."""

    def __init__(
        self,
        agent: Agent,
        rng: random.Random,
        interval: tuple[float, float],
        kinds: Sequence[str],
        log_path: Path,
        t0: float,
    ) -> None:
        self.agent, self.rng, self.interval, self.kinds = agent, rng, interval, list(kinds)
        self.log_path, self.t0 = log_path, t0
        self.actions: list[Action] = []
        self.heals: list[Action] = []
        self.errors: list[str] = []
        self.flows_killed: set[str] = set()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-killer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 180.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.interval)):
            try:
                self.heal()
                self.act()
            except Exception as exc:  # the soak goes on; the report says so
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log(f"killer error: {type(exc).__name__}: {exc}")

    def _record(self, action: Action, heal: bool = False) -> None:
        with self.lock:
            (self.heals if heal else self.actions).append(action)
            self.flows_killed.update(action.runs)
            with self.log_path.open("a") as f:
                f.write(json.dumps(asdict(action)) + "\n")
        kind, n = ("heal", len(self.heals)) if heal else ("kill", len(self.actions))
        log(f"{kind} #{n}: {action.line()}")

    def _new(self, kind: str) -> Action:
        now = time.time()
        clock = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        return Action(round(now - self.t0, 3), clock, kind, [])

    def heal(self) -> None:
        """Start what supervisor gave up on (FATAL) or what stays stopped or exited (seen
        so twice, a second apart: a worker that exits is restarted by supervisor), as an
        operator would."""
        stuck = self.agent.snapshot().stuck
        if not stuck:
            return
        time.sleep(1.0)
        again = self.agent.snapshot().stuck
        for name in [n for n in stuck if n in again]:
            action = self._new("heal")
            target = POLLER if name == f"{POLLER}:{POLLER}" else name
            started = time.monotonic()
            result = self.agent.sup.ctl("start", target)
            action.targets, action.took = [f"start {target}"], round(time.monotonic() - started, 3)
            action.note = (result.stdout + result.stderr).strip()
            self._record(action, heal=True)

    def applicable(self, snap: Snapshot) -> list[str]:
        ok = {
            "poller-kill9": snap.poller is not None,
            "poller-kill9-publish": snap.poller is not None,
            "worker-kill9": bool(snap.workers),
            "worker-flow-kill9": bool(snap.busy),
            "flow-kill9": bool(snap.flows),
            "worker-term": bool(snap.workers),
            "agent-stop-start": snap.poller is not None,
            "workers-restart": bool(snap.workers),
        }
        return [kind for kind in self.kinds if ok[kind]]

    def kill(self, pid: int, sig: signal.Signals, group: bool = False) -> bool:
        if not self.agent.owned(pid):
            return False
        try:
            (os.killpg if group else os.kill)(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def act(self) -> None:
        snap = self.agent.snapshot()
        kinds = self.applicable(snap)
        if not kinds:
            log("kill: nothing to act on now")
            return
        kind = self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
        if self._act(kind, snap):
            return
        log(f"kill: {kind}: skipped (its target ended meanwhile, or nothing came)")

    def _act(self, kind: str, snap: Snapshot) -> bool:
        """Do ``kind`` to a random target of ``snap``; False if the target was gone."""
        action = self._new(kind)
        started = time.monotonic()
        worker = self.rng.choice(sorted(snap.workers)) if snap.workers else ""
        if kind == "poller-kill9":
            assert snap.poller is not None
            if not self.kill(snap.poller, signal.SIGKILL):
                return False
            action.targets = [f"poller pid {snap.poller}"]
        elif kind == "poller-kill9-publish":
            assert snap.poller is not None
            try:
                pidfd = os.pidfd_open(snap.poller)
            except ProcessLookupError:
                return False
            try:
                if not self.agent.owned(snap.poller):
                    return False
                spool = Path(self.agent.sup.env["AGENT_SPOOL_DIR"])
                run = in_publish(spool, PUBLISH_WAIT_SECONDS, pidfd)
            finally:
                os.close(pidfd)
            if run is None:
                log(f"kill: {kind}: no publish within {PUBLISH_WAIT_SECONDS:.0f} s")
                return False
            action.targets = [f"poller pid {snap.poller}", f"publishing {run}"]
        elif kind in ("worker-kill9", "worker-term"):
            sig = signal.SIGKILL if kind == "worker-kill9" else signal.SIGTERM
            if not self.kill(snap.workers[worker], sig):
                return False
            busy = f" (running {snap.busy[worker][1]})" if worker in snap.busy else ""
            action.targets = [f"{worker} pid {snap.workers[worker]}{busy}"]
        elif kind == "worker-flow-kill9":
            worker = self.rng.choice(sorted(snap.busy))
            shim, run = snap.busy[worker]
            if not self.agent.owned(shim) or not self.kill(snap.workers[worker], signal.SIGKILL):
                return False
            # The shim leads the run's process group (its own session); the flow is in it.
            flows = [pid for pid, r in snap.flows.items() if r == run]
            flow = f"flow pid {flows[0]}" if flows else "flow not started yet"
            if self.kill(shim, signal.SIGKILL, group=True):
                action.runs = [run]
            else:
                flow = "(the run had just ended)"
            action.targets = [f"{worker} pid {snap.workers[worker]}", f"shim pid {shim} + {flow}"]
        elif kind == "flow-kill9":
            pid = self.rng.choice(sorted(snap.flows))
            if not self.kill(pid, signal.SIGKILL):
                return False
            action.runs = [snap.flows[pid]]
            action.targets = [f"flow pid {pid}"]
        elif kind == "agent-stop-start":
            stop = self.agent.sup.ctl("stop", POLLER)
            pause = self.rng.uniform(0.0, 3.0)
            time.sleep(pause)
            start = self.agent.sup.ctl("start", POLLER)
            action.targets = [f"poller pid {snap.poller}", f"{pause:.1f} s stopped"]
            action.note = " / ".join(
                (r.stdout + r.stderr).strip().replace("\n", " ") for r in (stop, start)
            )
        elif kind == "workers-restart":
            result = self.agent.sup.ctl("restart", f"{WORKER_GROUP}:*")
            action.targets = [f"{len(snap.workers)} workers, {len(snap.busy)} busy"]
            action.note = f"rc {result.returncode}"
        action.took = round(time.monotonic() - started, 3)
        self._record(action)
        return True

    def by_kind(self) -> dict[str, int]:
        counts = Counter(a.kind for a in self.actions)
        return {kind: counts[kind] for kind in KINDS if counts[kind]}


IN_CREATE = 0x100  # inotify(7)
_INOTIFY_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def in_publish(spool: Path, timeout: float, poller: int) -> str | None:
    """Wait (inotify on new/) for the poller to link a spec into new/ while it is still
    in tmp/, i.e. inside `Spool.publish` between its link and its unlink (a window of
    about a directory fsync: a millisecond here), and SIGKILL the poller right then
    (``poller`` is a pidfd: a pid reused meanwhile is never hit). Returns the run id, or
    None if no publish came within ``timeout`` s or the poller had gone (nothing sent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    try:
        if libc.inotify_add_watch(fd, os.fsencode(spool / "new"), IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                return None
            data = os.read(fd, 65536)
            offset = 0
            while offset < len(data):
                _, _, _, size = _INOTIFY_EVENT.unpack_from(data, offset)
                start = offset + _INOTIFY_EVENT.size
                name = data[start : start + size].rstrip(b"\0").decode()
                offset = start + size
                if name.endswith(".json") and (spool / "tmp" / name).exists():
                    try:
                        signal.pidfd_send_signal(poller, signal.SIGKILL)
                    except ProcessLookupError:
                        return None  # that poller is gone already
                    return name[: -len(".json")]
        return None
    finally:
        os.close(fd)


# -- Prefect ---------------------------------------------------------------------------


T = TypeVar("T")


def patiently(what: str, call: Callable[[], T]) -> T:
    """``call``, retried for up to API_PATIENCE_SECONDS while the server answers 5xx or
    not at all (each try already retries for the client's own 20 s). A busy SQLite server
    answers 503 "database is locked" now and then under this load."""
    deadline = time.monotonic() + API_PATIENCE_SECONDS
    while True:
        try:
            return call()
        except TransientApiError as exc:
            if time.monotonic() > deadline:
                raise
            log(f"{what}: {exc}; trying again")
            time.sleep(2.0)


def create_run(client: PrefectClient, deployment: str, parameters: dict[str, Any], key: str) -> str:
    """Create a run; the idempotency key makes a retry after a lost reply return the run
    the first try created instead of a second one."""
    body = {"parameters": parameters, "job_variables": {}, "idempotency_key": key}
    path = f"/deployments/{deployment}/create_flow_run"
    run = patiently("create a run", lambda: client.request("create_flow_run", "POST", path, body))
    return str(run["id"])


def read_states(client: PrefectClient, run_ids: Sequence[str]) -> dict[str, str | None]:
    """Each run's state type, asked in chunks (the API returns at most 200 runs a call)."""
    states: dict[str, str | None] = {}
    for i in range(0, len(run_ids), STATE_CHUNK):
        chunk = list(run_ids[i : i + STATE_CHUNK])
        body = {"flow_runs": {"id": {"any_": chunk}}, "limit": len(chunk)}
        runs = patiently("read states", functools.partial(client.filter_flow_runs, body))
        for run in runs:
            states[str(run["id"])] = (run.get("state") or {}).get("type")
    return states


def history(client: PrefectClient, run_id: str) -> list[str]:
    path = f"/flow_run_states/?flow_run_id={run_id}"
    states = patiently("read a history", lambda: client.request("states", "GET", path))
    return [f"{s['type']}:{s.get('name')}" for s in sorted(states, key=lambda s: s["timestamp"])]


def state_paths(histories: Iterable[Sequence[str]]) -> dict[str, int]:
    """How many runs went each way, e.g. ``PENDING>RUNNING>COMPLETED``: state types in
    order, SCHEDULED (and Late, its kind) left out. Two PENDINGs: claimed twice."""
    paths = Counter(
        ">".join(t for t, _, _ in (s.partition(":") for s in h) if t != "SCHEDULED")
        for h in histories
    )
    return dict(paths.most_common())


# -- the soak --------------------------------------------------------------------------


def burst_sizes(rng: random.Random, runs: int, bursts: int) -> list[int]:
    """``runs`` split into ``bursts`` random non-empty parts."""
    bursts = max(1, min(bursts, runs))
    cuts = sorted(rng.sample(range(1, runs), bursts - 1)) if bursts > 1 else []
    edges = [0, *cuts, runs]
    return [b - a for a, b in itertools.pairwise(edges)]


def read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


SPOOL_FOLDERS = ("tmp", "new", "cur", "done", "failed")


def spool_listing(spool: Path) -> dict[str, list[str]]:
    """The run ids of the specs in each spool folder."""
    return {
        folder: sorted(p.stem for p in (spool / folder).glob("*.json"))
        if (spool / folder).is_dir()
        else []
        for folder in SPOOL_FOLDERS
    }


def spool_leftovers(spool: Path) -> list[str]:
    """Specs still in tmp/, new/ or cur/ (``cur/<id>``): none once every run has ended."""
    listing = spool_listing(spool)
    return [f"{folder}/{run}" for folder in ("tmp", "new", "cur") for run in listing[folder]]


def spool_counts(spool: Path) -> dict[str, int]:
    return {folder: len(runs) for folder, runs in spool_listing(spool).items()}


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
                status = read_json(spool / "runs" / run / "status.json")
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
            final = sum(1 for r in self.run_ids if states.get(r) in FINAL_STATE_TYPES)
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
            final = sum(1 for r in self.run_ids if states.get(r) in FINAL_STATE_TYPES)
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


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="kinds: " + "; ".join(f"{k} ({v})" for k, v in KINDS.items()),
    )
    parser.add_argument("--runs", type=int, default=300, help="flow runs (default 300)")
    parser.add_argument("--workers", type=int, default=4, help="agent workers (default 4)")
    parser.add_argument(
        "--kill-every",
        type=float,
        nargs=2,
        default=[3.0, 10.0],
        metavar=("MIN", "MAX"),
        help="seconds between actions, drawn uniformly (default 3 10)",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="comma-separated actions to draw from (default: all, see below)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--flow-seconds",
        type=float,
        nargs=2,
        default=[0.0, 2.0],
        metavar=("MIN", "MAX"),
        help="how long each flow sleeps after recording itself (default 0 2)",
    )
    parser.add_argument("--bursts", type=int, default=4, help="bursts of runs (default 4)")
    parser.add_argument(
        "--burst-gap",
        type=float,
        nargs=2,
        default=[5.0, 30.0],
        metavar=("MIN", "MAX"),
        help="seconds between bursts (default 5 30)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds after the last burst for every run to be final (default 180 + 3/run)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=360.0,
        help="then, with no more kills, seconds for the rest to end (default 360: a worker "
        "the kills put in crash-loop backoff waits up to 300 s before taking runs)",
    )
    parser.add_argument(
        "--api-url",
        default=None,
        help="use this Prefect API (credential from PREFECT_API_AUTH_STRING or "
        "PREFECT_API_KEY) instead of starting a server",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (kept on failure)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1 or args.bursts < 1:
        parser.error("--runs, --workers and --bursts must be at least 1")
    if args.settle < 0:
        parser.error("--settle: must be 0 or more")
    for name in ("kill_every", "flow_seconds", "burst_gap"):
        low, high = getattr(args, name)
        if low < 0 or high < low:
            parser.error(f"--{name.replace('_', '-')}: need 0 <= MIN <= MAX")
    if args.kill_every[1] <= 0:
        parser.error("--kill-every: MAX must be above 0")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := [k for k in args.kinds if k not in KINDS]:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; known: {', '.join(KINDS)}")
    if not args.kinds:
        parser.error("--kinds: give at least one")
    if args.timeout is None:
        args.timeout = 180.0 + 3.0 * args.runs
    return args


@contextlib.contextmanager
def server_settings(settings: Mapping[str, str]) -> Iterator[None]:
    """Set these in our environment while the server starts (it inherits it)."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    tmp = Path(tempfile.mkdtemp(prefix="agent-soak-"))
    log(f"seed {seed}; working in {tmp}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_"))}
    procs = Procs(base_env, tmp)
    server = contextlib.ExitStack()
    code = 1
    interrupted = False
    sup: Supervisor | None = None
    soak: Soak | None = None
    try:
        with terminate_as_interrupt():
            if args.api_url:
                url = args.api_url.rstrip("/")
                client = demo.client_from_env(url)
                secret = client.settings.secret_env()
            else:
                auth = f"soak:{secrets.token_hex(12)}"
                home = tmp / "server-home"
                home.mkdir()
                log("starting a Prefect server")
                with server_settings(SERVER_SETTINGS):
                    url = server.enter_context(prefect_server(home, auth))
                client = PrefectClient(ApiSettings(url=url, auth_string=auth))
                secret = {"PREFECT_API_AUTH_STRING": auth}
            (tmp / "prefect-home").mkdir()
            (tmp / "run").mkdir()
            pool = f"soak-{uuid.uuid4().hex[:8]}"
            env = {
                "PREFECT_API_URL": url,
                **secret,
                "PREFECT_HOME": str(tmp / "prefect-home"),
                "AGENT_POOL": pool,
                "AGENT_WORKERS": str(args.workers),
                "AGENT_SPOOL_DIR": str(tmp / "spool"),
                "AGENT_RUN_DIR": str(tmp / "run"),
                "AGENT_ADDRESS": f"http://127.0.0.1:{free_port()}",
                "AGENT_LOG_LEVEL": "DEBUG",
            }
            soak = Soak(args, tmp, procs, client, env, seed, t0)
            soak.mark("server up")
            sup = Supervisor(procs, tmp / "run", env)
            code = soak.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; cleaning up")
        code = 130
    except Exception:
        log(f"the soak could not go on (no verdict on the agent):\n{traceback.format_exc()}")
        code = 3
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        if sup is not None and not interrupted:
            with contextlib.suppress(Exception):
                sup.shutdown()
        procs.close()
        server.close()
        if left := tagged_pids(procs.tag):
            log(f"warning: processes still running after clean-up: {left}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        anomalies = soak.anomalies if soak else []
        for anomaly in anomalies:
            log(f"anomaly (not in the verdict): {anomaly}")
        if args.keep or code not in (0, 130) or anomalies:  # evidence is kept
            log(f"kept {tmp} (kills.jsonl, executions.txt, report.json, spool/, run/ logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
