"""Soak test: a few hundred short flow runs through local-agent under real supervisord,
while agent processes are killed at random times. Then it counts what went wrong.

    python -m ops.soak [--runs 300] [--workers 4] [--kill-every 3 10] [--seed N]
                       [--flow-seconds 0 2] [--bursts 4] [--burst-gap 5 30]
                       [--kinds KIND,...] [--timeout S] [--settle S] [--api-url URL]
                       [--json FILE] [--keep]

(from the repository's root). Without --api-url it starts its own Prefect server (own
PREFECT_HOME in a temp dir, a free loopback port, a random auth string). With --api-url
it uses that server, with the credential from PREFECT_API_AUTH_STRING or PREFECT_API_KEY
if it needs one.

It creates a work pool of its own and a deployment of ``ops/soak_flow.py:soak``, a flow
that first appends ``<flow run id> <pid> <time>`` to an executions file (one O_APPEND
write: one line per execution) and then sleeps ``--flow-seconds``. It starts supervisord
with the repository's supervisord.conf (``--workers`` workers), ``supervisorctl start
agent``, creates the runs in ``--bursts`` bursts, and meanwhile, every ``--kill-every``
MIN..MAX seconds, kills or restarts one of that agent's processes (``ops.soak.chaos``).

When every run is final (or --timeout seconds after the last burst) the killing stops.
In a quiet period of up to --settle seconds the soak waits for every run to be final and
the spool to drain (a worker killed often waits in the agent's crash-loop backoff, up to
300 s, before it takes runs again); then it reads each run's state from Prefect and the
executions file, and counts runs lost, executed twice, not final and ended wrongly
(``ops.soak.accounting``).

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
import os
import random
import secrets
import shutil
import signal
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from agent.api.client import PrefectClient
from agent.settings.config import ApiSettings
from examples import demo
from ops.benchmark.console import log, terminate_as_interrupt
from ops.soak.chaos import KINDS
from ops.soak.orchestration import Soak
from tests.integration.harness import Procs, Supervisor, free_port, prefect_server, tagged_pids

# The soak's own server does not mark waiting runs Late: with SQLite, that service's
# writes for hundreds of waiting runs fight every other write for the database lock
# (HTTP 503 "database is locked" to the runs' own state changes). Late is a Prefect
# display state of type SCHEDULED: the agent claims such runs the same way.
SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.soak",
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
    parser.add_argument(
        "--launch",
        choices=("warm", "cold"),
        default=None,
        help="the workers' --launch (AGENT_LAUNCH; default: the agent's own default)",
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
                **({"AGENT_LAUNCH": args.launch} if args.launch else {}),
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
