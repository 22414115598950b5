"""Benchmark local-agent (warm and cold launch) against Prefect's own process worker and
against a floor (no agent: claim, then a cold engine), in one run, on one Prefect server
and one machine.

    python -m ops.benchmark [--runs 20] [--concurrency 2,4] [--sides floor,warm,cold,prefect]
                            [--parts api,rss,idle,schedule,cancel,burst] [--keep] ...

(from the repository's root; see ops/benchmark.md for every figure and option)

All sides are started (each with its own pool and a counting proxy in front of the
server) and the parts run one after another: the sides idle together (API requests per
minute, RSS per process role); ad-hoc runs after idling; a 30 s schedule; cancellations;
bursts at each concurrency, each side in turn, the floor first. Exit 0 when every run
that should have completed did, exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent import __version__ as agent_version
from agent.api.client import PrefectClient
from agent.settings.config import ApiSettings
from ops.benchmark import phases
from ops.benchmark.cancel import cancellations
from ops.benchmark.console import log, terminate_as_interrupt
from ops.benchmark.contenders import PrefectSide, Side, make_side
from ops.benchmark.measure import AUTH, World
from ops.benchmark.report import print_report
from ops.soak.main import SERVER_SETTINGS, server_settings
from tests.integration.harness import PrefectServer, Procs, tagged_pids
from tests.integration.postgres import postgres_cluster

SIDES = ("floor", "warm", "cold", "prefect")
PARTS = ("api", "rss", "idle", "schedule", "cancel", "burst")
RET_OK, RET_RUNS_FAILED, RET_INTERRUPTED = 0, 1, 130
CLIENT_PATIENCE = 120.0  # seconds the benchmark's own API calls are retried
SERVER_START_TIMEOUT = 300.0  # migrations on a fresh PostgreSQL database, 2 busy cores


def machine() -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, load average {load}",
        f"Python {platform.python_version()}, prefect "
        f"{importlib.metadata.version('prefect')}, local-agent {agent_version}",
    ]


def choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        picked = [x.strip() for x in text.split(",") if x.strip()]
        if not picked or any(x not in allowed for x in picked):
            raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(allowed)}")
        return [x for x in allowed if x in picked]  # in the order they run

    return parse


def numbers(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers, such as 2,4") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("each concurrency must be at least 1")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.benchmark",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add = parser.add_argument
    add("--runs", type=int, default=20, help="flow runs per burst (default 20)")
    add(
        "--concurrency",
        type=numbers,
        default=[2, 4],
        help="burst concurrencies, e.g. 2,4 (default); the other parts run at the first",
    )
    add(
        "--sides",
        type=choices(SIDES),
        default=list(SIDES),
        help=f"which sides run (default {','.join(SIDES)})",
    )
    add(
        "--parts",
        type=choices(PARTS),
        default=list(PARTS),
        help=f"which parts run (default {','.join(PARTS)}; api and rss share the idle window)",
    )
    add(
        "--idle",
        type=float,
        default=120.0,
        help="seconds of the idle window (default 120; API counted after the first 35)",
    )
    add("--pickups", type=int, default=5, help="idle ad-hoc runs per side (default 5)")
    add("--scheduled", type=int, default=3, help="scheduled runs per side (default 3)")
    add(
        "--cancel-rounds",
        type=int,
        default=2,
        help="cancellation rounds per side: C running + 1 waiting each (default 2)",
    )
    add(
        "--prefect-query-seconds",
        type=float,
        default=None,
        help="PREFECT_WORKER_QUERY_SECONDS for Prefect's worker (default: Prefect's own)",
    )
    add(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for a part's runs (default 60 + 15 per burst run)",
    )
    add(
        "--backend",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="the Prefect server's database (default postgresql: SQLite's lock stalls "
        "the whole server for up to a minute on a busy machine)",
    )
    add("--keep", action="store_true", help="keep the temp dir (logs, results.json)")
    args = parser.parse_args(argv)
    if min(args.runs, args.pickups, args.scheduled, args.cancel_rounds) < 1:
        parser.error("--runs, --pickups, --scheduled and --cancel-rounds must be at least 1")
    if args.timeout is None:
        args.timeout = 60.0 + 15.0 * args.runs
    return args


class Run:
    """One benchmark: the sides and the parts in order. A part that fails on one side is
    noted in that side's results and the benchmark goes on; a side that cannot start
    sits out the parts that need it."""

    def __init__(self, world: World, sides: list[Side]) -> None:
        self.world, self.sides = world, sides
        self.broken: set[str] = set()
        self.failed = False  # some part failed somewhere
        self.quiet_since = time.time()  # when the last run of any part ended

    def attempt(self, side: Side, what: str, step: Callable[[], object]) -> bool:
        if side.key in self.broken:
            return False
        try:
            step()
            return True
        except Exception as exc:
            self.failed = True
            log(f"{side.result.name}: {what} failed: {exc!r}")
            side.result.notes.append(f"{what} failed: {exc!r}"[:500])
            return False

    def start(self, side: Side, concurrency: int) -> None:
        if not self.attempt(side, "start", lambda: side.ensure(concurrency)):
            self.broken.add(side.key)

    def workers(self) -> list[Side]:
        """The sides with a worker of their own (not the floor), that are up."""
        return [s for s in self.sides if s.key != "floor" and s.key not in self.broken]

    def execute(self, args: argparse.Namespace) -> None:
        first = args.concurrency[0]
        parts = set(args.parts)
        if parts - {"burst"}:
            for side in self.sides:
                if side.key != "floor":
                    self.start(side, first)
            self.quiet_since = time.time()
        if parts & {"api", "rss"}:
            phases.idle_window(self.workers(), args.idle)
        if "idle" in parts:
            self.together("pickups", lambda: phases.pickups(
                self.world, self.workers(), args.pickups, self.quiet_since))  # fmt: skip
        if "schedule" in parts:
            self.together("schedule", lambda: phases.schedule(
                self.world, self.workers(), args.scheduled))  # fmt: skip
        if "cancel" in parts:
            for side in self.workers():
                cancel = functools.partial(
                    cancellations, self.world, side, args.cancel_rounds, side.concurrency
                )
                self.attempt(side, "cancel", cancel)
        if "burst" in parts:
            for c in args.concurrency:
                for side in self.sides:
                    self.start(side, c)
                    self.attempt(side, f"burst C={c}", functools.partial(self.burst, side, c))

    def together(self, what: str, step: Callable[[], object]) -> None:
        """A part that runs every side at once: its failure is noted on each."""
        try:
            step()
        except Exception as exc:
            self.failed = True
            log(f"{what} failed: {exc!r}")
            for side in self.workers():
                side.result.notes.append(f"{what} failed: {exc!r}"[:500])
        self.quiet_since = time.time()

    def burst(self, side: Side, concurrency: int) -> None:
        side.result.bursts[concurrency] = phases.burst(self.world, side, concurrency)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    log(f"working in {tmp}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_"))}
    procs = Procs(base_env, tmp)
    sides: list[Side] = []
    server = contextlib.ExitStack()
    ok = False
    try:
        with terminate_as_interrupt():
            home = tmp / "server-home"
            home.mkdir()
            database = None
            if args.backend == "postgresql":
                log("starting PostgreSQL")
                cluster = server.enter_context(postgres_cluster())
                database = cluster.create_database("prefect_bench")
            log(f"starting the Prefect server ({args.backend})")
            api_server = PrefectServer(home, AUTH, database=database)
            server.callback(api_server.stop)
            with server_settings(SERVER_SETTINGS):
                url = api_server.start(timeout=SERVER_START_TIMEOUT)
            # Patient: on a shared machine the SQLite server can stall for many seconds.
            settings = ApiSettings(url=url, auth_string=AUTH, retry_deadline=CLIENT_PATIENCE)
            world = World(url, PrefectClient(settings), procs, tmp, args)
            about = machine()
            about.append(f"Prefect server on {args.backend}, late-runs service off (as ops.soak)")
            sides = [make_side(world, key) for key in args.sides]
            run = Run(world, sides)
            run.execute(args)
            about.append(
                "load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
            )
            results = {s.key: s.result for s in sides}
            prefect = next((s for s in sides if isinstance(s, PrefectSide)), None)
            print_report(results, args, about, prefect is not None and prefect.at_defaults)
            (tmp / "results.json").write_text(
                json.dumps([r.as_json() for r in results.values()], indent=1, default=str)
            )
            ok = not run.failed and all(r.ok() for r in results.values())
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return RET_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        for side in sides:
            with contextlib.suppress(Exception):
                side.close()
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
        log("some runs did not complete as they should")
    return RET_OK if ok else RET_RUNS_FAILED
