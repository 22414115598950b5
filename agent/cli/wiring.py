"""Wiring of the poller: build its parts from its config and run it. The worker's is
agent/cli/worker_wiring.py, which imports nothing of the poller's (workers stay small)."""

from __future__ import annotations

import logging
import os

from agent.api.client import PrefectClient
from agent.cli import supervised
from agent.cli.worker_wiring import run_logs
from agent.core.errors import ApiError, ConfigError
from agent.observe import exposition, metrics
from agent.observe.httpd import AgentHTTPServer
from agent.poller.loop import Poller
from agent.poller.supervision import start_group
from agent.settings import backend_config
from agent.settings.config import PollerConfig
from agent.spool.locks import POLLER_LOCK, POLLER_STATE, POLLER_WAITING, lock_poller
from agent.spool.moves import Spool
from agent.spool.registry import Registry

log = logging.getLogger(__name__)


def resolve_backend_config(config: PollerConfig) -> tuple[PollerConfig, set[str]]:
    """For --print-config: the config with the backend variable applied, and what it set."""
    if not config.agent_config_id:
        return config, set()
    try:
        settings = backend_config.fetch(PrefectClient(config.api), config.agent_config_id)
    except ApiError as exc:
        raise ConfigError(f"cannot read agent config {config.agent_config_id!r}: {exc}") from exc
    return backend_config.apply(config, settings), backend_config.defined(settings)


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
    if exposition.reset_if_whole_agent_starts(os.getpid()):
        log.info("metrics: the whole agent is starting; counters start from zero")
    registry = Registry(spool.root)
    client = PrefectClient(config.api)
    # The backend config has no cloud-logs key, so whether to ship is known now.
    runlogs = run_logs(config.api, config.cloud_logs, spool, "poller")
    poller = Poller(config, client, spool, registry, runlogs)
    poller.install_signal_handlers()
    server = None
    if config.address:
        outbox = poller.s.reporter.outbox
        scrape = exposition.ScrapeTimeCollector(spool.depth, registry.counts, outbox.count)
        try:
            server = AgentHTTPServer(
                config.address, poller.health, poller.poke, lambda: exposition.render(scrape)
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
