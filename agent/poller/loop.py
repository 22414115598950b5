"""The poller: registers with the pool, polls for due runs, claims what its workers
can take, and hands each claimed run to the workers through the spool.

It holds no run in memory that is not also on disk: a spec is written ahead to tmp/
before the claim and published to new/ after it.

API outage: once a round's calls have failed through their retry deadline, the poller
makes one attempt per call, backs off (doubling, with jitter, up to the poll interval's
cap) and probes ``GET /health`` every second meanwhile, so polling resumes within about
two seconds of the API's return (or at once on /api/poke). Claims stop meanwhile;
reports the workers and the poller could not send wait in the spool's outbox and go
first when the API answers again (agent/api/outbox.py).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from agent import __version__
from agent.api.client import PrefectClient, parse_api_time
from agent.api.outbox import Outbox, state_report, worth_keeping
from agent.api.runlogs import NoRunLogs, RunLogs
from agent.core.backoff import next_poll_interval
from agent.core.claim import Claim, interpret, is_our_pending, pending_state
from agent.core.errors import (
    RET_OK,
    ApiError,
    ConfigError,
    JobVariableError,
    NotFoundError,
    SpecError,
    SpoolError,
    TransientApiError,
)
from agent.core.jobvars import (
    base_job_template,
    labels_match,
    merge_job_variables,
    parse_labels,
    template_defaults,
)
from agent.core.spec import JobSpec, dumps, loads
from agent.observe import metrics
from agent.observe.logs import run_context
from agent.settings import backend_config, defaults
from agent.settings.config import PollerConfig
from agent.spool.locks import write_poller_state
from agent.spool.moves import CUR, NEW, RUNS, TMP, Spool
from agent.spool.registry import BUSY, IDLE, Registry
from agent.worker.procid import runs_flow

log = logging.getLogger(__name__)

LIVE_STATE_TYPES = ("PENDING", "RUNNING")
# Labels the poller puts on every run it claims (see `_label`).
WORKER_LABEL = "prefect.worker.name"
POOL_LABEL = "prefect.work-pool.name"
HOST_LABEL = "local-agent.host"

# Fault-injection seam, for tests/integration/test_faults.py only: with
# AGENT_TEST_CRASH_AFTER_CLAIM=1 in its environment the poller exits (70) right after the
# server accepts a claim and before the spec is published: the crash reconcile_tmp settles.
_CRASH_AFTER_CLAIM = os.environ.get("AGENT_TEST_CRASH_AFTER_CLAIM") == "1"


class Poller:
    def __init__(
        self,
        config: PollerConfig,
        client: PrefectClient,
        spool: Spool,
        registry: Registry,
        runlogs: RunLogs | None = None,
    ) -> None:
        # `base_config` is what flags, env and file said; `config` is that with the
        # backend config on top, replaced whole when the variable changes.
        self.base_config = self.config = config
        self.client = client
        self.spool = spool
        self.registry = registry
        self.runlogs: RunLogs = runlogs or NoRunLogs()
        self.outbox = Outbox(spool.root)
        self._backend: backend_config.BackendSettings | None = None
        self._next_backend_read = 0.0
        self.polls = 0
        self.started_at = time.time()
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.spool_error: str | None = None
        # Set when a round failed for want of the API (unreachable, timing out, 5xx).
        self.api_down_since: float | None = None
        self._probe_failed = False  # the last /health probe of the outage failed
        self.interval = config.poll_interval_min
        self.backlog = False  # eligible runs were left because no worker was free
        self._pool_defaults: dict[str, Any] | None = None
        self._last_heartbeat = float("-inf")
        self._next_stranded_check = float("-inf")  # monotonic; -inf: at the first tick
        self._next_cancel_check = float("-inf")  # monotonic
        self._next_probe = float("-inf")  # monotonic
        self._wake = threading.Event()
        self._stop = threading.Event()

    # -- control ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: no new claims; exiting", signal.Signals(signum).name)
        self.stop()
        # The loop notices at once unless an API call is in flight (up to its read
        # timeout, or retrying). Leaving mid-call is safe: every claim is written ahead
        # and settled by the next poller's reconcile. So: exit 0 within a second, always.
        timer = threading.Timer(defaults.POLLER_EXIT_DEADLINE, self._exit_now)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _exit_now() -> None:
        log.warning("an API call is still in flight; exiting without waiting for it")
        logging.shutdown()
        os._exit(RET_OK)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Poll now (GET /api/poke)."""
        self._wake.set()

    # -- the loop --------------------------------------------------------------------

    def run(self) -> int:
        self._publish_info()
        log.info(
            "agent %s %s: pool %r, labels %s, spool %s",
            self.config.name,
            __version__,
            self.config.pool,
            sorted(self.config.labels),
            self.spool.root,
        )
        while not self._stop.is_set():
            self.tick()
            if self.config.max_polls is not None and self.polls >= self.config.max_polls:
                log.info("reached --max-polls %d; exiting", self.config.max_polls)
                break
            self._sleep(self.interval)
        return RET_OK

    def tick(self) -> int:
        """One round: pool set-up if needed, heartbeat, outbox, reconcile, poll and claim."""
        claimed = 0
        failed = False
        try:
            with self.client.single_attempt(self.api_down_since is not None):
                if self.config.agent_config_id and time.monotonic() >= self._next_backend_read:
                    self.refresh_backend_config()
                if self._pool_defaults is None:
                    self._setup_pool()
                self._heartbeat_if_due()
                self._probe_spool()
                self._deliver_outbox()
                self.reconcile_tmp()
                self._reconcile_stranded_if_due()
                self.check_cancellations_if_due()
                claimed = self.poll_once()
            self.last_error = None
            self._api_back()
        except (ApiError, SpoolError) as exc:
            failed = True
            metrics.POLL_ERRORS.inc()
            self.last_error = str(exc)
            if isinstance(exc, ApiError) and _outage(exc):
                self._api_away(exc)
            else:
                log.error("poll failed, will retry in %.1fs: %s", self.interval, exc)
        self.polls += 1
        self.interval = next_poll_interval(
            self.interval, claimed > 0, self.config.poll_interval_min, self.config.poll_interval_max
        )
        if failed and self.api_down_since is not None:
            # Agents of many hosts waiting out one outage must not retry in step.
            self.interval *= random.uniform(0.8, 1.2)
        self._write_state()
        return claimed

    def _api_away(self, exc: ApiError) -> None:
        if self.api_down_since is None:
            self.api_down_since = time.time()
            self._probe_failed = False
            log.error(
                "the Prefect API is unavailable: claiming nothing, probing it every %.0fs: %s",
                defaults.API_PROBE_SECONDS,
                exc,
            )
        else:
            log.debug("the Prefect API is still unavailable: %s", exc)

    def _api_back(self) -> None:
        if self.api_down_since is not None:
            log.info(
                "the Prefect API answers again after %.0fs; polling",
                time.time() - self.api_down_since,
            )
            self.api_down_since = None

    def _deliver_outbox(self) -> None:
        """Reports kept while the API was away go before any new claim."""
        if self.outbox.count():
            self.outbox.deliver(self.client)

    def _probe_spool(self) -> None:
        error = self.spool.probe()
        if error and not self.spool_error:
            log.error("spool %s %s: claiming nothing until it is writable", self.spool.root, error)
        elif self.spool_error and not error:
            log.info("spool %s is writable again", self.spool.root)
        self.spool_error = error

    def _write_state(self) -> None:
        """For `agent status`: what this poller is and when it last polled."""
        state: dict[str, object] = {
            "pid": os.getpid(),
            "name": self.config.name,
            "pool": self.config.pool,
            "labels": sorted(self.config.labels),
            "work_queues": list(self.config.work_queues),
            "hostname": self.config.hostname,
            "version": __version__,
            "started": self.started_at,
            "last_successful_poll": self.last_success,
            "last_error": self.last_error,
            "api_unavailable_since": self.api_down_since,
            "outbox_reports": self.outbox.count(),
            "updated": time.time(),
        }
        try:
            write_poller_state(self.spool.root, state)
        except OSError as exc:  # a full disk shows in health already
            log.debug("cannot write poller state: %s", exc)

    # -- backend config ----------------------------------------------------------------

    def refresh_backend_config(self) -> None:
        """Read the --agent-config-id variable and apply it if it changed.

        Before the first success nothing is claimed: a missing or malformed variable
        stops the agent (ConfigError), an unreachable API is retried by the loop. Later,
        any error keeps the last good settings.
        """
        assert self.config.agent_config_id
        self._next_backend_read = time.monotonic() + self.config.agent_config_refresh
        first = self._backend is None
        try:
            settings = backend_config.fetch(self.client, self.config.agent_config_id)
        except (ApiError, ConfigError) as exc:
            if first:
                raise
            log.error("agent config: keeping the current settings: %s", exc)
            return
        if settings == self._backend:
            return
        new = backend_config.apply(self.base_config, settings)
        if not first and new.name != self.config.name:
            log.warning("agent config: name %r takes effect at the next restart", new.name)
            new = replace(new, name=self.config.name)
        for line in backend_config.describe_changes(self.config, new):
            log.info("agent config %s: %s", self.config.agent_config_id, line)
        self._backend, self.config = settings, new
        self._publish_info()

    def _publish_info(self) -> None:
        metrics.INFO.clear()
        metrics.INFO.labels(__version__, self.config.name, self.config.pool).set(1)

    def _sleep(self, seconds: float) -> None:
        """Wait for the next poll; wake early on poke, stop, or a freed worker with a backlog."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(min(remaining, defaults.LOCAL_CHECK_SECONDS)):
                self._wake.clear()
                return
            if self.api_down_since is not None:
                if self._api_returned():
                    return
                continue  # nothing else can reach the API now
            self.check_cancellations_if_due()  # noticed within seconds, however idle
            if self.backlog and self.free_slots() > 0:
                return

    def _api_returned(self) -> bool:
        """During an outage: probe GET /health every API_PROBE_SECONDS; True when a probe
        succeeds after one failed (a server answering /health while failing other calls
        is retried at the loop's backoff instead)."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + defaults.API_PROBE_SECONDS
        if not self.client.reachable():
            self._probe_failed = True
            return False
        # Once per return: if the round that follows fails again, back off as before.
        returned, self._probe_failed = self._probe_failed, False
        return returned

    def _setup_pool(self) -> None:
        pool = self.client.ensure_work_pool(
            self.config.pool, defaults.POOL_TYPE, base_job_template()
        )
        if pool.get("type") != defaults.POOL_TYPE:
            log.warning(
                "work pool %r has type %r, not %r: other workers may take its runs too",
                self.config.pool,
                pool.get("type"),
                defaults.POOL_TYPE,
            )
        self._pool_defaults = template_defaults(pool.get("base_job_template"))

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < self.config.heartbeat_seconds:
            return
        self.client.heartbeat(self.config.pool, self.config.name, self.config.heartbeat_seconds)
        self._last_heartbeat = now

    # -- claiming --------------------------------------------------------------------

    def free_slots(self) -> int:
        """Live workers minus runs waiting or running. Counted from the spool rather than
        the workers' idle flags: a worker flags itself busy a moment after it takes a
        spec, and counting it idle then would claim one run too many."""
        counts = self.registry.counts()
        live = counts[IDLE] + counts[BUSY]
        return max(0, live - self.spool.count(NEW) - self.spool.count(CUR))

    def poll_once(self) -> int:
        # Nothing is claimed that cannot be written; polling goes on (it proves the API).
        free = 0 if self.spool_error else self.free_slots()
        now = datetime.now(UTC)
        runs = self.client.get_scheduled_flow_runs(
            self.config.pool,
            now + timedelta(seconds=self.config.prefetch_seconds),
            self.config.work_queues,
            defaults.POLL_LIMIT,
        )
        metrics.POLLS.inc()
        self.last_success = time.time()
        metrics.LAST_POLL.set(self.last_success)
        self.backlog = False
        claimed = 0
        deployments: dict[str, dict[str, Any] | None] = {}
        for item in runs:
            flow_run = item["flow_run"]
            job_variables = self._job_variables(flow_run, deployments)
            if job_variables is None:
                continue
            try:
                labels = parse_labels(job_variables.get("labels"))
            except JobVariableError:
                labels = frozenset()  # claim it: the worker fails it, naming the variable
            if not labels_match(labels, self.config.labels):
                log.debug("flow run %s needs labels %s: not for us", flow_run["id"], sorted(labels))
                continue
            if claimed >= free:
                self.backlog = not self.spool_error  # a worker is short, not the disk
                break
            try:
                if self.claim(flow_run, job_variables):
                    claimed += 1
            except SpoolError as exc:
                self.spool_error = str(exc)
                log.error("spool not writable, claiming nothing: %s", exc)
                break
        return claimed

    def _job_variables(
        self, flow_run: dict[str, Any], cache: dict[str, dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Pool defaults < deployment < flow run; None when the deployment is gone."""
        deployment_id = flow_run.get("deployment_id")
        deployment: dict[str, Any] | None = {}
        if deployment_id:
            if deployment_id not in cache:
                try:
                    cache[deployment_id] = self.client.read_deployment(deployment_id)
                except NotFoundError:
                    cache[deployment_id] = None
            deployment = cache[deployment_id]
            if deployment is None:
                self._cancel_orphan(flow_run["id"], deployment_id)
                return None
        return merge_job_variables(
            self._pool_defaults,
            (deployment or {}).get("job_variables"),
            flow_run.get("job_variables"),
        )

    def _cancel_orphan(self, flow_run_id: str, deployment_id: str) -> None:
        message = f"Deployment {deployment_id} was deleted; flow run cancelled, not run."
        state = {"type": "CANCELLED", "name": "Cancelled", "message": message}
        answer = self.client.set_flow_run_state(flow_run_id, state)
        log.warning("flow run %s: %s (%s)", flow_run_id, message, answer.get("status"))

    def claim(self, flow_run: dict[str, Any], job_variables: dict[str, Any]) -> bool:
        with run_context(flow_run["id"]):
            return self._claim(flow_run, job_variables)

    def _claim(self, flow_run: dict[str, Any], job_variables: dict[str, Any]) -> bool:
        """Write ahead, propose Pending, then publish (ours) or discard (not ours)."""
        run_id = flow_run["id"]
        transition_id = str(uuid.uuid4())
        spec = self._spec(flow_run, job_variables, transition_id, time.time())
        self.spool.write_ahead(run_id, dumps(spec))
        try:
            answer = self.client.set_flow_run_state(run_id, pending_state(transition_id))
        except ApiError:
            # The server may have committed the claim: the spec stays in tmp/ and the
            # next reconcile asks the server whose Pending it is.
            log.warning("flow run %s: claim reply lost; will reconcile", run_id)
            raise
        result = interpret(answer, transition_id)
        if result.claim is Claim.ACCEPTED:
            if _CRASH_AFTER_CLAIM:
                os._exit(70)  # the fault-injection seam above
            self._submitted(run_id, spec.cloud_logs)
            self.spool.publish(run_id)
            metrics.CLAIMED.inc()
            log.info("flow run %s (%s) claimed", run_id, spec.flow_run_name)
            self._label(run_id)
            return True
        self.spool.discard(run_id)
        if result.claim is Claim.WAIT:
            log.info("flow run %s: server asks to wait %.1fs", run_id, result.delay)
        else:
            metrics.CLAIM_CONFLICTS.labels(result.claim.value).inc()
            log.info("flow run %s not claimed (%s): %s", run_id, result.claim.value, result.reason)
        return False

    def _spec(
        self,
        flow_run: dict[str, Any],
        job_variables: dict[str, Any],
        transition_id: str,
        claimed_at: float,
    ) -> JobSpec:
        """The spec of a run claimed (or, for a stranded run, claimed earlier) by this agent,
        with the agent's settings of now."""
        return JobSpec(
            flow_run_id=flow_run["id"],
            pool=self.config.pool,
            transition_id=transition_id,
            agent_name=self.config.name,
            flow_run_name=flow_run.get("name") or "",
            deployment_id=flow_run.get("deployment_id"),
            scheduled_start=flow_run.get("next_scheduled_start_time")
            or flow_run.get("expected_start_time"),
            claimed_at=claimed_at,
            job_variables=job_variables,
            env_vars=dict(self.config.env_vars),
            import_paths=list(self.config.import_paths),
            show_flow_logs=self.config.show_flow_logs,
            cloud_logs=self.config.cloud_logs,
        )

    def _submitted(self, run_id: str, cloud_logs: bool) -> None:
        """The run's first line in Prefect's UI. Emitted before the spec is published, so
        that it is timestamped before anything a worker says about the run."""
        if cloud_logs:
            self.runlogs.emit(
                run_id,
                f"Submitted for execution by agent {self.config.name!r} on {self.config.hostname}",
            )

    def _label(self, run_id: str) -> None:
        labels = {
            WORKER_LABEL: self.config.name,
            POOL_LABEL: self.config.pool,
            HOST_LABEL: self.config.hostname,
        }
        try:
            self.client.update_flow_run_labels(run_id, labels)
        except ApiError as exc:
            log.warning("flow run %s: could not label it: %s", run_id, exc)

    def reconcile_tmp(self) -> None:
        """Settle write-ahead specs left by a lost reply or a crash between claim and publish.

        This poller is the spool's only writer (it holds the poller lock), so at the
        start of a tick nothing in tmp/ is in flight.
        """
        for run_id in self.spool.run_ids(TMP):
            with run_context(run_id):
                self._reconcile_one(run_id)

    def _reconcile_one(self, run_id: str) -> None:
        try:
            spec = loads(self.spool.read(TMP, run_id))
        except (OSError, SpecError):
            self.spool.discard(run_id)  # never complete, so never used to claim
            return
        try:
            flow_run = self.client.read_flow_run(run_id)
        except NotFoundError:
            self.spool.discard(run_id)
            return
        if is_our_pending(flow_run.get("state"), spec.transition_id):
            log.info("flow run %s: earlier claim had succeeded; publishing", run_id)
            self._submitted(run_id, spec.cloud_logs)
            self.spool.publish(run_id)
            metrics.CLAIMED.inc()
            self._label(run_id)
        else:
            self.spool.discard(run_id)

    # -- stranded runs ---------------------------------------------------------------

    def _reconcile_stranded_if_due(self) -> None:
        """At the first tick, then every STRANDED_CHECK_SECONDS. A failed look is logged
        and retried sooner; it never stops the poll that follows (claims go on)."""
        if time.monotonic() < self._next_stranded_check:
            return
        try:
            self.reconcile_stranded()
        except SpoolError as exc:
            self.spool_error = str(exc)
            self._stranded_failed(exc)
        except ApiError as exc:
            self._stranded_failed(exc)
        else:
            self._next_stranded_check = time.monotonic() + defaults.STRANDED_CHECK_SECONDS

    def _stranded_failed(self, exc: Exception) -> None:
        retry = defaults.STRANDED_RETRY_SECONDS
        log.error("looking for stranded flow runs failed, will retry in %.0fs: %s", retry, exc)
        self._next_stranded_check = time.monotonic() + retry

    def reconcile_stranded(self) -> None:
        """Settle runs Prefect shows Pending or Running for this agent on this host (by the
        labels `_label` puts on each claim) that the spool has no spec for, and that no
        process on this host runs: the spool was lost, emptied or replaced.

        - Pending, never started here (no runs/<id>/): spooled again (written ahead, then
          published) with the transition id of its Pending, so a worker runs it.
        - Started here (runs/<id>/ exists), or Running: it may have run, in part or
          whole, and running it again could repeat its effects. Reported Crashed with a
          message saying why; Prefect's retry policy decides what follows.

        Never touched: a run with a spec in any spool folder (its worker settles it), a
        run labelled for another agent or host, and a run whose state is younger than
        `stranded_after` (see defaults.STRANDED_AFTER_SECONDS).
        """
        now = time.time()
        deployments: dict[str, dict[str, Any] | None] = {}
        for flow_run in self._our_live_runs():
            with run_context(flow_run["id"]):
                try:
                    self._reconcile_stranded_one(flow_run, now, deployments)
                except NotFoundError as exc:  # deleted meanwhile: nothing left to settle
                    log.info("flow run %s is gone: %s", flow_run["id"], exc)

    def _our_live_runs(self) -> list[dict[str, Any]]:
        """Runs of this pool in Pending or Running that carry this agent's and this
        host's labels. The server cannot filter on labels: that part is done here."""
        ours: list[dict[str, Any]] = []
        offset = 0
        while True:
            body = {
                "flow_runs": {"state": {"type": {"any_": list(LIVE_STATE_TYPES)}}},
                "work_pools": {"name": {"any_": [self.config.pool]}},
                "sort": "ID_DESC",
                "limit": defaults.STRANDED_PAGE,
                "offset": offset,
            }
            page = self.client.filter_flow_runs(body)
            ours.extend(run for run in page if self._stranded_candidate(run))
            # Runs changing state between pages may be skipped: the next look finds them.
            if len(page) < defaults.STRANDED_PAGE:
                return ours
            offset += len(page)

    def _stranded_candidate(self, flow_run: dict[str, Any]) -> bool:
        """Labelled for this agent and host. The state and pool are checked again: a
        server that ignored part of the filter must not get a Scheduled run (a retry
        waiting its turn keeps our labels) or another pool's run marked Crashed."""
        labels = flow_run.get("labels")
        state = flow_run.get("state") or {}
        return (
            isinstance(labels, dict)
            and labels.get(WORKER_LABEL) == self.config.name
            and labels.get(HOST_LABEL) == self.config.hostname
            and state.get("type") in LIVE_STATE_TYPES
            and flow_run.get("work_pool_name") in (None, self.config.pool)
        )

    def _reconcile_stranded_one(
        self,
        flow_run: dict[str, Any],
        now: float,
        deployments: dict[str, dict[str, Any] | None],
    ) -> None:
        run_id = flow_run["id"]
        state = flow_run.get("state") or {}
        # Specs only move forward (tmp -> new -> cur -> done|failed) and `contains` looks
        # in that order, so a spec moving while we look is still found.
        if self.spool.contains(run_id) is not None:
            return
        since = parse_api_time(state.get("timestamp"))
        if since is None or now - since < self.config.stranded_after:
            return  # a claim of a moment ago (a future time: clocks disagree; wait too)
        if runs_flow(run_id):
            log.warning(
                "flow run %s is %s with no spec in the spool, but a process on this host "
                "runs it: left alone",
                run_id,
                state.get("type"),
            )
            return
        started = (self.spool.dir(RUNS) / run_id).exists()
        if state.get("type") == "PENDING" and not started:
            self._respool(flow_run, since, deployments)
        else:
            self._crash_stranded(run_id, state.get("type"), started)

    def _respool(
        self,
        flow_run: dict[str, Any],
        claimed_at: float,
        deployments: dict[str, dict[str, Any] | None],
    ) -> None:
        """Spool a run claimed here that never started, as `claim` would have. Not counted
        in agent_flow_runs_claimed_total: the claim was counted when it was made."""
        run_id = flow_run["id"]
        job_variables = self._job_variables(flow_run, deployments)
        if job_variables is None:
            return  # its deployment is gone: cancelled, as a fresh claim would be
        details = (flow_run.get("state") or {}).get("state_details") or {}
        # Our Pending's transition id, so that a crash between the write-ahead and the
        # publish is settled by reconcile_tmp like any claim.
        transition_id = details.get("transition_id") or str(uuid.uuid4())
        spec = self._spec(flow_run, job_variables, transition_id, claimed_at)
        self.spool.write_ahead(run_id, dumps(spec))
        self.spool.publish(run_id)
        message = (
            f"Claimed by agent {self.config.name!r} on {self.config.hostname} but missing "
            "from its spool, and never started: spooled again"
        )
        log.warning("flow run %s (%s): %s", run_id, spec.flow_run_name, message)
        if spec.cloud_logs:
            self.runlogs.emit(run_id, message, logging.WARNING)

    def _crash_stranded(self, run_id: str, state_type: object, started: bool) -> None:
        message = (
            f"Flow run {run_id} was claimed by agent {self.config.name} on "
            f"{self.config.hostname}, which has no record of it running (spec lost); "
            "marked Crashed instead of running it again."
        )
        answer = self.client.set_flow_run_state(
            run_id, {"type": "CRASHED", "name": "Crashed", "message": message}
        )
        status = answer.get("status")
        why = "its run folder exists" if started else f"it is {state_type}"
        if status == "ACCEPT":
            log.warning("%s (%s)", message, why)
        else:  # ABORT: it reached a final state meanwhile
            reason = (answer.get("details") or {}).get("reason") or ""
            log.info("flow run %s: not marked Crashed (%s): %s", run_id, status, reason)

    # -- cancellation ----------------------------------------------------------------

    def check_cancellations_if_due(self) -> None:
        """Every CANCEL_CHECK_SECONDS, from the loop's tick and from its sleep. A failed
        look is logged and retried at the next check; it never stops a poll."""
        if time.monotonic() < self._next_cancel_check:
            return
        self._next_cancel_check = time.monotonic() + defaults.CANCEL_CHECK_SECONDS
        try:
            self.check_cancellations()
        except (ApiError, SpoolError) as exc:
            log.error("looking for cancelled flow runs failed, will retry: %s", exc)
            if isinstance(exc, ApiError) and _outage(exc):
                # Seen between polls: the outage starts now (health says so, the sleep
                # probes instead of calling, and the next round makes single attempts).
                self.last_error = str(exc)
                self._api_away(exc)

    def check_cancellations(self) -> None:
        """Act on runs set to Cancelling in Prefect whose spec this spool holds: a waiting
        one is moved to done/ and marked Cancelled here; for a running one the worker
        that runs it is asked (runs/<id>/cancel) to stop its processes, and reports.

        The server is asked only about the runs in new/ and cur/, by id: a run is ours
        when this spool holds its spec (labels may be missing when labelling failed), and
        with an empty spool nothing is asked at all. A run the spool does not hold is
        someone else's to stop: ignored.
        """
        waiting, running = self.spool.run_ids(NEW), self.spool.run_ids(CUR)
        ids = [*waiting, *running]
        for start in range(0, len(ids), defaults.STRANDED_PAGE):
            for flow_run in self._cancelling(ids[start : start + defaults.STRANDED_PAGE]):
                with run_context(flow_run["id"]):
                    self._cancel_one(flow_run["id"])

    def _cancelling(self, ids: list[str]) -> list[dict[str, Any]]:
        body = {
            "flow_runs": {
                "id": {"any_": ids},
                "state": {"type": {"any_": ["CANCELLING"]}},
            },
            "work_pools": {"name": {"any_": [self.config.pool]}},
            "limit": len(ids),
        }
        # Its own call name: its latency metric and its fakes apart from the stranded look.
        page = self.client.request("cancelling_flow_runs", "POST", "/flow_runs/filter", body)
        wanted = set(ids)
        # Checked again: a server ignoring part of the filter must not cancel a live run.
        return [
            run
            for run in page or []
            if isinstance(run, dict)
            and run.get("id") in wanted
            and (run.get("state") or {}).get("type") == "CANCELLING"
        ]

    def _cancel_one(self, run_id: str) -> None:
        # Waiting first: a spec moves new -> cur, so one taken meanwhile is found in cur/.
        reason = f"Cancelled by agent {self.config.name} before it started"
        try:
            spec = loads(self.spool.read(NEW, run_id))
        except (OSError, SpecError):
            spec = None
        if spec is not None and self.spool.cancel_waiting(run_id, reason):
            self._report_cancelled_waiting(run_id, reason, spec.cloud_logs)
            return
        try:
            spec = loads(self.spool.read(CUR, run_id))
        except (OSError, SpecError):
            return  # finished meanwhile, or refused: its worker settles it
        reason = f"Cancelling in Prefect: agent {self.config.name} asked its worker to stop it"
        if self.spool.request_cancel(run_id, spec.transition_id, reason):
            log.info("flow run %s is cancelling: asked its worker to stop it", run_id)

    def _report_cancelled_waiting(self, run_id: str, reason: str, cloud_logs: bool) -> None:
        metrics.FINISHED.labels("cancelled").inc()
        log.info("flow run %s: %s", run_id, reason)
        if cloud_logs:
            self.runlogs.emit(run_id, reason)
        state = {"type": "CANCELLED", "name": "Cancelled", "message": reason}
        try:
            answer = self.client.set_flow_run_state(run_id, state, force=True)
        except ApiError as exc:
            # The spec is retired already: the report waits in the outbox.
            log.error(
                "flow run %s: removed from the spool, but not marked Cancelled: %s", run_id, exc
            )
            if worth_keeping(exc):
                try:
                    self.outbox.put(state_report(run_id, state, True, "poller"))
                except SpoolError as spool_exc:
                    log.error("the Cancelled report is lost: %s", spool_exc)
            return
        if answer.get("status") != "ACCEPT":
            log.warning("flow run %s: Cancelled not accepted: %s", run_id, answer.get("details"))

    # -- health ----------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Each check with ``ok``, a ``reason`` when failing, and its values. Reads only
        what the loop keeps and the spool's files: never the API, so it answers fast."""
        now = time.time()
        max_age = max(3 * self.config.poll_interval_max, 30.0)
        since = self.last_success if self.last_success is not None else self.started_at
        age = now - since
        poll_ok = age <= max_age
        what = "since the agent started" if self.last_success is None else "for"
        poll_reason = None
        if not poll_ok:
            poll_reason = f"no successful poll {what} {age:.0f}s (limit {max_age:.0f}s)"
            if self.last_error:
                poll_reason += f": {self.last_error}"
        workers = self.registry.counts()
        live = workers[IDLE] + workers["busy"]
        # Crash-looping workers are alive but wait before taking runs: name each.
        looping = self.registry.crash_looping()
        workers_reason = None
        if looping:
            workers_reason = "; ".join(w.describe_backoff(now) for w in looping)
        elif not live:
            workers_reason = f"no live worker process ({workers['dead']} dead)"
        backoff = [{"worker_id": w.worker_id, "exits": w.exits, "until": w.until} for w in looping]
        spool_error = self.spool_error or (
            None if self.spool.writable() else "not writable (read-only or permissions)"
        )
        spool_reason = None if spool_error is None else f"spool {self.spool.root}: {spool_error}"
        api_reason = None
        waiting = self.outbox.count()
        if self.api_down_since is not None:
            api_reason = (
                f"the Prefect API has been unavailable for {now - self.api_down_since:.0f}s, "
                f"claiming nothing: {self.last_error}"
            )
            if waiting:
                api_reason += f"; {waiting} reports wait in the outbox"
        checks: dict[str, Any] = {
            "api": {
                "ok": api_reason is None,
                "reason": api_reason,
                "unavailable_since": self.api_down_since,
                "outbox_reports": waiting,
            },
            "poll": {
                "ok": poll_ok,
                "reason": poll_reason,
                "last_successful_poll_age_seconds": (
                    None if self.last_success is None else round(now - self.last_success, 3)
                ),
                "max_age_seconds": max_age,
                "last_error": self.last_error,
            },
            "workers": {
                "ok": live > 0 and not looping,
                "reason": workers_reason,
                **workers,
                **({"crash_looping": backoff} if backoff else {}),
            },
            "spool": {
                "ok": spool_error is None,
                "reason": spool_reason,
                "path": str(self.spool.root),
                "depth": self.spool.depth(),
            },
        }
        return all(c["ok"] for c in checks.values()), checks


def _outage(exc: ApiError) -> bool:
    """The API is away or failing (as opposed to refusing us: auth, 4xx)."""
    return isinstance(exc, TransientApiError) or exc.status is None or exc.status >= 500
