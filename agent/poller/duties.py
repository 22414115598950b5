"""The poller's duties, in the order each round runs those that are due: backend config,
work pool, heartbeat, spool probe, retention, outbox delivery, settle write-ahead specs,
labels, stranded runs, lost hosts, cancellations, claim."""

from __future__ import annotations

import time

from agent.core import reap
from agent.poller.cancellation import Cancellations
from agent.poller.claiming import Claiming
from agent.poller.duty import Duty
from agent.poller.reaper import Reaper
from agent.poller.retention import RETAIN, Retention
from agent.poller.settle import Settle
from agent.poller.shared import Shared
from agent.poller.stranded import Stranded
from agent.poller.upkeep import Upkeep
from agent.settings import defaults


def duties(
    s: Shared,
    claiming: Claiming,
    upkeep: Upkeep,
    stranded: Stranded,
    cancellations: Cancellations,
) -> list[Duty]:
    config = s.config
    return [
        Duty(
            "backend config",
            upkeep.refresh_backend_config,
            every=config.agent_config_refresh,
            enabled=lambda: bool(s.config.agent_config_id),
        ),
        # Once, then never again: the pool must exist before its worker beats.
        Duty("work pool", claiming.setup_pool, every=float("inf")),
        Duty("heartbeat", upkeep.heartbeat, every=config.heartbeat_seconds),
        Duty("spool probe", upkeep.probe_spool, needs_api=False),
        Duty("retention", Retention(s.spool, config.retention).run, RETAIN, needs_api=False),
        Duty("outbox delivery", upkeep.deliver_outbox),
        Duty("settle write-ahead specs", Settle(claiming).run),
        Duty(
            "labels",
            claiming.relabel,
            retry=defaults.LABEL_RETRY_SECONDS,
            enabled=lambda: bool(s.unlabelled),
        ),
        Duty(
            "stranded runs",
            stranded.run,
            every=defaults.STRANDED_CHECK_SECONDS,
            retry=defaults.STRANDED_RETRY_SECONDS,
        ),
        Duty(
            "lost hosts",
            Reaper(s).run,
            every=reap.check_every(config.reap_after),
            retry=defaults.REAP_CHECK_SECONDS,
            enabled=lambda: s.config.reap_after > 0,
            # One period after start: this agent's own heartbeat goes first.
            next_at=time.monotonic() + defaults.REAP_CHECK_SECONDS,
        ),
        Duty(
            "cancellations",
            cancellations.run,
            every=defaults.CANCEL_CHECK_SECONDS,
            retry=defaults.CANCEL_CHECK_SECONDS,
        ),
        Duty("claim", claiming.poll),
    ]
