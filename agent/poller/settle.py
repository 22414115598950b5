"""The settle duty: write-ahead specs left in tmp/ by a lost claim reply, or by a poller
that died between the claim and the publish, are published if the server shows our
Pending (same transition id) and discarded otherwise.

This poller is the spool's only writer (it holds the poller lock), so at the start of a
round nothing in tmp/ is in flight.
"""

from __future__ import annotations

import logging

from agent.core import lifecycle
from agent.core.errors import NotFoundError, SpecError
from agent.core.spec import loads
from agent.observe.logs import run_context
from agent.poller.claiming import Claiming
from agent.spool.moves import TMP

log = logging.getLogger(__name__)


class Settle:
    def __init__(self, claiming: Claiming) -> None:
        self.claiming = claiming
        self.s = claiming.s

    def run(self) -> None:
        for run_id in self.s.spool.run_ids(TMP):
            with run_context(run_id):
                self.one(run_id)

    def one(self, run_id: str) -> None:
        spool = self.s.spool
        try:
            spec = loads(spool.read(TMP, run_id))
        except (OSError, SpecError):
            spool.discard(run_id)  # never complete, so never used to claim
            return
        try:
            flow_run = self.s.client.read_flow_run(run_id)
        except NotFoundError:
            spool.discard(run_id)
            return
        if lifecycle.is_our_pending(flow_run.state, spec.transition_id):
            self.claiming.publish(run_id, spec, "claimed: the earlier claim had succeeded")
        else:
            spool.discard(run_id)
