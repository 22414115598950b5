"""The chaos of a soak: a thread that, every MIN..MAX seconds, does one of these to a
process of the soak's agent (only ever to processes the soak started; every action is
logged with its time, targets and runs):

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
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import select
import signal
import struct
import threading
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops.benchmark.console import log
from ops.benchmark.sampling import Proc, children, process_table
from tests.integration.harness import TAG, Supervisor, tagged_pids

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
PUBLISH_WAIT_SECONDS = 20.0  # poller-kill9-publish: how long it waits for a publish


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
    """The flow run id of a shim, from its ``--run-dir .../runs/<id>/<claim>``."""
    argv = read_argv(pid)
    if "agent.worker.shim" not in argv or "--run-dir" not in argv[:-1]:
        return None
    return Path(argv[argv.index("--run-dir") + 1]).parent.name


WARM = "local-agent warm"  # in the warm process's command line (agent/worker/forkserver.py)


def find_shims(table: dict[int, Proc], mine: set[int]) -> dict[int, str]:
    """Our per-run shims, pid -> run id. Cold ones by their command line. Warm ones are
    forked by a warm process and carry the warm process's command line and the run id
    in their environment, as their flow does; a flow's parent is such a shim."""
    shims: dict[int, str] = {}
    for proc in table.values():
        if proc.pid not in mine:
            continue
        if run := shim_run(proc.pid):
            shims[proc.pid] = run
        elif WARM in proc.cmdline and (run := _warm_run(proc.pid)):
            parent = table.get(proc.ppid)
            if parent is None or WARM not in parent.cmdline or not _warm_run(parent.pid):
                shims[proc.pid] = run
    return shims


def _warm_run(pid: int) -> str:
    """The run id a warm shim or flow carries; "" for the warm process itself."""
    run = read_environ(pid).get("PREFECT__FLOW_RUN_ID", "")
    return "" if run.strip("0") == "" else run


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
        shims = find_shims(table, mine)
        busy: dict[str, tuple[int, str]] = {}
        for name, pid in workers.items():
            below = children(table, pid)  # a cold shim, or the warm process and its shim
            for child in [
                *below,
                *(c for b in below if WARM in b.cmdline for c in children(table, b.pid)),
            ]:
                if child.pid in shims:
                    busy[name] = (child.pid, shims[child.pid])
        flows: dict[int, str] = {}
        for shim in shims:
            for flow in children(table, shim):
                if flow.pid in mine:
                    flows[flow.pid] = read_environ(flow.pid).get("PREFECT__FLOW_RUN_ID", "?")
        stuck = [name for name, state in states.items() if state in ("FATAL", "EXITED", "STOPPED")]
        return Snapshot(poller, workers, busy, flows, stuck, states)

    def flow_processes(self) -> list[Proc]:
        mine = set(tagged_pids(self.tag))
        table = process_table()
        shims = find_shims(table, mine)
        return [p for p in table.values() if p.pid in mine and p.ppid in shims]


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
