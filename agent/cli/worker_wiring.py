"""Wiring of a worker: build its parts from its config and run it.

It imports nothing of the poller's (its loop, events stream, HTTP server or
prometheus_client's exposition): each worker process stays small.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox, logs_report
from agent.api.runlogs import NoRunLogs, RunLogs, ship_to
from agent.cli import supervised
from agent.core.environment import base_env
from agent.settings.config import ApiSettings, ContainmentConfig, WorkerConfig
from agent.spool import containment_state
from agent.spool.moves import Spool
from agent.spool.registry import Registry
from agent.worker import cgroups
from agent.worker.cgroups import NONE_DISABLED
from agent.worker.contain import Contain
from agent.worker.launcher import Launcher, ShimLauncher
from agent.worker.loop import Worker

log = logging.getLogger(__name__)

# The logger name our run log lines carry in Prefect's UI.
RUN_LOGGER = "local-agent"


def run_logs(settings: ApiSettings, wanted: bool, spool: Spool, source: str) -> RunLogs:
    if not wanted:
        return NoRunLogs()
    outbox = Outbox(spool.root)

    def spill(lines: list[dict[str, Any]]) -> None:
        outbox.put(logs_report(lines, source))

    # A client of its own: the shipper's thread never waits on the caller's connection.
    return ship_to(PrefectClient(settings), RUN_LOGGER, spill=spill)  # started


def containment(config: ContainmentConfig, spool_root: Path) -> Contain:
    """The host's containment, made ready, said once, and recorded for `agent status`."""
    found = (
        NONE_DISABLED
        if config.mode == "off"
        else cgroups.prepare(cgroups.detect(config.cgroup_root))
    )
    level = logging.INFO if found.version != "none" or config.mode == "off" else logging.WARNING
    log.log(level, "containment: %s (--containment %s)", found.describe(), config.mode)
    where = [p for p in [found.v2, *found.v1.values()] if p is not None]
    containment_state.record(spool_root, found.version, found.reason, config.mode, where)
    return Contain(config, found)


def launcher(config: WorkerConfig) -> Launcher:
    cold = ShimLauncher(config.flow_log_max_bytes)
    if config.launch != "warm":
        return cold
    from agent.worker.warm import WarmLauncher

    return WarmLauncher(
        cold,
        config.flow_python,
        base_env(os.environ),
        config.warm_recycle_runs,
        config.flow_log_max_bytes,
    )


def run_worker(config: WorkerConfig) -> int:
    spool = Spool(config.spool_dir)
    workers = spool.root / "workers"
    what = f"worker id {config.worker_id!r}"
    lock, state = workers / f"{config.worker_id}.lock", workers / f"{config.worker_id}.json"
    supervised.wait_while_orphan_holds(lock, state, what, os.environ)
    client = PrefectClient(config.api)
    # Whether a run's lines are sent is the spec's choice (the poller's --no-cloud-logs).
    runlogs = run_logs(config.api, True, spool, f"worker {config.worker_id}")
    worker = Worker(
        config,
        client,
        spool,
        Registry(spool.root),
        launcher(config),
        runlogs=runlogs,
        contain=containment(config.containment, spool.root),
    )
    worker.install_signal_handlers()

    def orphaned(reason: str) -> None:
        log.warning("%s: taking no new runs; exiting once the current one is settled", reason)
        worker.stop()

    supervised.watch_parent(os.environ, orphaned)
    try:
        return worker.run()
    finally:
        runlogs.close()
