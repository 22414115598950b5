"""The sides: the floor (the benchmark claims and starts each engine itself), local-agent
under real supervisord (AGENT_LAUNCH=warm and =cold, one side each) and Prefect's process
worker. Each talks to the server through its own counting proxy, has its own pool, and
can be (re)started at a given concurrency and stopped."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from agent.settings import defaults
from examples import demo
from ops.benchmark.console import log
from ops.benchmark.measure import World
from ops.benchmark.proxy import CountingProxy
from ops.benchmark.results import SideResult
from ops.benchmark.sampling import (
    WARM_PARENT,
    Classifier,
    classify_agent,
    classify_prefect,
    process_table,
)
from tests.integration.harness import BIN, Supervisor, free_port, wait_for

NAMES = {"floor": "floor", "warm": "agent warm", "cold": "agent cold", "prefect": "prefect"}
START_TIMEOUT = 120.0
# After a (re)start, before measuring: the new processes' start-up (imports, the warm
# parents importing prefect) must not compete with what is measured next.
SETTLE_SECONDS = 5.0
WARM_TIMEOUT = 30.0


class Side:
    """What every side has; the floor, the agent and Prefect fill in the rest."""

    def __init__(self, world: World, key: str) -> None:
        self.world, self.key = world, key
        self.pool = f"bench-{key}"
        server = urlsplit(world.url)
        self.proxy = CountingProxy((server.hostname or "127.0.0.1", server.port or 80))
        self.proxy.start()
        self.home = world.tmp / key / "prefect-home"
        self.env = world.env(self.home, self.proxy.url())
        self.concurrency = 0  # as started; 0: not running
        self.result = SideResult(key, NAMES[key])
        self.exits: dict[str, float] = {}  # run id -> when its process was seen gone (floor)

    def start(self, concurrency: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.concurrency = 0

    def ensure(self, concurrency: int) -> None:
        """Running at ``concurrency``: (re)started if it is not."""
        if self.concurrency != concurrency:
            self.stop()
            log(f"{self.result.name}: starting at concurrency {concurrency}")
            self.start(concurrency)
            self.concurrency = concurrency
            time.sleep(SETTLE_SECONDS)

    def classifier(self) -> Classifier | None:
        """How to find its processes in the process table; None: it has none."""
        return None

    def drive(self, feed: queue.Queue[str | None], concurrency: int, timeout: float) -> None:
        """During a burst, given the runs as they are created (then None): a worker
        side's worker does the work, so there is nothing to do."""

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.proxy.close()


class FloorSide(Side):
    """No agent: the benchmark claims each run (Pending, as a worker would) and starts
    ``python -m prefect.engine`` for it, cold, C at a time, as soon as a slot frees."""

    def start(self, concurrency: int) -> None:
        demo.ensure_pool(self.world.client, self.pool)  # nobody polls it
        self.result.settings = [
            f"pool {self.pool}, served by nobody: the benchmark claims each run (set_state "
            f"Pending) and runs `{Path(sys.executable).name} -m prefect.engine` for it, "
            "C at a time, with PREFECT__FLOW_RUN_ID, PREFECT_API_URL (its "
            "proxy), PREFECT_API_AUTH_STRING and PREFECT_HOME"
        ]

    def drive(self, feed: queue.Queue[str | None], concurrency: int, timeout: float) -> None:
        waiting: deque[str] = deque()
        running: dict[str, subprocess.Popen[bytes]] = {}
        fed = False
        deadline = time.monotonic() + timeout
        while (not fed or waiting or running) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while True:
                    run_id = feed.get_nowait()
                    if run_id is None:
                        fed = True
                        break
                    waiting.append(run_id)
            for run_id, proc in list(running.items()):
                if proc.poll() is not None:
                    self.exits[run_id] = time.time()
                    del running[run_id]
            while waiting and len(running) < concurrency:
                run_id = waiting.popleft()
                if not self.world.claim(run_id):
                    self.result.notes.append(f"floor: claim of {run_id} refused")
                    continue
                env = {**self.env, "PREFECT__FLOW_RUN_ID": run_id}
                argv = [sys.executable, "-m", "prefect.engine"]
                running[run_id] = self.world.procs.start("floor-engines", argv, env)
            time.sleep(0.01)  # a freed slot is refilled within 10 ms


class AgentSide(Side):
    """local-agent under real supervisord with the repository's supervisord.conf;
    AGENT_LAUNCH is the side's key (warm or cold), AGENT_WORKERS the concurrency."""

    def __init__(self, world: World, key: str) -> None:
        super().__init__(world, key)
        self.run_dir = world.tmp / key / "run"
        self.run_dir.mkdir(parents=True)
        self.spool = world.tmp / key / "spool"
        self.sup: Supervisor | None = None
        self.supervisord_pid = 0

    def start(self, concurrency: int) -> None:
        env = {
            **self.env,
            "AGENT_POOL": self.pool,
            "AGENT_WORKERS": str(concurrency),
            "AGENT_SPOOL_DIR": str(self.spool),
            "AGENT_RUN_DIR": str(self.run_dir),
            "AGENT_ADDRESS": f"http://127.0.0.1:{free_port()}",
            "AGENT_LAUNCH": self.key,
        }
        self.result.settings = [
            f"supervisord -c supervisord.conf; AGENT_LAUNCH={self.key}, AGENT_WORKERS=C, "
            f"pool {self.pool} (local-agent); push wake-ups on (default)",
            f"poll every {defaults.POLL_INTERVAL_MIN:g} s while claiming, doubling to "
            f"{defaults.POLL_INTERVAL_MAX_PUSHED:g} s while idle with the events stream "
            f"({defaults.POLL_INTERVAL_MAX:g} s without); prefetch "
            f"{defaults.PREFETCH_SECONDS:g} s, heartbeat {defaults.HEARTBEAT_SECONDS:g} s",
        ]
        demo.ensure_pool(self.world.client, self.pool)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "supervisor.sock").unlink()  # a stale one would pass the wait
        sup = self.sup = Supervisor(self.world.procs, self.run_dir, env)
        began = time.time()
        sup.start()
        pidfile = self.run_dir / "supervisord.pid"
        wait_for(pidfile.exists, 10, "supervisord's pid file")  # written after the socket
        self.supervisord_pid = int(pidfile.read_text())
        started = sup.ctl("start", "agent")
        if started.returncode != 0:
            raise RuntimeError(f"supervisorctl start agent: {started.stdout}{started.stderr}")
        running = ["RUNNING"] * (concurrency + 1)
        wait_for(lambda: list(sup.status().values()) == running, 60, "agent and workers")
        wait_for(
            lambda: self.world.heartbeat_since(self.pool, began), 60, f"{self.key}'s heartbeat"
        )
        if self.key == "warm":
            self.wait_warm(concurrency)

    def warm_parents(self) -> int:
        return len(classify_agent(self.supervisord_pid)(process_table())[WARM_PARENT])

    def wait_warm(self, concurrency: int) -> None:
        """Each worker keeps a warm parent: wait until all are there. An agent without
        warm launch ignores AGENT_LAUNCH: say so, and go on (it runs cold)."""
        deadline = time.monotonic() + WARM_TIMEOUT
        while self.warm_parents() < concurrency and time.monotonic() < deadline:
            time.sleep(0.2)
        if (seen := self.warm_parents()) < concurrency:
            note = (f"{seen} warm parent processes for {concurrency} workers after "
                    f"{WARM_TIMEOUT:.0f} s: AGENT_LAUNCH=warm had no (full) effect")  # fmt: skip
            log(f"{self.result.name}: {note}")
            self.result.notes.append(note)

    def stop(self) -> None:
        super().stop()
        if self.sup is not None:
            sup, self.sup = self.sup, None
            sup.shutdown()

    def classifier(self) -> Classifier | None:
        return classify_agent(self.supervisord_pid) if self.supervisord_pid else None


def prefect_worker_defaults(env: dict[str, str]) -> dict[str, str]:
    """The worker settings Prefect uses with nothing set (read from prefect itself)."""
    code = (
        "from prefect.settings import get_current_settings as g; w = g().worker; "
        "print(w.query_seconds, w.prefetch_seconds, w.heartbeat_seconds)"
    )
    clean = {k: v for k, v in env.items() if not k.startswith("PREFECT_WORKER_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60
    )
    words = out.stdout.split() if out.returncode == 0 else []
    query, prefetch, heartbeat = words if len(words) == 3 else ["?"] * 3
    return {"query": query, "prefetch": prefetch, "heartbeat": heartbeat}


class PrefectSide(Side):
    """``prefect worker start --type process --limit C``, at Prefect's defaults unless
    --prefect-query-seconds is given."""

    def __init__(self, world: World, key: str) -> None:
        super().__init__(world, key)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pool_made = False
        query = world.args.prefect_query_seconds
        if query is not None:
            self.env["PREFECT_WORKER_QUERY_SECONDS"] = f"{query:g}"
        self.found = prefect_worker_defaults({**world.procs.env, **self.env})

    @property
    def at_defaults(self) -> bool:
        return "PREFECT_WORKER_QUERY_SECONDS" not in self.env

    def start(self, concurrency: int) -> None:
        found, env = self.found, self.env
        query = env.get("PREFECT_WORKER_QUERY_SECONDS")
        self.result.settings = [
            f"prefect worker start --pool {self.pool} --type process --limit C",
            (f"PREFECT_WORKER_QUERY_SECONDS={query} (set; default {found['query']} s)"
             if query else f"Prefect's defaults: query every {found['query']} s")
            + f", prefetch {found['prefetch']} s, heartbeat {found['heartbeat']} s",
        ]  # fmt: skip
        if not self.pool_made:
            argv = [str(BIN / "prefect"), "work-pool", "create", self.pool, "--type", "process"]
            made = self.world.procs.run(argv, env, timeout=120)
            if made.returncode != 0:
                raise RuntimeError(f"cannot create pool {self.pool}: {made.stdout}{made.stderr}")
            self.pool_made = True
        argv = [str(BIN / "prefect"), "worker", "start", "--pool", self.pool, "--type", "process"]
        argv += ["--limit", str(concurrency), "--name", "bench-prefect-worker"]
        began = time.time()
        proc = self.proc = self.world.procs.start("prefect-worker", argv, env)

        def up() -> bool:
            if proc.poll() is not None:
                tail = self.world.procs.log("prefect-worker")[-2000:]
                raise RuntimeError(f"prefect worker exited with {proc.returncode}:\n{tail}")
            return self.world.heartbeat_since(self.pool, began)

        wait_for(up, START_TIMEOUT, "Prefect's worker")

    def stop(self) -> None:
        super().stop()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def classifier(self) -> Classifier | None:
        return classify_prefect(self.proc.pid) if self.proc else None


def make_side(world: World, key: str) -> Side:
    kinds: dict[str, type[Side]] = {
        "floor": FloorSide, "warm": AgentSide, "cold": AgentSide, "prefect": PrefectSide
    }  # fmt: skip
    return kinds[key](world, key)
