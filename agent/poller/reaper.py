"""The reap duty: runs another agent of this pool holds although that agent (its host)
has been silent longer than ``--reap-after``. Prefect 3 itself leaves such a run Running
for ever (PrefectHQ/prefect#16746). Any live agent of the pool runs this duty; what is
lost is decided by agent/core/reap.py and proposed through the reporter, once.

Cheap while all is well: one read of the pool's workers per period; the pool's runs are
read when some agent is silent, and every STRANDED_CHECK_SECONDS in any case.

Those runs also show another host claiming under this agent's name, which hides the loss
of either host: that is logged as an error, once per host.
"""

from __future__ import annotations

import logging
import time

from agent.core import reap
from agent.core.states import FlowRun
from agent.observe import metrics
from agent.observe.logs import run_context
from agent.poller.shared import Shared
from agent.poller.stranded import live_runs
from agent.settings import defaults

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, s: Shared) -> None:
        self.s = s
        # The runs are read when some agent is silent, and also every so often: an agent
        # that never wrote a heartbeat record (or lost it) has runs no record points to.
        self._full_look_at = 0.0
        self._shared_with: set[str] = set()  # hosts said to share this agent's name

    def run(self) -> None:
        config = self.s.config
        reap_after = config.reap_after
        if reap_after <= 0:
            return
        now = time.time()
        beats = self.s.client.read_workers(config.pool)
        due = time.monotonic() >= self._full_look_at
        if not due and not reap.stale_agents(beats, now, reap_after, config.name):
            return
        self._full_look_at = time.monotonic() + defaults.STRANDED_CHECK_SECONDS
        me = (config.name, config.hostname)
        runs = live_runs(self.s)
        self._say_shared_name(runs, me)
        for lost in reap.lost_runs(runs, beats, now, reap_after, me):
            with run_context(lost.run_id):
                self.one(lost, me, reap_after)

    def _say_shared_name(self, runs: list[FlowRun], me: tuple[str, str]) -> None:
        for host, run_id in reap.name_shared(runs, me).items():
            if host not in self._shared_with:
                self._shared_with.add(host)
                log.error(
                    "agent name %r is in use on host %s too (flow run %s is labelled for "
                    "it): the pool keeps one heartbeat per name, so the loss of either host "
                    "goes unnoticed; give each host its own --name (AGENT_NAME)",
                    *(me[0], host, run_id),
                )

    def one(self, lost: reap.Lost, me: tuple[str, str], reap_after: float) -> None:
        log.warning(
            "flow run %s: held by agent %r on %s, silent for %.0fs: marking it Crashed",
            *(lost.run_id, lost.agent, lost.host, lost.silent_for),
        )
        proposal = reap.proposal(lost, me, reap_after)
        # Not this host's run (settles=False); its log line only from the reaper that won.
        # Never kept for later: by then the run may be another claim's; the next look
        # decides again from what is true then.
        reported = self.s.reporter.propose(
            lost.run_id, proposal, settles=False, cloud_logs=False, keep=False
        )
        if reported.accepted:
            metrics.REAPED.inc()
            if self.s.config.cloud_logs:
                self.s.reporter.run_log(lost.run_id, proposal.message, logging.WARNING)
