"""Stopping a run's processes, for a cancellation, a timeout, or a run another agent
marked Crashed while this host was cut off from Prefect (lost): SIGTERM to the whole run,
then SIGKILL once the grace period has passed.

"The whole run" is its process group (the shim leads it) and, where the host has
cgroups, every process in the run's cgroup, including those that left the group
(``setsid``, a double fork); the SIGKILL then goes through the cgroup
(agent/worker/runcgroup.py: ``cgroup.kill``, or freeze and kill on v1).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.core.lifecycle import Cancel
from agent.core.spec import JobSpec
from agent.settings.config import WorkerConfig
from agent.spool.moves import CANCEL, LOST, Spool
from agent.worker.launcher import signal_run
from agent.worker.runcgroup import RunCgroup

log = logging.getLogger(__name__)

TIMEOUT = "timeout"


@dataclass
class Stopping:
    """A run's processes being stopped: why, and when each signal went out."""

    why: str = CANCEL
    term_at: float | None = None  # monotonic
    killed_after: float | None = None  # seconds from SIGTERM to SIGKILL

    @property
    def stage(self) -> Cancel:
        """How far a cancellation got (a timeout is not one)."""
        if self.why != CANCEL:
            return Cancel.NONE
        return Cancel.ASKED if self.term_at is None else Cancel.SIGNALLED

    @property
    def timed_out(self) -> bool:
        return self.why == TIMEOUT and self.term_at is not None

    def describe(self) -> str:
        if self.killed_after is None:
            return "SIGTERM"
        return f"SIGTERM, then SIGKILL after {self.killed_after:.0f} s"


# why -> (the agent's log, the run log's opening)
_WHAT = {
    CANCEL: ("was cancelled", "Cancelling"),
    TIMEOUT: ("exceeded timeout_seconds", "Timed out"),
    # Prefect holds another agent's Crashed: the run's processes must not live on here
    # (a retry would run beside them). The worker proposes nothing after.
    LOST: (
        "was marked Crashed by another agent while this host was cut off",
        "Stopping: another agent marked this flow run Crashed while this host could not "
        "reach Prefect",
    ),
}

RunLog = Callable[[JobSpec, str, int], None]


class Stopper:
    def __init__(self, config: WorkerConfig, spool: Spool, run_log: RunLog) -> None:
        self.config, self.spool, self._run_log = config, spool, run_log

    def step(
        self,
        spec: JobSpec,
        run_dir: Path,
        cgroup: RunCgroup,
        stopping: Stopping | None,
        deadline: float | None = None,
    ) -> Stopping | None:
        """One look while a flow runs: notice a cancel request or the passing of the
        run's ``deadline`` (monotonic), send SIGTERM, and SIGKILL once the grace period
        has passed (again while a process lingers)."""
        run_id = spec.flow_run_id
        now = time.monotonic()
        if stopping is None:
            asked = self.spool.stop_requested(run_id, spec.transition_id)
            if asked is not None:
                stopping = Stopping(asked)
            elif deadline is not None and now >= deadline:
                stopping = Stopping(TIMEOUT)
            else:
                return None
        grace = self.config.cancel_grace
        if stopping.term_at is None:
            if self._signal(run_id, run_dir, cgroup, signal.SIGTERM):
                stopping.term_at = now
                what, head = _WHAT[stopping.why]
                log.info("flow run %s %s: SIGTERM sent, SIGKILL in %.0fs", run_id, what, grace)
                self._run_log(
                    spec,
                    f"{head}: worker {self.config.worker_id} sent SIGTERM to the flow run's "
                    f"processes; SIGKILL follows in {grace:.0f} s if they are still running",
                    logging.INFO if stopping.why == CANCEL else logging.WARNING,
                )
        elif now - stopping.term_at >= grace:
            killed = self._signal(run_id, run_dir, cgroup, signal.SIGKILL)
            if killed and stopping.killed_after is None:
                stopping.killed_after = now - stopping.term_at
                log.warning("flow run %s: still running after SIGTERM; SIGKILL sent", run_id)
        return stopping

    def _signal(self, run_id: str, run_dir: Path, cgroup: RunCgroup, sig: signal.Signals) -> bool:
        try:
            who = signal_run(run_dir, sig)
        except OSError as exc:
            log.error("flow run %s: cannot send %s: %s", run_id, sig.name, exc)
            who = None
        reached = who is not None
        if cgroup.exists():
            if sig is signal.SIGKILL:
                had = cgroup.populated()
                cgroup.kill(patience=1.0)
                reached = had or reached
            else:
                reached = cgroup.signal(sig) > 0 or reached
        if not reached:
            log.debug("flow run %s: no live process to send %s to yet", run_id, sig.name)
        return reached
