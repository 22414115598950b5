"""A worker process: takes one spec at a time from the spool and runs its flow.

Loop: adopt an orphaned spec in cur/ or take the oldest from new/ (a lease) -> check the
spec -> run it (agent/worker/execution.py: start, watch, settle) -> retire the spec to
done/ with its outcome. Only a spec's own data can fail its run; nothing a run brings
ends this loop. Signals only set a flag; a second one exits at once (the flow runs on in
its own session and is adopted later).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from types import FrameType

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox
from agent.api.reporter import Reporter
from agent.api.runlogs import RunLogs
from agent.core import lifecycle, poison
from agent.core.causes import Cause
from agent.core.errors import RET_OK, SpecError, SpoolError
from agent.core.spec import loads
from agent.observe import metrics
from agent.observe.logs import run_context
from agent.settings import defaults
from agent.settings.config import WorkerConfig
from agent.spool.moves import CUR, NEW, Lease, Spool
from agent.spool.registry import BUSY, IDLE, Registry
from agent.spool.takes import Takes
from agent.spool.watch import FolderWatch
from agent.worker import deaths
from agent.worker.contain import Contain
from agent.worker.execution import Execution
from agent.worker.launcher import Launcher

log = logging.getLogger(__name__)


def _uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


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
        contain: Contain | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.spool = spool
        self.registry = registry
        self.launcher = launcher
        self.environ = dict(os.environ if environ is None else environ)
        self.reporter = Reporter(
            client, Outbox(spool.root), runlogs, source=f"worker {config.worker_id}"
        )
        self._stop = threading.Event()
        self.execution = Execution(
            config, client, spool, self.reporter, launcher, self.environ, self._stop, contain
        )
        self.takes = Takes(spool.dir(CUR))
        # Woken when the poller publishes a spec, rather than at the next idle look.
        self._new_specs = FolderWatch(spool.dir(NEW))

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
        self._new_specs.poke()

    def stop(self) -> None:
        self._stop.set()
        self._new_specs.poke()

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
                    self._upkeep()
                    self._new_specs.wait(self.config.idle_sleep)
                    continue
                spool_failed = False
                try:
                    self._set_state(BUSY, lease.run_id)
                    if not self._quarantined(lease):
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
                    if lease.fd >= 0:  # not retired: the spec stays in cur/, let go alive
                        self._let_go(lease)
                    lease.release()
                    self._set_state(IDLE)
                if spool_failed:
                    self._stop.wait(defaults.SPOOL_RETRY_SECONDS)
            clean = True
        finally:
            finished.set()
            self._new_specs.close()
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
            if lease.adopted:
                settled = self.execution.adopt(lease, spec)
            else:
                settled = self.execution.run(lease, spec)
        if settled is None:
            return  # stopping: the spec stays in cur/ and the next worker takes it over
        self.spool.finish(lease, settled.note, spec.transition_id)
        self.reporter.finished(settled.shown, settled.cause)  # after: a failed finish is retried
        log.info("flow run %s finished: %s", spec.flow_run_id, settled.note)

    def _quarantined(self, lease: Lease) -> bool:
        """Record this take durably before working on the spec; True when the spec killed
        workers before (agent/core/poison.py) and was moved to failed/ instead."""
        earlier, started = self.takes.record(lease.run_id, lease.data, self.config.worker_id)
        lease.let_go = bool(earlier) and earlier[-1].let_go
        if not poison.should_quarantine(earlier, started):
            if self.config.kill_on_spec and lease.run_id == self.config.kill_on_spec:
                _die_on_spec(lease.run_id)
            return False
        died = poison.deaths(earlier)
        how = deaths.how_they_died(self.environ, died)
        reason = poison.reason(died, how)
        log.error("flow run %s: %s", lease.run_id, reason)
        shown = None
        run_id = _uuid_or_none(lease.run_id)
        if run_id:
            shown = self.reporter.propose(run_id, lifecycle.failed(reason)).shown
        self.spool.refuse(lease, reason)
        metrics.QUARANTINED.inc()
        self.reporter.finished(shown, Cause.NOT_STARTED)
        return True

    def _let_go(self, lease: Lease) -> None:
        try:
            self.takes.let_go(lease.run_id, lease.data)
        except OSError as exc:  # a full disk: a later taker may count this take as a death
            log.warning("flow run %s: cannot record letting go of it: %s", lease.run_id, exc)

    def _upkeep(self) -> None:
        """While idle: set aside what is not a spec, and re-create a deleted spool and this
        worker's registry entry (nothing needs a restart)."""
        try:
            if self.spool.heal():
                log.warning("spool %s was missing: re-created it", self.spool.root)
            if not self.registry.still_registered():
                self.registry.register(self.config.worker_id, self.config.crash_loop)
                log.warning(
                    "worker %s: its registry entry was gone; registered again",
                    self.config.worker_id,
                )
            self.spool.screen()
        except (SpoolError, OSError) as exc:
            log.error("spool %s: %s", self.spool.root, exc)

    def _set_state(self, state: str, flow_run_id: str | None = None) -> None:
        try:
            self.registry.set_state(state, flow_run_id)
        except OSError as exc:  # a full disk: the poller then counts this worker busy
            log.warning("cannot record worker state %s: %s", state, exc)

    def _refuse(self, lease: Lease, exc: SpecError, fail_run: str | None) -> None:
        reason = f"Unusable job spec: {exc}"
        log.error("flow run %s: %s; moved to failed/", lease.run_id, reason)
        shown = None
        if fail_run:
            shown = self.reporter.propose(fail_run, lifecycle.failed(reason)).shown
        self.spool.refuse(lease, reason)
        self.reporter.finished(shown, Cause.NOT_STARTED)


def _die_on_spec(run_id: str) -> None:
    """The fault seam behind the hidden setting AGENT_TEST_KILL_ON_SPEC: die as the OOM
    killer or a segfault would, with no chance to clean up, on taking this run's spec."""
    log.warning("AGENT_TEST_KILL_ON_SPEC: killing this worker on taking %s", run_id)
    os.kill(os.getpid(), signal.SIGKILL)
