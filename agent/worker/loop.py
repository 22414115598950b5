"""A worker process: takes one spec at a time from the spool and runs its flow.

Loop: take the oldest spec (lease) -> check it -> start the flow through the launcher
-> wait -> settle: the engine reports Completed/Failed itself; if the run is not
final when its process ends, report Crashed -> move the spec to done/.

Before a flow starts the worker reads its run: one that is final or Cancelling already is
settled without starting, and while the API cannot be reached nothing is started (the
flow's engine could not report) until it answers again. A report the API cannot take
(Crashed, Cancelled, Failed, the infrastructure pid) is kept in the spool's outbox for
the poller to deliver once it can (agent/api/outbox.py).

Cancellation: while it waits, the worker looks for the poller's request
(``runs/<id>/cancel``, written when Prefect shows the run Cancelling). It then sends
SIGTERM to the run's process group, SIGKILL after ``cancel_grace`` seconds, and reports
Cancelled (forced: Prefect's engine answers SIGTERM by reporting Crashed itself).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent.api.client import FINAL_STATE_TYPES, PrefectClient, is_final, parse_api_time
from agent.api.outbox import Outbox, Report, pid_report, state_report, worth_keeping
from agent.api.runlogs import NoRunLogs, RunLogs
from agent.core.environment import build_argv, build_env
from agent.core.errors import (
    RET_OK,
    ApiError,
    JobVariableError,
    NotFoundError,
    SpecError,
    SpoolError,
)
from agent.core.jobvars import validate_job_variables
from agent.core.spec import JobSpec, loads
from agent.observe import metrics
from agent.observe.logs import run_context
from agent.settings import defaults
from agent.settings.config import WorkerConfig
from agent.spool.moves import RUNS, Lease, Spool
from agent.spool.registry import BUSY, IDLE, Registry
from agent.worker.adopt import LOST_MESSAGE, Found, classify
from agent.worker.launcher import ExitStatus, Launcher, RunHandle, read_status, signal_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    name: str  # completed | failed | crashed | cancelled
    message: str = ""


@dataclass
class Stopping:
    """A cancelled run's processes being stopped: when each signal went out."""

    term_at: float | None = None  # monotonic
    killed_after: float | None = None  # seconds from SIGTERM to SIGKILL

    def describe(self) -> str:
        if self.term_at is None:
            return "no signal was needed"
        if self.killed_after is None:
            return "SIGTERM"
        return f"SIGTERM, then SIGKILL after {self.killed_after:.0f} s"


@dataclass(frozen=True)
class _NotStarted:
    outcome: Outcome | None  # None: stopping, the run is left to the next worker


def _uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def crash_message(status: ExitStatus) -> str:
    return f"Flow run infrastructure {status.describe()} without reporting a final state."


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        client: PrefectClient,
        spool: Spool,
        registry: Registry,
        launcher: Launcher,
        environ: dict[str, str] | None = None,
        runlogs: RunLogs | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.spool = spool
        self.registry = registry
        self.launcher = launcher
        self.environ = dict(os.environ if environ is None else environ)
        self.runlogs: RunLogs = runlogs or NoRunLogs()
        self.outbox = Outbox(spool.root)
        self._stop = threading.Event()

    # -- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop.is_set():
            # A second signal: leave at once. The flow runs on in its own session.
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(RET_OK)
        log.info("%s: taking no new runs; the current one will finish", signal.Signals(signum).name)
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        self.spool.ensure()
        worker_id = self.config.worker_id
        # An entry left by the previous process with this id means it exited unexpectedly
        # (killed, or an error out of this loop): counted, and after too many of them in a
        # short time this process starts in backoff (agent/core/crashloop.py).
        joined = self.registry.register(worker_id, self.config.crash_loop)
        crashes = metrics.WORKER_CRASHES.labels(worker_id)  # exported at 0 from the start
        if joined.crashed:
            crashes.inc()
            if not joined.verdict.delay:
                log.warning(
                    "worker %s %s (its previous process did not exit cleanly)",
                    *(worker_id, joined.reason),
                )
        # A stop asked for (SIGTERM) is clean however it ends: a second signal's immediate
        # exit or supervisor's SIGKILL after stopwaitsecs must not count as a crash.
        finished = threading.Event()

        def note_stop() -> None:
            while not finished.is_set():
                if self._stop.wait(0.5):
                    self.registry.mark_stopping()
                    return

        threading.Thread(target=note_stop, name="stop-note", daemon=True).start()
        clean = False
        try:
            if joined.verdict.delay > 0:
                log.warning(
                    "worker %s %s; waiting %.0f s before taking runs",
                    *(worker_id, joined.reason, joined.verdict.delay),
                )
                if not self._stop.wait(joined.verdict.delay):
                    self.registry.set_state(IDLE)
                    log.info("worker %s: backoff over, taking runs", worker_id)
            log.info("worker %s ready, spool %s", worker_id, self.spool.root)
            while not self._stop.is_set():
                # Orphans first: they were claimed earlier, and may be running already.
                lease = self.spool.adopt() or self.spool.take()
                if lease is None:
                    self._stop.wait(self.config.idle_sleep)
                    continue
                spool_failed = False
                try:
                    self._set_state(BUSY, lease.run_id)
                    self.handle(lease)
                except (SpoolError, OSError) as exc:
                    # A full or failing disk: the spec stays in cur/, to be adopted (and
                    # settled without running again) once the disk recovers; the worker
                    # lives on rather than dying into a crash loop.
                    log.error(
                        "flow run %s: spool error, trying again in %.0fs: %s",
                        *(lease.run_id, defaults.SPOOL_RETRY_SECONDS, exc),
                    )
                    spool_failed = True
                finally:
                    lease.release()
                    self._set_state(IDLE)
                if spool_failed:
                    self._stop.wait(defaults.SPOOL_RETRY_SECONDS)
            clean = True
        finally:
            finished.set()
            if clean:
                self.registry.unregister()
            else:
                # An error escaping the loop: keep the entry, so that this exit shows as
                # dead and the next process with this id counts it.
                self.registry.release()
            metrics.mark_process_dead(os.getpid())
        log.info("worker %s stopped", worker_id)
        return RET_OK

    # -- one run ---------------------------------------------------------------------

    def handle(self, lease: Lease) -> None:
        try:
            spec = loads(lease.data)
            if spec.flow_run_id != lease.run_id:
                raise SpecError(
                    f"spec is for flow run {spec.flow_run_id}, file is {lease.run_id}", lease.run_id
                )
        except SpecError as exc:
            # Unreadable: the file's name is the id the poller claimed it under.
            self._refuse(lease, exc, exc.flow_run_id or _uuid_or_none(lease.run_id))
            return
        if self.config.pool and spec.pool != self.config.pool:
            # A run of another pool is not ours to fail.
            other = f"spec is for work pool {spec.pool!r}, this agent serves {self.config.pool!r}"
            self._refuse(lease, SpecError(other), None)
            return
        with run_context(spec.flow_run_id):
            outcome = self._adopt(lease, spec) if lease.adopted else self._run(lease, spec)
        if outcome is None:
            return  # stopping while watching an adopted run: the next worker takes it over
        self.spool.finish(lease, outcome.name)
        metrics.FINISHED.labels(outcome.name).inc()  # after: a failed finish is retried
        log.info("flow run %s finished: %s", spec.flow_run_id, outcome.name)

    def _set_state(self, state: str, flow_run_id: str | None = None) -> None:
        try:
            self.registry.set_state(state, flow_run_id)
        except OSError as exc:  # a full disk: the poller then counts this worker busy
            log.warning("cannot record worker state %s: %s", state, exc)

    def _refuse(self, lease: Lease, exc: SpecError, fail_run: str | None) -> None:
        reason = f"Unusable job spec: {exc}"
        log.error("flow run %s: %s; moved to failed/", lease.run_id, reason)
        if fail_run:
            self._report_failed(fail_run, reason)
        self.spool.refuse(lease, reason)

    def _run(self, lease: Lease, spec: JobSpec) -> Outcome | None:
        run_id = spec.flow_run_id
        try:
            job = validate_job_variables(spec.job_variables)
        except JobVariableError as exc:
            message = f"Flow run {run_id} cannot start: {exc}"
            return self._fail(run_id, message, spec)
        cwd = job.working_dir or os.getcwd()
        if job.working_dir and not os.path.isdir(job.working_dir):
            message = (
                f"Flow run {run_id} has a nonexistent `working_dir` configured: {job.working_dir}"
            )
            return self._fail(run_id, message, spec)
        env = build_env(
            self.environ,
            working_dir=cwd,
            import_paths=spec.import_paths,
            agent_env=spec.env_vars,
            run_env=job.env,
            api_url=self.config.api.url,
            secret_env=self.config.api.secret_env(),
            flow_run_id=run_id,
            logs_to_api=spec.cloud_logs,
        )
        argv = build_argv(job.command, self.config.flow_python)
        before = self._before_start(spec)
        if before is not None:
            return before.outcome
        prefix = f"[{spec.flow_run_name or run_id}] " if spec.show_flow_logs else None
        try:
            run_dir = self.spool.run_dir(run_id)
            handle = self.launcher.start(argv, env, cwd, run_dir, [lease.fd], prefix)
        except (OSError, SpoolError) as exc:
            message = f"Flow run {run_id} could not be started: {exc}"
            return self._fail(run_id, message, spec)
        started = time.time()
        metrics.STARTED.inc()
        scheduled = parse_api_time(spec.scheduled_start)
        if scheduled is not None:
            metrics.START_DELAY.observe(max(0.0, started - scheduled))
        log.info("flow run %s started: pid %s, %s", run_id, handle.pid, argv[0])
        self._run_log(
            spec,
            f"Process started by worker {self.config.worker_id} on {self.config.hostname}: "
            f"PID {handle.pid}",
        )
        self._report_pid(run_id, handle.pid)
        status, stopping = self._wait(handle, spec, run_dir)
        duration = time.time() - started
        metrics.RUN_DURATION.observe(duration)
        log.info("flow run %s process %s", run_id, status.describe())
        level = logging.INFO if status.returncode == 0 or stopping else logging.WARNING
        self._run_log(spec, f"Process {status.describe()} after {duration:.1f}s", level)
        return self._settle(run_id, spec, status, stopping)

    def _before_start(self, spec: JobSpec) -> _NotStarted | None:
        """Why the run must not start now, or None to start it. Waits while the API cannot
        be reached: an engine started then fails at once; later it runs normally."""
        run_id = spec.flow_run_id
        waiting_since: float | None = None
        while True:
            if self.spool.cancel_requested(run_id, spec.transition_id):
                message = f"Cancelled by agent worker {self.config.worker_id} before it started"
                self._run_log(spec, message)
                return _NotStarted(self._settle_cancelled(run_id, message))
            try:
                flow_run = self.client.read_flow_run(run_id, deadline=0.0)
                break
            except NotFoundError:
                log.warning("flow run %s no longer exists in Prefect: not started", run_id)
                return _NotStarted(Outcome("cancelled", "deleted in Prefect before it started"))
            except ApiError as exc:
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    log.warning("flow run %s waits for the Prefect API to start: %s", run_id, exc)
            if self._stop.wait(defaults.API_PROBE_SECONDS):
                log.info("stopping: flow run %s, not started, is left to the next worker", run_id)
                return _NotStarted(None)
        if waiting_since is not None:
            waited = time.monotonic() - waiting_since
            log.info("the Prefect API answers again after %.0fs: starting %s", waited, run_id)
        state_type = (flow_run.get("state") or {}).get("type")
        if is_final(flow_run):
            log.warning("flow run %s is %s already: not started", run_id, state_type)
            return _NotStarted(Outcome(str(state_type).lower()))
        if state_type == "CANCELLING":
            message = f"Cancelled by agent worker {self.config.worker_id} before it started"
            self._run_log(spec, message)
            return _NotStarted(self._settle_cancelled(run_id, message, state_type))
        return None

    def _wait(
        self, handle: RunHandle, spec: JobSpec, run_dir: Path
    ) -> tuple[ExitStatus, Stopping | None]:
        """Wait for the run's process, stopping it if the run is cancelled meanwhile."""
        stopping: Stopping | None = None
        while True:
            status = handle.wait(timeout=self.config.cancel_watch)
            if status is not None:
                return status, stopping
            stopping = self._cancel_step(spec, run_dir, stopping)

    def _cancel_step(
        self, spec: JobSpec, run_dir: Path, stopping: Stopping | None
    ) -> Stopping | None:
        """One look while a flow runs: notice a cancel request, send SIGTERM, and SIGKILL
        once the grace period has passed (again while the process lingers)."""
        run_id = spec.flow_run_id
        if stopping is None:
            if not self.spool.cancel_requested(run_id, spec.transition_id):
                return None
            stopping = Stopping()
        now = time.monotonic()
        if stopping.term_at is None:
            if self._signal(run_id, run_dir, signal.SIGTERM):
                stopping.term_at = now
                grace = self.config.cancel_grace
                log.info("flow run %s cancelled: SIGTERM sent, SIGKILL in %.0fs", run_id, grace)
                self._run_log(
                    spec,
                    f"Cancelling: worker {self.config.worker_id} sent SIGTERM to the flow run's "
                    f"processes; SIGKILL follows in {grace:.0f} s if they are still running",
                )
        elif now - stopping.term_at >= self.config.cancel_grace:
            killed = self._signal(run_id, run_dir, signal.SIGKILL)
            if killed and stopping.killed_after is None:
                stopping.killed_after = now - stopping.term_at
                log.warning("flow run %s: still running after SIGTERM; SIGKILL sent", run_id)
        return stopping

    def _signal(self, run_id: str, run_dir: Path, sig: signal.Signals) -> bool:
        try:
            who = signal_run(run_dir, sig)
        except OSError as exc:
            log.error("flow run %s: cannot send %s: %s", run_id, sig.name, exc)
            return False
        if who is None:
            log.debug("flow run %s: no live process to send %s to yet", run_id, sig.name)
        return who is not None

    def _adopt(self, lease: Lease, spec: JobSpec) -> Outcome | None:
        """A run whose worker died: finish what it started, never start it twice."""
        run_id = spec.flow_run_id
        orphan = classify(read_status(self.spool.dir(RUNS) / run_id), lambda p: p.alive())
        log.warning("flow run %s: adopted after its worker died; it %s", run_id, orphan.found.value)
        if orphan.found is Found.NEVER_STARTED:
            return self._run(lease, spec)  # which reads the run first: final ones are kept
        status = orphan.status or ExitStatus(None, LOST_MESSAGE)
        stopping: Stopping | None = None
        if orphan.flow is not None:
            self._run_log(
                spec,
                f"Worker {self.config.worker_id} on {self.config.hostname} took over watching "
                f"the flow run's process (PID {orphan.flow.pid}) after its worker died",
            )
            run_dir = self.spool.dir(RUNS) / run_id
            while orphan.flow.alive():
                if self._stop.wait(self.config.cancel_watch):
                    log.info("stopping: flow run %s is left to the next worker", run_id)
                    return None
                stopping = self._cancel_step(spec, run_dir, stopping)
        self._run_log(spec, f"Process {status.describe()} (seen after its worker died)")
        return self._settle(run_id, spec, status, stopping)

    def _run_log(self, spec: JobSpec, message: str, level: int = logging.INFO) -> None:
        """A line on the run's page in Prefect's UI, unless the agent has --no-cloud-logs."""
        if spec.cloud_logs:
            self.runlogs.emit(spec.flow_run_id, message, level)

    # -- reporting -------------------------------------------------------------------

    def _report_pid(self, run_id: str, pid: int) -> None:
        value = f"{self.config.hostname}:{pid}"
        try:
            self.client.set_infrastructure_pid(run_id, value)
        except ApiError as exc:
            log.warning("flow run %s: could not record infrastructure pid: %s", run_id, exc)
            if worth_keeping(exc):
                self._keep(pid_report(run_id, value, self._source))

    @property
    def _source(self) -> str:
        return f"worker {self.config.worker_id}"

    def _keep(self, report: Report) -> None:
        try:
            self.outbox.put(report)
        except SpoolError as exc:
            log.error("%s is lost: %s", report.describe(), exc)

    def _settle(
        self, run_id: str, spec: JobSpec, status: ExitStatus, stopping: Stopping | None = None
    ) -> Outcome:
        """The engine reports Completed/Failed itself; if it did not, report Crashed.
        A run being cancelled is reported Cancelled (see `_settle_cancelled`)."""
        send = True
        try:
            flow_run = self.client.read_flow_run(run_id)
        except ApiError as exc:
            log.error("flow run %s: cannot read its state: %s", run_id, exc)
            flow_run = {}
            # The API is away: the report goes straight to the outbox, whose delivery
            # reads the run first (a Completed the engine sent is kept).
            send = not worth_keeping(exc)
        state_type = (flow_run.get("state") or {}).get("type")
        if stopping is not None and stopping.term_at is not None:
            message = (
                f"Cancelled: the flow run's process was stopped by agent worker "
                f"{self.config.worker_id} ({stopping.describe()})"
            )
            return self._settle_cancelled(run_id, message, state_type, send)
        if (
            stopping is not None
            or state_type == "CANCELLING"
            or self.spool.cancel_requested(run_id, spec.transition_id)
        ):
            # Ended on its own while being cancelled (e.g. the engine, refused Running).
            message = f"Cancelled: the flow run's process {status.describe()} while cancelling"
            return self._settle_cancelled(run_id, message, state_type, send)
        if is_final(flow_run):
            return Outcome(str(flow_run["state"]["type"]).lower())
        message = crash_message(status)
        state = {"type": "CRASHED", "name": "Crashed", "message": message}
        final = self._propose(run_id, state, send=send)
        return Outcome(final or "crashed", message)

    def _settle_cancelled(
        self, run_id: str, message: str, state_type: object = None, send: bool = True
    ) -> Outcome:
        """Cancelled, unless the run is Cancelled already. Forced: on SIGTERM Prefect's
        engine forces Crashed ("aborted by a termination signal"), and the server takes
        nothing but Cancelled from Cancelling unforced."""
        if state_type == "CANCELLED":
            return Outcome("cancelled")
        if state_type in ("COMPLETED", "FAILED"):
            # It finished its work before the cancellation reached it: that is the truth.
            return Outcome(str(state_type).lower())
        log.info("flow run %s: %s", run_id, message)
        state = {"type": "CANCELLED", "name": "Cancelled", "message": message}
        self._propose(run_id, state, force=True, send=send)
        return Outcome("cancelled", message)

    def _fail(self, run_id: str, message: str, spec: JobSpec) -> Outcome:
        log.error("%s", message)
        self._run_log(spec, message, logging.ERROR)
        final = self._report_failed(run_id, message)
        return Outcome(final or "failed", message)

    def _report_failed(self, run_id: str, message: str) -> str | None:
        return self._propose(run_id, {"type": "FAILED", "name": "Failed", "message": message})

    def _propose(
        self, run_id: str, state: dict[str, Any], force: bool = False, send: bool = True
    ) -> str | None:
        """Propose a final state; returns the run's final state type (lower case) or None.

        ABORT means the run is final already (the engine got there first): keep that.
        Not ``send``: the API is known to be away; straight to the outbox.
        """
        if not send:
            self._keep(state_report(run_id, state, force, self._source))
            return None
        try:
            answer = self.client.set_flow_run_state(run_id, state, force)
        except ApiError as exc:
            log.error("flow run %s: could not report %s: %s", run_id, state["type"], exc)
            if worth_keeping(exc):
                self._keep(state_report(run_id, state, force, self._source))
            return None
        if answer.get("status") == "ACCEPT":
            return str(state["type"]).lower()
        current = answer.get("state") or {}
        reason = (answer.get("details") or {}).get("reason") or answer.get("status")
        log.info(
            "flow run %s: %s not accepted (%s); it is %s",
            run_id,
            state["type"],
            reason,
            current.get("type"),
        )
        kind = current.get("type")
        return str(kind).lower() if kind in FINAL_STATE_TYPES else None
