"""The cancellation duty: act on runs set to Cancelling in Prefect whose spec this spool
holds. A waiting one (new/) is moved to done/ and marked Cancelled here; for a running
one (cur/) the worker that runs it is asked (runs/<id>/cancel) to stop its processes,
and reports.

The same look finds a running one that another agent marked Crashed while this host was
cut off from Prefect (agent/core/reap.py): its worker is asked to stop its processes and
report nothing.

The server is asked only about the runs in new/ and cur/, by id: a run is ours when this
spool holds its spec (labels may be missing when labelling failed), and with an empty
spool nothing is asked at all. A run the spool does not hold is someone else's to stop.
"""

from __future__ import annotations

import logging

from agent.core import lifecycle, reap
from agent.core.causes import Cause
from agent.core.errors import SpecError
from agent.core.spec import JobSpec, loads
from agent.core.states import FlowRun, StateType
from agent.observe.logs import run_context
from agent.poller.shared import Shared
from agent.settings import defaults
from agent.spool.moves import CUR, LOST, NEW

log = logging.getLogger(__name__)


class Cancellations:
    def __init__(self, shared: Shared) -> None:
        self.s = shared

    def run(self) -> None:
        waiting, running = self.s.spool.run_ids(NEW), self.s.spool.run_ids(CUR)
        ids = [*waiting, *running]
        for start in range(0, len(ids), defaults.STRANDED_PAGE):
            for flow_run in self.cancelling(ids[start : start + defaults.STRANDED_PAGE]):
                with run_context(flow_run.id):
                    if flow_run.state_type is StateType.CANCELLING:
                        self.one(flow_run.id)
                    else:
                        self.lost(flow_run.id)

    def cancelling(self, ids: list[str]) -> list[FlowRun]:
        """Of ``ids``, the runs in Cancelling, and those in a reaper's Crashed."""
        types = [StateType.CANCELLING.value, StateType.CRASHED.value]
        body = {
            "flow_runs": {"id": {"any_": ids}, "state": {"type": {"any_": types}}},
            "work_pools": {"name": {"any_": [self.s.config.pool]}},
            "limit": len(ids),
        }
        # Its own call name: its latency metric and its fakes apart from the stranded look.
        page = self.s.client.filter_flow_runs(body, call="cancelling_flow_runs")
        wanted = set(ids)
        # Checked again: a server ignoring part of the filter must not cancel a live run.
        return [
            r
            for r in page
            if r.id in wanted and (r.state_type is StateType.CANCELLING or reap.reaped(r.state))
        ]

    def one(self, run_id: str) -> None:
        spool, name = self.s.spool, self.s.config.name
        # Waiting first: a spec moves new -> cur, so one taken meanwhile is found in cur/.
        reason = f"Cancelled by agent {name} before it started"
        spec = self._spec(NEW, run_id)
        if spec is not None and spool.cancel_waiting(run_id, reason):
            log.info("flow run %s: %s", run_id, reason)
            reported = self.s.reporter.propose(
                run_id, lifecycle.cancelled(reason), cloud_logs=spec.cloud_logs
            )
            self.s.reporter.finished(reported.shown, Cause.NOT_STARTED)
            return
        spec = self._spec(CUR, run_id)
        if spec is None:
            return  # finished meanwhile, or refused: its worker settles it
        reason = f"Cancelling in Prefect: agent {name} asked its worker to stop it"
        if spool.request_cancel(run_id, spec.transition_id, reason):
            log.info("flow run %s is cancelling: asked its worker to stop it", run_id)

    def lost(self, run_id: str) -> None:
        """A run this host runs that another agent marked Crashed while this host was cut
        off: stop its processes (a waiting one is refused by its worker's look before it
        starts, as any final run is)."""
        spec = self._spec(CUR, run_id)
        if spec is None:
            return  # waiting, or finished meanwhile
        reason = (
            f"marked Crashed by another agent while agent {self.s.config.name} was cut off "
            "from Prefect: asked its worker to stop it"
        )
        if self.s.spool.request_cancel(run_id, spec.transition_id, reason, why=LOST):
            log.warning("flow run %s was %s", run_id, reason)

    def _spec(self, state: str, run_id: str) -> JobSpec | None:
        """The run's spec in ``state`` (new/ or cur/), or None: not there (moved on
        meanwhile) or unreadable (its worker refuses it)."""
        try:
            return loads(self.s.spool.read(state, run_id))
        except (OSError, SpecError):
            return None
