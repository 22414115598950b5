"""Fleet test: K hosts of local-agent on one Prefect server (PostgreSQL), N short runs in
bursts, whole hosts killed at random meanwhile (some for good), the server restarted
once; then the figures.

    python -m ops.fleet [--hosts 8] [--runs 1000] [--backend postgresql|sqlite]
                        [--workers 2] [--bursts 5] [--burst-gap 10 40]
                        [--kill-every 20 60] [--dead-for-good N] [--restricted 0.1]
                        [--flow-seconds 0 1] [--idle 60] [--timeout S] [--settle S]
                        [--seed N] [--json FILE] [--keep]

(from the repository's root, as root: each host runs under ``unshare --uts`` with its own
host name). See ops/fleet.md.

Exit status: 0 when runs lost, executed twice, not final and ended wrongly are all 0,
at least one host was killed and the server was restarted; 1 otherwise; 3 when the
fleet itself could not go on (no verdict); 130 when interrupted. Every process it started
(PostgreSQL, the server, every host's supervisord and everything under it) is killed by
pid in the end, whatever happened; the temp dir is kept on 1 and 3 or with --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.api.client import PrefectClient
from agent.settings.config import ApiSettings
from ops.benchmark.console import log, terminate_as_interrupt
from ops.fleet.hosts import Host, unshare_works
from ops.fleet.orchestration import Fleet
from ops.fleet.sampler import Sampler
from ops.soak.main import SERVER_SETTINGS, server_settings
from tests.integration.harness import PrefectServer, free_port
from tests.integration.postgres import Cluster, postgres_cluster

SERVER_START_TIMEOUT = 300.0  # migrations on a fresh PostgreSQL database, 2 busy cores


def postmaster_of(cluster: Cluster) -> Callable[[], int | None]:
    def read() -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((cluster.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    return read


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ops.fleet", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--hosts", type=int, default=8, help="hosts (default 8)")
    p.add_argument("--runs", type=int, default=1000, help="flow runs (default 1000)")
    p.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--workers", type=int, default=2, help="workers per host (default 2)")
    p.add_argument("--bursts", type=int, default=5, help="bursts of runs (default 5)")
    p.add_argument(
        "--burst-gap",
        type=float,
        nargs=2,
        default=[10.0, 40.0],
        metavar=("MIN", "MAX"),
        help="seconds between bursts (default 10 40)",
    )
    p.add_argument(
        "--kill-every",
        type=float,
        nargs=2,
        default=[20.0, 60.0],
        metavar=("MIN", "MAX"),
        help="seconds between host kills (default 20 60)",
    )
    p.add_argument(
        "--dead-for-good",
        type=int,
        default=None,
        help="hosts killed for good (default: a quarter, at least 1; 0 with 1 host)",
    )
    p.add_argument(
        "--restricted",
        type=float,
        default=0.1,
        help="share of runs restricted to one host by labels (default 0.1)",
    )
    p.add_argument(
        "--flow-seconds",
        type=float,
        nargs=2,
        default=[0.0, 1.0],
        metavar=("MIN", "MAX"),
        help="how long each flow sleeps (default 0 1)",
    )
    p.add_argument("--reap-after", default="30s", help="the hosts' --reap-after (default 30s)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat seconds (default 5)")
    p.add_argument(
        "--idle",
        type=float,
        default=60.0,
        help="quiet seconds before the first burst and after the end (default 60)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds after the last burst for every run to be final (default 600 + 3/run)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=360.0,
        help="then, with no more kills, seconds for the rest (default 360)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (kept on failure)")
    args = p.parse_args(argv)
    if min(args.hosts, args.runs, args.workers, args.bursts) < 1:
        p.error("--hosts, --runs, --workers and --bursts must be at least 1")
    for name in ("kill_every", "flow_seconds", "burst_gap"):
        low, high = getattr(args, name)
        if low < 0 or high < low:
            p.error(f"--{name.replace('_', '-')}: need 0 <= MIN <= MAX")
    if args.dead_for_good is None:
        args.dead_for_good = max(1, args.hosts // 4) if args.hosts > 1 else 0
    if not 0 <= args.dead_for_good < args.hosts:
        p.error("--dead-for-good: from 0 to --hosts - 1")
    if not 0 <= args.restricted <= 1:
        p.error("--restricted: a share from 0 to 1")
    if args.timeout is None:
        args.timeout = 600.0 + 3.0 * args.runs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    tmp = Path(tempfile.mkdtemp(prefix="agent-fleet-"))
    log(f"seed {seed}; working in {tmp}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_"))}
    stack = contextlib.ExitStack()
    hosts: list[Host] = []
    server: PrefectServer | None = None
    code, interrupted = 1, False
    try:
        with terminate_as_interrupt():
            if not unshare_works():
                raise RuntimeError("`unshare --uts` does not work here (run as root)")
            database = None
            cluster: Cluster | None = None
            if args.backend == "postgresql":
                log("starting PostgreSQL")
                cluster = stack.enter_context(postgres_cluster())
                database = cluster.create_database("prefect_fleet")
            auth = f"fleet:{secrets.token_hex(12)}"
            (tmp / "server-home").mkdir()
            server = PrefectServer(tmp / "server-home", auth, database=database)

            def start_server() -> None:
                assert server is not None
                with server_settings(SERVER_SETTINGS):
                    server.start(timeout=SERVER_START_TIMEOUT)

            def restart_server() -> None:
                assert server is not None
                server.stop()
                start_server()

            log(f"starting a Prefect server ({args.backend})")
            start_server()
            client = PrefectClient(ApiSettings(url=server.url, auth_string=auth))
            pool = f"fleet-{uuid.uuid4().hex[:8]}"
            agent_env = {
                "PREFECT_API_URL": server.url,
                "PREFECT_API_AUTH_STRING": auth,
                "AGENT_POOL": pool,
                "AGENT_REAP_AFTER": args.reap_after,
                "AGENT_HEARTBEAT_SECONDS": f"{args.heartbeat:g}",
                "AGENT_LOG_LEVEL": "INFO",
            }
            hosts = [
                Host(i, tmp / f"host-{i}", base_env, agent_env, free_port(), args.workers)
                for i in range(1, args.hosts + 1)
            ]
            connections = cluster.connections if cluster is not None else None
            postmaster = postmaster_of(cluster) if cluster is not None else None
            sampler = Sampler(hosts, server, connections, postmaster)
            fleet = Fleet(args, tmp, client, server, hosts, sampler, restart_server, seed, t0)
            code = fleet.run(pool)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; cleaning up")
        code = 130
    except Exception:
        log(f"the fleet could not go on (no verdict):\n{traceback.format_exc()}")
        code = 3
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        if not interrupted:
            for host in hosts:
                host.shutdown()
        left = [pid for host in hosts for pid in host.close()]
        if server is not None:
            server.stop()
        stack.close()  # PostgreSQL
        if left:
            log(f"warning: processes still running after clean-up: {left}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep or code not in (0, 130):
            log(f"kept {tmp} (report.json, executions.txt, host-*/ spools and logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code
