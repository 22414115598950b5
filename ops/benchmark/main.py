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
import tempfile
from pathlib import Path

from agent import __version__ as agent_version
from agent.api.client import PrefectClient
from agent.settings.config import ApiSettings
from ops.benchmark.console import log, terminate_as_interrupt
from ops.benchmark.contenders import scenario_agent, scenario_prefect
from ops.benchmark.measure import AUTH, World
from ops.benchmark.report import print_report
from ops.benchmark.results import Result
from tests.integration.harness import Procs, prefect_server, tagged_pids


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
