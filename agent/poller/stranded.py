"""The stranded duty: runs Prefect shows Pending or Running for this agent on this host
(by the labels each claim puts on its run) that the spool has no spec for, and that no
process on this host runs: the spool was lost, emptied or replaced.

What happens to each is `lifecycle.stranded`: a Pending one never ran user code (the
engine proposes Running before any), so it is spooled again with its Pending's transition
id; a Running one may have run in part, and running it again could repeat its effects:
it is reported Crashed once, and Prefect's retry policy decides what follows.

Never touched: a run with a spec in any spool folder (its worker settles it), a run
labelled for another agent or host, and a run whose state is younger than
``stranded_after`` (see defaults.STRANDED_AFTER_SECONDS).
"""

from __future__ import annotations

import logging
import time
import uuid

from agent.core import lifecycle
from agent.core.causes import Cause
from agent.core.claim import HOST_LABEL, WORKER_LABEL
from agent.core.errors import NotFoundError
from agent.core.spec import dumps
from agent.core.states import Deployment, FlowRun, StateType
from agent.observe.logs import run_context
from agent.poller.claiming import Claiming
from agent.poller.shared import Shared
from agent.settings import defaults
from agent.spool import containment_state
from agent.worker.cgroups import holds_run
from agent.worker.procid import runs_flow

log = logging.getLogger(__name__)

LIVE = (StateType.PENDING, StateType.RUNNING)


class Stranded:
    def __init__(self, claiming: Claiming) -> None:
        self.claiming = claiming
        self.s = claiming.s

    def run(self) -> None:
        now = time.time()
        deployments: dict[str, Deployment | None] = {}
        for flow_run in self.ours():
            with run_context(flow_run.id):
                try:
                    self.one(flow_run, now, deployments)
                except NotFoundError as exc:  # deleted meanwhile: nothing left to settle
                    log.info("flow run %s is gone: %s", flow_run.id, exc)

    def ours(self) -> list[FlowRun]:
        """Runs of this pool in Pending or Running that carry this agent's and this
        host's labels. The server cannot filter on labels: that part is done here."""
        return [run for run in live_runs(self.s) if self.candidate(run)]

    def candidate(self, flow_run: FlowRun) -> bool:
        """Labelled for this agent and host. The state and pool are checked again: a
        server that ignored part of the filter must not get a Scheduled run (a retry
        waiting its turn keeps our labels) or another pool's run marked Crashed."""
        config = self.s.config
        return (
            flow_run.labels.get(WORKER_LABEL) == config.name
            and flow_run.labels.get(HOST_LABEL) == config.hostname
            and flow_run.state_type in LIVE
            and flow_run.work_pool_name in (None, config.pool)
        )

    def one(self, flow_run: FlowRun, now: float, deployments: dict[str, Deployment | None]) -> None:
        run_id, state = flow_run.id, flow_run.state
        # Specs only move forward (tmp -> new -> cur -> done|failed) and `contains` looks
        # in that order, so a spec moving while we look is still found.
        if self.s.spool.contains(run_id) is not None or state is None:
            return
        if state.timestamp is None or now - state.timestamp < self.s.config.stranded_after:
            return  # a claim of a moment ago (a future time: clocks disagree; wait too)
        # A process of the run: found by its environment, or in its cgroup (which also
        # holds what the flow started with another environment).
        if runs_flow(run_id) or holds_run(containment_state.roots(self.s.spool.root), run_id):
            log.warning(
                "flow run %s is %s with no spec in the spool, but a process on this host "
                "runs it: left alone",
                *(run_id, state.type),
            )
            return
        if lifecycle.respool_stranded(state.type):
            self.respool(flow_run, state.timestamp, deployments)
        else:
            self.crash(run_id)

    def respool(
        self, flow_run: FlowRun, claimed_at: float, deployments: dict[str, Deployment | None]
    ) -> None:
        """Spool a run claimed here that never reached Running, as a claim would have.
        Not counted in agent_flow_runs_claimed_total: the claim was counted when made."""
        run_id = flow_run.id
        job_variables = self.claiming.job_variables(flow_run, deployments)
        if job_variables is None:
            return  # its deployment is gone: cancelled, as a fresh claim would be
        # Our Pending's transition id, so that a crash between the write-ahead and the
        # publish is settled like any claim.
        transition_id = (flow_run.state and flow_run.state.transition_id) or str(uuid.uuid4())
        spec = self.claiming.spec(flow_run, job_variables, transition_id, claimed_at)
        self.s.spool.write_ahead(run_id, dumps(spec))
        self.s.spool.publish(run_id)
        message = (
            f"Claimed by agent {self.s.config.name!r} on {self.s.config.hostname} but missing "
            "from its spool, and never started: spooled again"
        )
        log.warning("flow run %s (%s): %s", run_id, spec.flow_run_name, message)
        if spec.cloud_logs:
            self.s.reporter.run_log(run_id, message, logging.WARNING)

    def crash(self, run_id: str) -> None:
        config = self.s.config
        message = (
            f"Flow run {run_id} was claimed by agent {config.name} on {config.hostname}, "
            "which has no record of it running (spec lost); marked Crashed instead of "
            "running it again."
        )
        reported = self.s.reporter.propose(
            run_id, lifecycle.crashed(message), cloud_logs=config.cloud_logs
        )
        self.s.reporter.finished(reported.shown, Cause.LOST)


def live_runs(s: Shared) -> list[FlowRun]:
    """Every run of this pool in Pending or Running, page by page (the stranded and the
    reap duties both look through them)."""
    found: list[FlowRun] = []
    offset = 0
    while True:
        body = {
            "flow_runs": {"state": {"type": {"any_": [t.value for t in LIVE]}}},
            "work_pools": {"name": {"any_": [s.config.pool]}},
            "sort": "ID_DESC",
            "limit": defaults.STRANDED_PAGE,
            "offset": offset,
        }
        page = s.client.filter_flow_runs(body)
        found.extend(page)
        # Runs changing state between pages may be skipped: the next look finds them.
        if len(page) < defaults.STRANDED_PAGE:
            return found
        offset += len(page)
