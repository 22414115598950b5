"""What the poller's duties share: its parts, and the little state they keep between
rounds. Built once by the poller; duties read and write it, health reads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.api.client import PrefectClient
from agent.api.reporter import Reporter
from agent.poller.outage import Outage
from agent.settings.config import PollerConfig
from agent.spool.moves import CUR, NEW, Spool
from agent.spool.registry import BUSY, IDLE, Registry


@dataclass
class Shared:
    # `base_config` is what flags, env and file said; `config` is that with the backend
    # config on top, replaced whole when the variable changes.
    base_config: PollerConfig
    config: PollerConfig
    client: PrefectClient
    spool: Spool
    registry: Registry
    reporter: Reporter
    outage: Outage
    # A test seam, set through configuration: called after a claim is accepted and
    # before its spec is published (tests/integration/test_faults.py exits there).
    after_claim: Callable[[str], None] | None = None
    spool_error: str | None = None
    last_error: str | None = None  # of the last round that failed, for health
    pool_defaults: dict[str, Any] | None = None  # None until the pool is set up
    pool_id: str | None = None  # its uuid, once set up: what the events stream filters on
    backend_ready: bool = False  # the --agent-config-id variable was read (or none)
    last_success: float | None = None  # wall time of the last successful poll
    backlog: bool = False  # eligible runs were left because no worker was free
    claimed: int = 0  # in the last round
    # How far past the prefetch window a poll looks: the loop sets it each round to the
    # idle cap in force, so a run is seen before its window opens however long the sleep.
    lookahead: float = 0.0
    # Wall time at which the earliest run the last poll saw beyond the prefetch window
    # (ours by labels, claimable) is due; the loop wakes for its window. None: none seen.
    next_due: float | None = None
    # Runs claimed whose labels did not land: the labels duty tries them again.
    unlabelled: set[str] = field(default_factory=set)

    def free_slots(self) -> int:
        """Live workers minus runs waiting or running. Counted from the spool rather than
        the workers' idle flags: a worker flags itself busy a moment after it takes a
        spec, and counting it idle then would claim one run too many."""
        counts = self.registry.counts()
        live = counts[IDLE] + counts[BUSY]
        return max(0, live - self.spool.count(NEW) - self.spool.count(CUR))
