"""The small duties: backend config, heartbeat, spool probe and outbox delivery."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

from agent import __version__
from agent.core.errors import ApiError, ConfigError
from agent.observe import metrics
from agent.poller.shared import Shared
from agent.settings import backend_config
from agent.spool.locks import write_poller_state

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(self, shared: Shared) -> None:
        self.s = shared
        self._backend: backend_config.BackendSettings | None = None
        # The last probe failed: the sleeping poller probes again every second, so that
        # claims resume as soon as there is space, not at the next idle poll (up to 30 s).
        self.probe_failed = False

    def heartbeat(self) -> None:
        config = self.s.config
        self.s.client.heartbeat(config.pool, config.name, config.heartbeat_seconds)

    def probe_spool(self) -> None:
        error = self.s.spool.probe()
        if error and not self.s.spool_error:
            log.error(
                "spool %s %s: claiming nothing until it is writable", self.s.spool.root, error
            )
        elif self.s.spool_error and not error:
            log.info("spool %s is writable again", self.s.spool.root)
        self.s.spool_error = error
        self.probe_failed = error is not None

    def deliver_outbox(self) -> None:
        """Reports kept while the API was away go before any new claim."""
        if self.s.reporter.outbox.count():
            self.s.reporter.deliver()

    def refresh_backend_config(self) -> None:
        """Read the --agent-config-id variable and apply it if it changed.

        Before the first success nothing is claimed: a missing or malformed variable
        stops the agent (ConfigError), an unreachable API is retried by the loop. Later,
        any error keeps the last good settings.
        """
        s = self.s
        assert s.config.agent_config_id
        first = self._backend is None
        try:
            settings = backend_config.fetch(s.client, s.config.agent_config_id)
        except (ApiError, ConfigError) as exc:
            if first:
                raise
            log.error("agent config: keeping the current settings: %s", exc)
            return
        s.backend_ready = True
        if settings == self._backend:
            return
        new = backend_config.apply(s.base_config, settings)
        if not first and new.name != s.config.name:
            log.warning("agent config: name %r takes effect at the next restart", new.name)
            new = replace(new, name=s.config.name)
        for line in backend_config.describe_changes(s.config, new):
            log.info("agent config %s: %s", s.config.agent_config_id, line)
        self._backend, s.config = settings, new
        publish_info(s)


def publish_info(s: Shared) -> None:
    metrics.INFO.clear()
    metrics.INFO.labels(__version__, s.config.name, s.config.pool).set(1)


def write_state(s: Shared, started_at: float) -> None:
    """For `agent status`: what this poller is and when it last polled."""
    config = s.config
    state: dict[str, object] = {
        "pid": os.getpid(),
        "name": config.name,
        "pool": config.pool,
        "labels": sorted(config.labels),
        "work_queues": list(config.work_queues),
        "hostname": config.hostname,
        "version": __version__,
        "started": started_at,
        "last_successful_poll": s.last_success,
        "last_error": s.last_error,
        "api_unavailable_since": s.outage.down_since,
        "outbox_reports": s.reporter.outbox.count(),
        "updated": time.time(),
    }
    try:
        write_poller_state(s.spool.root, state)
    except OSError as exc:  # a full disk shows in health already
        log.debug("cannot write poller state: %s", exc)
