"""Wiring: build each process's parts from its config and run it."""

from __future__ import annotations

import logging
import os

from agent import metrics
from agent.api import PrefectClient
from agent.config import PollerConfig, WorkerConfig
from agent.errors import ConfigError
from agent.httpd import AgentHTTPServer
from agent.launcher import ShimLauncher
from agent.poller import Poller
from agent.registry import Registry
from agent.spool import Spool, lock_poller
from agent.supervision import start_group
from agent.worker import Worker

log = logging.getLogger(__name__)


def run_poller(config: PollerConfig) -> int:
    spool = Spool(config.spool_dir)
    spool.ensure()
    lock_fd = lock_poller(spool.root)
    registry = Registry(spool.root)
    poller = Poller(config, PrefectClient(config.api), spool, registry)
    poller.install_signal_handlers()
    server = None
    if config.address:
        scrape = metrics.ScrapeTimeCollector(spool.depth, registry.counts)
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
    try:
        return poller.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        os.close(lock_fd)


def run_worker(config: WorkerConfig) -> int:
    spool = Spool(config.spool_dir)
    worker = Worker(
        config,
        PrefectClient(config.api),
        spool,
        Registry(spool.root),
        ShimLauncher(config.flow_log_max_bytes),
    )
    worker.install_signal_handlers()
    return worker.run()
