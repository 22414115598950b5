"""The reporter: the one place that proposes Prefect states for the agent.

What to propose is decided by agent/core/lifecycle.py; the reporter sends it and owns
what follows:
- the server's answer: ACCEPT (done), ABORT and REJECT (the run is elsewhere: the state
  it holds is what Prefect shows), WAIT (kept and tried again later);
- the outbox when the API is away: the proposal waits on disk and is delivered, oldest
  first, by the poller, which reads the run first and sends only what
  `lifecycle.supersedes` still allows (the flow's own end wins);
- ``agent_flow_runs_finished_total``, counted with what Prefect ends up showing, not with
  what the agent proposed;
- the agent's line in the run's log in Prefect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent.api.client import PrefectClient
from agent.api.outbox import LOGS, PID, STATE, Outbox, Report, worth_keeping
from agent.api.runlogs import NoRunLogs, RunLogs
from agent.core import lifecycle
from agent.core.causes import Cause
from agent.core.claim import ClaimResult, interpret
from agent.core.errors import (
    ApiError,
    ApiShapeError,
    AuthError,
    SpoolError,
    TransientApiError,
)
from agent.core.lifecycle import Proposal
from agent.core.states import Answer, StateType
from agent.observe import metrics

log = logging.getLogger(__name__)


def state_body(proposal: Proposal) -> dict[str, Any]:
    """The JSON the API takes for a proposal."""
    body: dict[str, Any] = {"type": proposal.type.value, "name": proposal.name}
    if proposal.message:
        body["message"] = proposal.message
    if proposal.transition_id:
        body["state_details"] = {"transition_id": proposal.transition_id}
    return body


def proposal_from(body: dict[str, Any], force: bool) -> Proposal:
    """A proposal read back from the outbox (ValueError for an unknown type)."""
    details = body.get("state_details")
    transition = details.get("transition_id") if isinstance(details, dict) else None
    return Proposal(
        StateType(str(body.get("type"))),
        str(body.get("name") or ""),
        str(body.get("message") or ""),
        force=force,
        transition_id=transition if isinstance(transition, str) else None,
    )


@dataclass(frozen=True)
class Reported:
    shown: StateType | None = None  # the run's state type after the report, when known
    accepted: bool = False
    kept: bool = False  # waits in the outbox


class Reporter:
    def __init__(
        self,
        client: PrefectClient,
        outbox: Outbox,
        runlogs: RunLogs | None = None,
        source: str = "",
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.runlogs: RunLogs = runlogs or NoRunLogs()
        self.source = source  # "poller", "worker w1": who made a kept report

    # -- claims ----------------------------------------------------------------------

    def claim(self, run_id: str, transition_id: str) -> ClaimResult:
        """Propose our Pending. Raises ApiError: a lost reply is settled from the spool's
        write-ahead copy, never from the outbox."""
        answer = self.client.set_flow_run_state(
            run_id, state_body(lifecycle.pending(transition_id))
        )
        return interpret(answer, transition_id)

    # -- states ----------------------------------------------------------------------

    def propose(
        self,
        run_id: str,
        proposal: Proposal,
        *,
        settles: bool = True,
        cloud_logs: bool = True,
        send: bool = True,
        keep: bool = True,
    ) -> Reported:
        """Send ``proposal``; never raises for the API. Returns what Prefect shows
        after it, which the caller counts with `finished` once its spec is retired (so a
        retire that fails and is retried counts once). ``settles``: the run is done on
        this host, so a report kept in the outbox is counted when delivered. ``send``
        False: the API is known to be away; straight to the outbox. ``keep`` False: a
        proposal not worth delivering later (the caller decides again next time) is
        dropped instead of kept."""
        if cloud_logs and proposal.message:
            level = logging.INFO if proposal.type is StateType.CANCELLED else logging.WARNING
            self.run_log(run_id, proposal.message, level)
        if not send:
            return self._keep_state(run_id, proposal, settles)
        try:
            answer = self.client.set_flow_run_state(run_id, state_body(proposal), proposal.force)
        except ApiError as exc:
            log.error("flow run %s: could not report %s: %s", run_id, proposal.type, exc)
            if keep and worth_keeping(exc):
                return self._keep_state(run_id, proposal, settles)
            return Reported()
        shown = answer.state.type if answer.state else None
        if answer.status is Answer.ACCEPT:
            shown = proposal.type
            log.info("flow run %s: %s (%s)", run_id, proposal.name, proposal.message or "-")
        elif answer.status is Answer.WAIT:
            log.info("flow run %s: the server asks to wait before %s", run_id, proposal.type)
            return self._keep_state(run_id, proposal, settles) if keep else Reported()
        else:
            log.info(
                "flow run %s: %s not accepted (%s); it is %s",
                *(run_id, proposal.type, answer.reason or answer.status, shown),
            )
        return Reported(shown, accepted=answer.status is Answer.ACCEPT)

    def finished(self, shown: StateType | None, cause: Cause = Cause.UNKNOWN) -> None:
        """Count a run this host is done with, by the final state Prefect shows and what
        ended its process."""
        outcome = lifecycle.outcome_of(shown)
        if outcome is not None:
            metrics.FINISHED.labels(outcome.value, cause.value).inc()

    def _keep_state(self, run_id: str, proposal: Proposal, settles: bool) -> Reported:
        report = Report(
            STATE,
            run_id,
            state=state_body(proposal),
            force=proposal.force,
            settles=settles,
            source=self.source,
        )
        return Reported(kept=self._keep(report))

    def _keep(self, report: Report) -> bool:
        try:
            self.outbox.put(report)
        except SpoolError as exc:
            log.error("%s is lost: %s", report.describe(), exc)
            return False
        return True

    # -- the rest of what the agent tells Prefect about a run --------------------------

    def infrastructure_pid(self, run_id: str, value: str) -> None:
        try:
            self.client.set_infrastructure_pid(run_id, value)
        except ApiError as exc:
            log.warning("flow run %s: could not record infrastructure pid: %s", run_id, exc)
            if worth_keeping(exc):
                self._keep(Report(PID, run_id, infrastructure_pid=value, source=self.source))

    def run_log(self, run_id: str, message: str, level: int = logging.INFO) -> None:
        """A line on the run's page in Prefect's UI (the caller checks --no-cloud-logs)."""
        self.runlogs.emit(run_id, message, level)

    # -- the outbox --------------------------------------------------------------------

    def deliver(self) -> int:
        """Send what waits in the outbox, oldest first. Stops (raising) when the API is
        away or our credential is refused: later reports would fail too. A report the
        server fails on its own (a 500 for that one) stays and the rest go on, so that
        one report cannot hold up the others, or the claims after them. Only the poller
        delivers (it holds the poller lock), so two deliveries never race."""
        done = 0
        for path, report, problem in self.outbox.pending():
            if report is None:
                log.error("outbox file %s is unusable (%s): removed", path.name, problem)
                self.outbox.remove(path)
                continue
            try:
                outcome = self._deliver(report)
            except ApiError as exc:
                if isinstance(exc, (TransientApiError, AuthError, ApiShapeError)):
                    log.info("outbox: %s still waits: %s", report.describe(), exc)
                    raise
                if worth_keeping(exc):
                    log.error("outbox: %s failed, kept to retry: %s", report.describe(), exc)
                    continue
                outcome = f"dropped, the server refuses it: {exc}"
            log.info("outbox: %s (from %s): %s", report.describe(), report.source, outcome)
            metrics.OUTBOX_DELIVERED.labels(report.kind).inc()
            self.outbox.remove(path)
            done += 1
        return done

    def _deliver(self, report: Report) -> str:
        if report.kind == LOGS:
            self.client.create_logs(report.entries)
            return "sent"
        assert report.flow_run_id is not None
        if report.kind == PID:
            assert report.infrastructure_pid is not None
            self.client.set_infrastructure_pid(report.flow_run_id, report.infrastructure_pid)
            return "sent"
        assert report.state is not None
        try:
            proposal = proposal_from(report.state, report.force)
        except ValueError:
            return f"dropped, unknown state type {report.state.get('type')!r}"
        current = self.client.read_flow_run(report.flow_run_id).state_type
        if not lifecycle.supersedes(proposal, current):
            # Delivered just before a crash, or the flow reached its own end meanwhile.
            if report.settles:
                self.finished(current)
            return f"not sent, the run is {current}: kept"
        answer = self.client.set_flow_run_state(
            report.flow_run_id, state_body(proposal), proposal.force
        )
        shown = proposal.type if answer.status is Answer.ACCEPT else None
        if shown is None and answer.state is not None:
            shown = answer.state.type
        if answer.status is Answer.WAIT:
            raise ApiError("set_flow_run_state", "the server asks to wait", 503)
        if report.settles:
            self.finished(shown)
        if answer.status is Answer.ACCEPT:
            return "sent"
        return f"not accepted ({answer.status}); the run is {shown}"
