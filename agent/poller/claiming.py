"""The claim duty: set the pool up, poll for due runs, claim what the workers can take,
and note when the earliest run due after the prefetch window is (the loop's look-ahead).

A spec is written ahead to tmp/ before the claim and published to new/ after it, so the
poller holds no run in memory that is not also on disk; a lost reply is settled by the
settle duty (agent/poller/settle.py).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.api.parse import parse_api_time
from agent.core import lifecycle
from agent.core.claim import HOST_LABEL, POOL_LABEL, WORKER_LABEL, Claim
from agent.core.errors import (
    ApiError,
    ConfigError,
    JobVariableError,
    NotFoundError,
    SpoolError,
)
from agent.core.jobvars import (
    base_job_template,
    labels_match,
    merge_job_variables,
    parse_labels,
    template_defaults,
)
from agent.core.spec import JobSpec, dumps
from agent.core.states import Deployment, FlowRun
from agent.observe import metrics
from agent.observe.logs import run_context
from agent.poller.outage import is_outage
from agent.poller.shared import Shared
from agent.settings import defaults

log = logging.getLogger(__name__)

# What the server answers, at pool set-up, to a name it will not take (a bad path, a
# name it fails to validate).
POOL_REFUSED = frozenset({400, 405, 422})


class Claiming:
    def __init__(self, shared: Shared) -> None:
        self.s = shared

    # -- the pool ------------------------------------------------------------------------

    def setup_pool(self) -> None:
        config = self.s.config
        try:
            pool = self.s.client.ensure_work_pool(
                config.pool, defaults.POOL_TYPE, base_job_template()
            )
        except ApiError as exc:
            refused = exc.status in POOL_REFUSED
            # 403 on creating a pool that is missing: a reserved name ("prefect-..."), or
            # a key that may not create pools; a 401/403 on reading stays an auth error.
            if not refused and not (exc.status == 403 and exc.call == "create_work_pool"):
                raise
            # The server refuses the name itself: no retry can help (exit 78, named).
            raise ConfigError(
                f"work pool {config.pool!r} is refused by the server: {exc}"
            ) from None
        if pool.type != defaults.POOL_TYPE:
            log.warning(
                "work pool %r has type %r, not %r: other workers may take its runs too",
                *(config.pool, pool.type, defaults.POOL_TYPE),
            )
        self.s.pool_defaults = template_defaults(pool.base_job_template)
        self.s.pool_id = pool.id

    # -- polling -------------------------------------------------------------------------

    def poll(self) -> None:
        """The duty: one poll, claiming at most as many runs as workers are free."""
        self.s.claimed = 0
        if self.s.pool_defaults is None:
            self.setup_pool()
        if not self.s.backend_ready:
            return  # nothing is claimed before the backend config is known
        self.s.claimed = self.poll_once()

    def poll_once(self) -> int:
        s = self.s
        # Nothing is claimed that cannot be written; polling goes on (it proves the API).
        free = 0 if s.spool_error else s.free_slots()
        now = datetime.now(UTC)
        claim_before = now + timedelta(seconds=s.config.prefetch_seconds)
        claim_by = claim_before.timestamp()
        s.next_due = None  # a failed poll knows of no run
        polled_at = time.monotonic()
        # Runs due up to one idle sleep past the prefetch window are asked for too: they
        # are not claimed, but the earliest tells the loop when to poll for it.
        runs = s.client.get_scheduled_flow_runs(
            s.config.pool,
            claim_before + timedelta(seconds=s.lookahead),
            s.config.work_queues,
            defaults.POLL_LIMIT,
        )
        metrics.POLLS.inc()
        s.last_success = time.time()
        metrics.LAST_POLL.set(s.last_success)
        s.backlog = False
        claimed = 0
        deployments: dict[str, Deployment | None] = {}
        for flow_run in runs:
            if not lifecycle.claimable(flow_run.state):
                continue  # a server that ignored part of the request
            # Due after the prefetch window: seen early, claimed by a later poll. (The
            # server sorts by queue priority first: a due run may still follow it.)
            later = parse_api_time(flow_run.scheduled_start)
            if later is not None and later <= claim_by:
                later = None
            if later is not None and s.next_due is not None and later >= s.next_due:
                continue  # not sooner than one already known: no need to read its labels
            job_variables = self.job_variables(flow_run, deployments, act=later is None)
            if job_variables is None:
                continue
            try:
                labels = parse_labels(job_variables.get("labels"))
            except JobVariableError:
                labels = frozenset()  # claim it: the worker fails it, naming the variable
            if not labels_match(labels, s.config.labels):
                log.debug("flow run %s needs labels %s: not for us", flow_run.id, sorted(labels))
                continue
            if later is not None:
                s.next_due = later
                continue
            if claimed >= free:
                s.backlog = not s.spool_error  # a worker is short, not the disk
                break
            if time.monotonic() - polled_at > defaults.CLAIM_FRESH_SECONDS and not self.waiting(
                flow_run.id
            ):
                continue
            try:
                if self.claim(flow_run, job_variables):
                    claimed += 1
            except SpoolError as exc:
                s.spool_error = str(exc)
                log.error("spool not writable, claiming nothing: %s", exc)
                break
        return claimed

    def waiting(self, run_id: str) -> bool:
        """The run is still Scheduled, read afresh. Prefect accepts Pending over a
        Completed run whose result is not persisted (a rerun): a claim made on a stale
        poll, after another agent claimed, ran and finished the run, would run it twice."""
        try:
            fresh = self.s.client.read_flow_run(run_id)
        except NotFoundError:
            return False
        if not lifecycle.claimable(fresh.state):
            now = fresh.state.name if fresh.state else "no state"
            log.info("flow run %s: no longer waiting (%s); not claimed", run_id, now)
            return False
        return True

    def job_variables(
        self, flow_run: FlowRun, cache: dict[str, Deployment | None], act: bool = True
    ) -> dict[str, Any] | None:
        """Pool defaults < deployment < flow run; None when the deployment is gone (and,
        with ``act``, the run is cancelled: a run not due yet is left until it is)."""
        deployment: Deployment | None = None
        if flow_run.deployment_id:
            if flow_run.deployment_id not in cache:
                try:
                    cache[flow_run.deployment_id] = self.s.client.read_deployment(
                        flow_run.deployment_id
                    )
                except NotFoundError:
                    cache[flow_run.deployment_id] = None
            deployment = cache[flow_run.deployment_id]
            if deployment is None:
                if act:
                    self._deployment_gone(flow_run.id, flow_run.deployment_id)
                return None
        return merge_job_variables(
            self.s.pool_defaults,
            deployment.job_variables if deployment else None,
            flow_run.job_variables,
        )

    def _deployment_gone(self, run_id: str, deployment_id: str) -> None:
        message = f"Deployment {deployment_id} was deleted; flow run cancelled, not run."
        with run_context(run_id):
            log.warning("flow run %s: %s", run_id, message)
            proposal = lifecycle.cancelled(message, force=False)
            cloud_logs = self.s.config.cloud_logs
            self.s.reporter.propose(run_id, proposal, settles=False, cloud_logs=cloud_logs)

    # -- one claim -----------------------------------------------------------------------

    def claim(self, flow_run: FlowRun, job_variables: dict[str, Any]) -> bool:
        with run_context(flow_run.id):
            return self._claim(flow_run, job_variables)

    def _claim(self, flow_run: FlowRun, job_variables: dict[str, Any]) -> bool:
        """Write ahead, propose Pending, then publish (ours) or discard (not ours)."""
        s, run_id = self.s, flow_run.id
        transition_id = str(uuid.uuid4())
        spec = self.spec(flow_run, job_variables, transition_id, time.time())
        s.spool.write_ahead(run_id, dumps(spec))
        try:
            result = s.reporter.claim(run_id, transition_id)
        except ApiError:
            # The server may have committed the claim: the spec stays in tmp/ and the
            # settle duty asks the server whose Pending it is.
            log.warning("flow run %s: claim reply lost; will reconcile", run_id)
            raise
        if result.claim is Claim.ACCEPTED:
            if s.after_claim is not None:
                s.after_claim(run_id)
            self.publish(run_id, spec, "claimed")
            return True
        s.spool.discard(run_id)
        if result.claim is Claim.WAIT:
            log.info("flow run %s: server asks to wait %.1fs", run_id, result.delay)
        else:
            metrics.CLAIM_CONFLICTS.labels(result.claim.value).inc()
            log.info("flow run %s not claimed (%s): %s", run_id, result.claim.value, result.reason)
        return False

    def publish(self, run_id: str, spec: JobSpec, how: str) -> None:
        """A claim of ours: its first line in Prefect's UI (before the spec is published,
        so that it is timestamped before anything a worker says), the spec to new/, the
        count and the labels that say which agent and host hold it."""
        if spec.cloud_logs:
            self.s.reporter.run_log(
                run_id,
                f"Submitted for execution by agent {self.s.config.name!r} "
                f"on {self.s.config.hostname}",
            )
        self.s.spool.publish(run_id)
        metrics.CLAIMED.inc()
        log.info("flow run %s (%s) %s", run_id, spec.flow_run_name, how)
        self.label(run_id)

    def spec(
        self,
        flow_run: FlowRun,
        job_variables: dict[str, Any],
        transition_id: str,
        claimed_at: float,
    ) -> JobSpec:
        """The spec of a run claimed (or, for a stranded run, claimed earlier) by this
        agent, with the agent's settings of now."""
        config = self.s.config
        return JobSpec(
            flow_run_id=flow_run.id,
            pool=config.pool,
            transition_id=transition_id,
            agent_name=config.name,
            flow_run_name=flow_run.name,
            deployment_id=flow_run.deployment_id,
            scheduled_start=flow_run.scheduled_start,
            claimed_at=claimed_at,
            job_variables=job_variables,
            env_vars=dict(config.env_vars),
            import_paths=list(config.import_paths),
            show_flow_logs=config.show_flow_logs,
            cloud_logs=config.cloud_logs,
        )

    def label(self, run_id: str) -> None:
        """Put on a run just claimed the labels that say which agent and host hold it: the
        stranded look and a fleet's reaper find a host's runs by them. A label that does
        not land (a busy server's 503) is tried again by the labels duty, not dropped."""
        try:
            self._put_labels(run_id)
        except NotFoundError:
            pass  # deleted already: nothing to label
        except ApiError as exc:
            self.s.unlabelled.add(run_id)
            log.warning("flow run %s: could not label it, will try again: %s", run_id, exc)

    def relabel(self) -> None:
        """The labels duty: label again the runs whose labelling failed. A failure the
        server may get over (a 5xx, no answer) is raised: the duty tries again later. A
        refusal (a 4xx) is logged and the run given up, as is a run deleted meanwhile."""
        s = self.s
        for run_id in sorted(s.unlabelled):
            try:
                self._put_labels(run_id)
            except NotFoundError:
                pass
            except ApiError as exc:
                if is_outage(exc):
                    raise
                log.error("flow run %s: could not label it, giving up: %s", run_id, exc)
            else:
                log.info("flow run %s: labelled", run_id)
            s.unlabelled.discard(run_id)

    def _put_labels(self, run_id: str) -> None:
        config = self.s.config
        labels = {WORKER_LABEL: config.name, POOL_LABEL: config.pool, HOST_LABEL: config.hostname}
        self.s.client.update_flow_run_labels(run_id, labels)


def crash_after_claim(run_id: str) -> None:
    """The fault seam behind the hidden setting AGENT_TEST_CRASH_AFTER_CLAIM: die right
    after the server accepts a claim, before its spec is published."""
    log.warning("AGENT_TEST_CRASH_AFTER_CLAIM: exiting after claiming %s", run_id)
    os._exit(70)
