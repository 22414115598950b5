"""The two sides: Prefect's process worker (``prefect worker start``) and local-agent
under real supervisord, each started, measured through one burst and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from agent.settings import defaults
from examples import demo
from ops.benchmark.console import log
from ops.benchmark.measure import World, time_health
from ops.benchmark.results import Result
from ops.benchmark.sampling import Sampler, classify_agent, classify_prefect
from tests.integration.harness import BIN, Supervisor, free_port, wait_for

HEALTH_REQUESTS = 50
SERVER_DOWN_SECONDS = 5.0


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
