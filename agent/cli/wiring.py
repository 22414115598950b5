"""Wiring: build each process's parts from its config and run it."""

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
from agent.core.errors import ApiError, ConfigError
from agent.observe import metrics
from agent.observe.httpd import AgentHTTPServer
from agent.poller.loop import Poller
from agent.poller.supervision import start_group
from agent.settings import backend_config
from agent.settings.config import ApiSettings, ContainmentConfig, PollerConfig, WorkerConfig
from agent.spool import containment_state
from agent.spool.locks import POLLER_LOCK, POLLER_STATE, POLLER_WAITING, lock_poller
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


def resolve_backend_config(config: PollerConfig) -> tuple[PollerConfig, set[str]]:
    """For --print-config: the config with the backend variable applied, and what it set."""
    if not config.agent_config_id:
        return config, set()
    try:
        settings = backend_config.fetch(PrefectClient(config.api), config.agent_config_id)
    except ApiError as exc:
        raise ConfigError(f"cannot read agent config {config.agent_config_id!r}: {exc}") from exc
    return backend_config.apply(config, settings), backend_config.defined(settings)


def _runlogs(settings: ApiSettings, wanted: bool, spool: Spool, source: str) -> RunLogs:
    if not wanted:
        return NoRunLogs()
    outbox = Outbox(spool.root)

    def spill(lines: list[dict[str, Any]]) -> None:
        outbox.put(logs_report(lines, source))

    # A client of its own: requests sessions are not meant to be shared across threads.
    return ship_to(PrefectClient(settings), RUN_LOGGER, spill=spill)  # started


def run_poller(config: PollerConfig) -> int:
    spool = Spool(config.spool_dir)
    spool.ensure()
    root = spool.root
    # An orphan of a supervisord killed earlier may still hold the lock: wait for it.
    note = root / POLLER_WAITING
    lock = root / POLLER_LOCK
    supervised.wait_while_orphan_holds(
        lock, root / POLLER_STATE, "the poller lock", os.environ, note
    )
    lock_fd = lock_poller(root)
    spool.hold_poller_lock(lock_fd)  # taken again should the spool be deleted
    if metrics.reset_if_whole_agent_starts(os.getpid()):
        log.info("metrics: the whole agent is starting; counters start from zero")
    registry = Registry(spool.root)
    client = PrefectClient(config.api)
    # The backend config has no cloud-logs key, so whether to ship is known now.
    runlogs = _runlogs(config.api, config.cloud_logs, spool, "poller")
    poller = Poller(config, client, spool, registry, runlogs)
    poller.install_signal_handlers()
    server = None
    if config.address:
        outbox = poller.s.reporter.outbox
        scrape = metrics.ScrapeTimeCollector(spool.depth, registry.counts, outbox.count)
        try:
            server = AgentHTTPServer(
                config.address, poller.health, poller.poke, lambda: metrics.render(scrape)
            )
        except OSError as exc:
            host, port = config.address
            raise ConfigError(f"cannot serve at http://{host}:{port}: {exc.strerror}") from exc
        server.start()
        log.info("serving /api/health, /api/poke and /metrics at http://%s:%d", *config.address)
    if config.supervisor_url:
        start_group(config.supervisor_url, config.worker_group)

    def orphaned(reason: str) -> None:
        log.warning("%s: no new claims; exiting", reason)
        poller.stop()

    supervised.watch_parent(os.environ, orphaned)
    try:
        return poller.run()
    finally:
        runlogs.close(timeout=0.5)  # a stopping poller exits within a second
        metrics.mark_process_dead(os.getpid())
        if server is not None:
            server.shutdown()
            server.server_close()
        os.close(lock_fd)


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
    runlogs = _runlogs(config.api, True, spool, f"worker {config.worker_id}")
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
