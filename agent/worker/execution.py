"""One claimed run on a worker: check it, start its process, watch it, settle it.

What to do at each step is decided by agent/core/lifecycle.py (`before_start`,
`after_exit`); states go through the reporter. The facts gathered here: the run as
Prefect shows it, how its process ended, and how far a cancellation got.

- Before a flow starts its run is read: one that is final, Cancelling, deleted, whose
  deployment is gone, or that is no longer our Pending is settled without starting.
  While the API cannot be reached nothing is started (the engine could not report).
- After its process ends the run is read again; while the API is away the worker waits
  (the spec stays in cur/, so a stop hands it to adoption with its exit status).
- Cancellation: the poller's request (``runs/<id>/cancel``) makes the worker send SIGTERM
  to the run's process group, SIGKILL after ``cancel_grace`` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.api.client import PrefectClient
from agent.api.parse import parse_api_time
from agent.api.reporter import Reporter
from agent.core import lifecycle
from agent.core.causes import Cause
from agent.core.environment import build_argv, build_env
from agent.core.errors import ApiError, JobVariableError, NotFoundError, SpoolError
from agent.core.jobvars import validate_job_variables
from agent.core.lifecycle import After, Cancel, Proposal, Start
from agent.core.limits import Limits
from agent.core.spec import JobSpec
from agent.core.states import RunState, StateType
from agent.observe import metrics
from agent.settings.config import WorkerConfig
from agent.spool.moves import CUR, Lease, Spool
from agent.spool.takes import Takes
from agent.worker.adopt import LOST_MESSAGE, Found, classify
from agent.worker.cgroups import NONE_DISABLED
from agent.worker.contain import Contain, Ending, Plan
from agent.worker.launcher import ExitStatus, Launcher, RunHandle, read_status
from agent.worker.procid import ProcessId
from agent.worker.reading import UNREAD, CancelAsked, RunReader, Unread
from agent.worker.runcgroup import RunCgroup
from agent.worker.stopping import Stopper, Stopping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """How a run left this worker: ``note`` goes beside its spec in done/ (an outcome
    such as "completed", or what Prefect shows, e.g. "paused"); ``shown`` is counted."""

    note: str
    shown: StateType | None = None
    cause: Cause = Cause.NOT_STARTED


class Execution:
    """Runs and settles claimed runs for one worker process."""

    def __init__(
        self,
        config: WorkerConfig,
        client: PrefectClient,
        spool: Spool,
        reporter: Reporter,
        launcher: Launcher,
        environ: Mapping[str, str],
        stop: threading.Event,
        contain: Contain | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.spool = spool
        self.reporter = reporter
        self.launcher = launcher
        self.environ = environ
        self._stop = stop
        self.who = f"agent worker {config.worker_id}"
        self.contain = contain or Contain(config.containment, NONE_DISABLED)
        self.stopper = Stopper(config, spool, self._run_log)
        self.reader = RunReader(client, spool, stop)

    # -- a run taken from new/ ---------------------------------------------------------

    def run(self, lease: Lease, spec: JobSpec, restarts: int = 0) -> Settled | None:
        """None: the worker is stopping and leaves the spec in cur/ for adoption."""
        run_id = spec.flow_run_id
        try:
            argv, env, cwd, plan = self._prepare(spec)
        except JobVariableError as exc:
            message = f"Flow run {run_id} cannot start: {exc}"
            return self._propose(spec, lifecycle.failed(message), "failed")
        if restarts == 0:
            before = self._before_start(spec)
            if before is not None:
                return before if isinstance(before, Settled) else None
            for warning in plan.warnings:
                log.warning("flow run %s: %s", run_id, warning)
                self._run_log(spec, warning, logging.WARNING)
        prefix = f"[{spec.flow_run_name or run_id}] " if spec.show_flow_logs else None
        try:
            # From here a worker's death is no longer the spec's (agent/core/poison.py).
            Takes(self.spool.dir(CUR)).starting(lease.run_id, lease.data)
        except OSError as exc:
            log.warning("flow run %s: cannot record that it starts: %s", run_id, exc)
        while True:
            cgroup = self.contain.cgroup(run_id, spec.transition_id)
            try:
                run_dir = self.spool.execution_dir(run_id, spec.transition_id)
                cgroup.create(plan.limits)
                handle = self.launcher.start(
                    argv, env, cwd, run_dir, [lease.fd], prefix, cgroup.dirs
                )
            except (OSError, ValueError, SpoolError) as exc:
                # ValueError: what exec refuses (a NUL byte) fails this run, never the worker.
                cgroup.remove(patience=0)
                message = f"Flow run {run_id} could not be started: {exc}"
                return self._propose(spec, lifecycle.failed(message), "failed")
            status, stopping, took = self._watch(
                handle, spec, run_dir, restarts, cgroup, plan.limits
            )
            ending = self._end(spec, cgroup, status, plan.limits, stopping, took)
            settled = self.settle(spec, ending, stopping, restarts, run_dir)
            if settled is not RESTART:
                return settled if isinstance(settled, Settled) else None
            restarts += 1

    def _prepare(self, spec: JobSpec) -> tuple[list[str], dict[str, str], str, Plan]:
        """argv, environment, cwd and limits from the spec; JobVariableError names what
        is wrong (a bad limit, one above this host's ceiling or one it cannot enforce)."""
        job = validate_job_variables(spec.job_variables)
        plan = self.contain.plan(job.limits)
        cwd = job.working_dir or os.getcwd()
        if job.working_dir and not os.path.isdir(job.working_dir):
            raise JobVariableError(f"nonexistent `working_dir` configured: {job.working_dir}")
        env = build_env(
            self.environ,
            working_dir=cwd,
            import_paths=spec.import_paths,
            agent_env=spec.env_vars,
            run_env=job.env,
            api_url=self.config.api.url,
            secret_env=self.config.api.secret_env(),
            flow_run_id=spec.flow_run_id,
            logs_to_api=spec.cloud_logs,
        )
        return build_argv(job.command, self.config.flow_python), env, cwd, plan

    def _before_start(self, spec: JobSpec) -> Settled | Unread | None:
        """How the run was settled without starting, or None to start it."""
        run_id = spec.flow_run_id
        flow_run = self.reader.read(spec, "start", cancellable=True)
        if isinstance(flow_run, Unread):
            log.info("stopping: flow run %s, not started, is left to the next worker", run_id)
            return UNREAD
        if isinstance(flow_run, CancelAsked):
            message = f"Cancelled by {self.who} before it started"
            return self._propose(spec, lifecycle.cancelled(message), "cancelled")
        gone = flow_run is not None and self.reader.deployment_gone(flow_run.deployment_id)
        decision = lifecycle.before_start(flow_run, spec.transition_id, gone, self.who)
        if decision.action is Start.START:
            return None
        log.warning("flow run %s not started: %s", run_id, decision.why)
        if decision.proposal is not None:
            return self._propose(spec, decision.proposal, decision.proposal.type.lower())
        self._run_log(spec, f"Not started by {self.who}: {decision.why}")
        kind = flow_run.state_type if flow_run else None
        return Settled(kind.lower() if kind else "not started", kind)

    def _watch(
        self,
        handle: RunHandle,
        spec: JobSpec,
        run_dir: Path,
        restarts: int,
        cgroup: RunCgroup,
        limits: Limits,
    ) -> tuple[ExitStatus, Stopping | None, float]:
        run_id = spec.flow_run_id
        started = time.monotonic()
        metrics.STARTED.inc()
        scheduled = parse_api_time(spec.scheduled_start)
        if scheduled is not None and restarts == 0:
            metrics.START_DELAY.observe(max(0.0, time.time() - scheduled))
        log.info("flow run %s started: pid %s", run_id, handle.pid)
        again = f" (start {restarts + 1})" if restarts else ""
        bounds = f"; limits: {limits.describe()}" if limits.describe() else ""
        how = f" ({handle.note})" if handle.note else ""
        if handle.note.startswith("cold start:"):
            log.info("flow run %s: %s", run_id, handle.note)
        self._run_log(
            spec,
            f"Process started by worker {self.config.worker_id} on {self.config.hostname}: "
            f"PID {handle.pid}{how}{again}{bounds}",
        )
        self.reporter.infrastructure_pid(run_id, f"{self.config.hostname}:{handle.pid}")
        # Wall time counts from the process start; each restart has the whole timeout.
        deadline = started + limits.timeout if limits.timeout is not None else None
        stopping: Stopping | None = None
        while True:
            status = handle.wait(timeout=self.config.cancel_watch)
            if status is not None:
                break
            stopping = self.stopper.step(spec, run_dir, cgroup, stopping, deadline)
        duration = time.monotonic() - started
        metrics.RUN_DURATION.observe(duration)
        return status, stopping, duration

    def _end(
        self,
        spec: JobSpec,
        cgroup: RunCgroup,
        status: ExitStatus,
        limits: Limits,
        stopping: Stopping | None,
        took: float | None,
        lost: bool = False,
    ) -> Ending:
        """What the run left behind is killed, and how it ended is said once."""
        cancelled = stopping is not None and stopping.stage is Cancel.SIGNALLED
        timed_out = stopping is not None and stopping.timed_out
        ending = self.contain.end(cgroup, status, limits, timed_out, cancelled, lost)
        log.info("flow run %s process %s", spec.flow_run_id, ending.describe())
        quiet = status.returncode == 0 or (stopping is not None and not timed_out)
        level = logging.INFO if quiet else logging.WARNING
        self._run_log(spec, f"Process {ending.describe(took)}", level)
        return ending

    # -- after the process ended ----------------------------------------------------------

    def settle(
        self,
        spec: JobSpec,
        ending: Ending,
        stopping: Stopping | None,
        restarts: int,
        run_dir: Path,
    ) -> Settled | _Restart | Unread:
        """Read the run and do what `lifecycle.after_exit` says."""
        run_id = spec.flow_run_id
        cause = ending.death.cause
        cancel = stopping.stage if stopping else Cancel.NONE
        if cancel is Cancel.NONE and self.spool.cancel_requested(run_id, spec.transition_id):
            cancel = Cancel.ASKED
        current: RunState | None = None
        api_away = False
        if cancel is Cancel.SIGNALLED:
            # Do not wait: a Cancelled kept in the outbox is right whatever the API says.
            try:
                current = self.client.read_flow_run(run_id).state
            except NotFoundError:
                return Settled("deleted", cause=cause)
            except ApiError as exc:
                log.error("flow run %s: cannot read its state: %s", run_id, exc)
                api_away = True
        else:
            flow_run = self.reader.read(spec, "settle")
            if isinstance(flow_run, (Unread, CancelAsked)):  # not cancellable: only Unread
                log.info("stopping: flow run %s, ended, is left to the next worker", run_id)
                return UNREAD
            if flow_run is None:
                return Settled("deleted", cause=cause)
            current = flow_run.state
        decision = lifecycle.after_exit(
            ending.death.text,
            current,
            spec.transition_id,
            cancel,
            restarts,
            self.who,
            api_away,
            stopping.describe() if stopping else "",
            timed_out=ending.timeout if cause is Cause.TIMEOUT else None,
            oom=cause is Cause.OOM,
        )
        if decision.action is After.RESTART:
            log.warning("flow run %s: %s; starting it again", run_id, decision.why)
            self._run_log(spec, f"Process {decision.why}: {self.who} starts it again")
            return RESTART
        if decision.proposal is not None:
            proposed = decision.proposal.type
            if proposed is StateType.CRASHED or cause in (Cause.OOM, Cause.TIMEOUT):
                self._flight_recorder(spec, run_dir)
            send = not api_away
            settled = self._propose(spec, decision.proposal, proposed.lower(), send)
            return Settled(settled.note, settled.shown, cause)
        kind = current.type if current else None
        log.info("flow run %s: nothing to report: %s", run_id, decision.why)
        if kind is not None and not lifecycle.is_final(kind):
            self._run_log(spec, f"Process ended; {decision.why}")
        if kind is StateType.CRASHED or cause is Cause.OOM:
            self._flight_recorder(spec, run_dir)
        return Settled(kind.lower() if kind else "unknown", kind, cause)

    def _flight_recorder(self, spec: JobSpec, run_dir: Path) -> None:
        """The last lines of a run that died go to its Prefect log: whoever opens the
        run sees why without logging in to the host."""
        secrets = [*self.config.api.secret_env().values(), *spec.env_vars.values()]
        message = self.contain.flight_record(run_dir, secrets)
        if message:
            self._run_log(spec, message, logging.WARNING)

    def _propose(self, spec: JobSpec, proposal: Proposal, note: str, send: bool = True) -> Settled:
        reported = self.reporter.propose(
            spec.flow_run_id, proposal, cloud_logs=spec.cloud_logs, send=send
        )
        shown = reported.shown
        return Settled(shown.lower() if shown and lifecycle.is_final(shown) else note, shown)

    def _run_log(self, spec: JobSpec, message: str, level: int = logging.INFO) -> None:
        if spec.cloud_logs:
            self.reporter.run_log(spec.flow_run_id, message, level)

    # -- a run whose worker died ----------------------------------------------------------

    def adopt(self, lease: Lease, spec: JobSpec) -> Settled | None:
        """Finish what the dead worker started; never start a run twice. Where the host
        has cgroups the run is alive while its cgroup holds a process."""
        run_id = spec.flow_run_id
        run_dir = self.spool.execution_dir(run_id, spec.transition_id)
        cgroup = self.contain.cgroup(run_id, spec.transition_id)
        contained = cgroup.exists()

        def alive(flow: ProcessId) -> bool:
            return cgroup.populated() if contained else flow.alive()

        recorded = read_status(run_dir)
        orphan = classify(recorded, alive)
        how = (
            "taken up again after its worker let go of it"
            if lease.let_go
            else "adopted after its worker died"
        )
        log.warning("flow run %s: %s; it %s", run_id, how, orphan.found.value)
        if orphan.found is Found.NEVER_STARTED:
            cgroup.remove(patience=0)
            return self.run(lease, spec)  # which reads the run first: final ones are kept
        limits = self._limits(spec)
        status = orphan.status or ExitStatus(None, LOST_MESSAGE)
        stopping: Stopping | None = None
        if orphan.flow is not None:
            self._run_log(
                spec,
                f"Worker {self.config.worker_id} on {self.config.hostname} took over watching "
                f"the flow run's process (PID {orphan.flow.pid}) after its worker died",
            )
            deadline = None
            started = recorded.get("started")
            if limits.timeout is not None and isinstance(started, (int, float)):
                deadline = time.monotonic() + started + limits.timeout - time.time()
            while alive(orphan.flow):
                if self._stop.wait(self.config.cancel_watch):
                    log.info("stopping: flow run %s is left to the next worker", run_id)
                    return None
                stopping = self.stopper.step(spec, run_dir, cgroup, stopping, deadline)
            status = ExitStatus(None, LOST_MESSAGE)
            ended = read_status(run_dir).get("returncode")
            if isinstance(ended, int):
                status = ExitStatus(ended)
        lost = status.error == LOST_MESSAGE
        ending = self._end(spec, cgroup, status, limits, stopping, None, lost)
        settled = self.settle(spec, ending, stopping, 0, run_dir)
        if settled is RESTART:
            return self.run(lease, spec, restarts=1)
        return settled if isinstance(settled, Settled) else None

    def _limits(self, spec: JobSpec) -> Limits:
        try:
            return self.contain.plan(validate_job_variables(spec.job_variables).limits).limits
        except JobVariableError:
            return Limits()


class _Restart:
    """`after_exit` said: start the process again."""


RESTART = _Restart()
