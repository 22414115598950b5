"""Containment for one worker: which limits a run gets, its cgroup, and what is left of
it when it ends (leftover processes killed, usage read, the cause of death, the last
lines of its output for the flight recorder).

The host's containment is found once at the worker's start (agent/worker/cgroups.py);
the limits a run asks for are checked against it here, before anything starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from agent.core.causes import Death, classify
from agent.core.errors import JobVariableError
from agent.core.limits import Limits, format_bytes, format_number, resolve
from agent.observe import metrics
from agent.settings.config import ContainmentConfig
from agent.worker import shim
from agent.worker.cgroups import Containment
from agent.worker.launcher import ExitStatus
from agent.worker.runcgroup import RunCgroup, Usage

log = logging.getLogger(__name__)

TAIL_READ_BYTES = 256 * 1024


@dataclass(frozen=True)
class Plan:
    """The limits a run is started with, and what its Prefect log is told about them."""

    limits: Limits
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ending:
    death: Death
    usage: Usage
    timeout: float | None = None  # the timeout_seconds it exceeded

    def describe(self, took: float | None = None) -> str:
        """How the process ended, how long it ran, and what it used."""
        after = f" after {took:.1f}s" if took is not None else ""
        used = usage_text(self.usage)
        return f"{self.death.text}{after}{f'; {used}' if used else ''}"


class Contain:
    def __init__(self, config: ContainmentConfig, found: Containment) -> None:
        self.config = config
        self.found = found

    def plan(self, requested: Limits) -> Plan:
        """JobVariableError (the run is Failed, naming it) when a limit is above this
        host's ceiling, or cannot be enforced here and containment is strict."""
        limits = resolve(requested, self.config.policy)
        warnings = []
        for kind, attr, shown in (
            ("memory", "memory", _bytes(limits.memory)),
            ("cpu", "cpu", _number(limits.cpu)),
            ("pids", "pids", _number(limits.pids)),
        ):
            if getattr(limits, attr) is None or kind in self.found.enforces:
                continue
            why = f"{kind}_limit={shown} cannot be enforced: {self.found.cannot(kind)}"
            if self.config.mode == "strict":
                raise JobVariableError(f"{why} (--containment best-effort runs it anyway)")
            warnings.append(f"{why}; running without it (--containment {self.config.mode})")
            limits = replace(limits, **{attr: None})
        return Plan(limits, tuple(warnings))

    def cgroup(self, run_id: str, claim: str) -> RunCgroup:
        return RunCgroup(self.found, run_id, claim)

    def end(
        self,
        cgroup: RunCgroup,
        status: ExitStatus,
        limits: Limits,
        timed_out: bool,
        cancelled: bool,
        lost: bool = False,
    ) -> Ending:
        """After the run's shim ended: kill what the run left behind, read its usage,
        remove its cgroup, name the cause of death and count it."""
        if cgroup.exists():
            if cgroup.populated():
                left = len(cgroup.pids())
                if cgroup.kill():
                    log.info("killed %d process(es) the run left behind", left)
                else:
                    log.warning("processes the run left behind survive SIGKILL")
            usage = cgroup.usage()
            cgroup.remove()
        else:
            usage = Usage()
        death = classify(
            status.returncode,
            status.error,
            oom_kills=usage.oom_kills,
            memory_limit=_bytes(limits.memory) if limits.memory else None,
            timeout=limits.timeout if timed_out else None,
            cancelled=cancelled,
            lost=lost,
        )
        if usage.peak_memory is not None:
            metrics.PEAK_MEMORY.observe(usage.peak_memory)
        if usage.cpu_seconds is not None:
            metrics.CPU_SECONDS.observe(usage.cpu_seconds)
        return Ending(death, usage, limits.timeout if timed_out else None)

    def flight_record(self, run_dir: Path, secrets: list[str]) -> str:
        """The run-log message with the run's last output lines ("" when none); the
        agent's credential and --env values are masked (the flow may print them)."""
        tail = self.tail(run_dir)
        for secret in sorted((x for x in secrets if len(x) >= 4), key=len, reverse=True):
            tail = tail.replace(secret, "***")
        if not tail:
            return ""
        return f"Last {len(tail.splitlines())} lines of the flow run's output:\n{tail}"

    def tail(self, run_dir: Path) -> str:
        """The last ``crash_tail_lines`` lines of the run's output ("" when none)."""
        count = self.config.crash_tail_lines
        lines = _last_lines(run_dir / shim.LOG_FILE, count)
        if len(lines) < count:  # the log rotated just before: the rest is in the copy
            lines = _last_lines(run_dir / f"{shim.LOG_FILE}.1", count - len(lines)) + lines
        return "\n".join(lines)


def _last_lines(path: Path, count: int) -> list[str]:
    if count <= 0:
        return []
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL_READ_BYTES))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-count:]


def usage_text(usage: Usage) -> str:
    parts = []
    if usage.peak_memory is not None:
        parts.append(f"peak memory {format_bytes(usage.peak_memory)}")
    if usage.cpu_seconds is not None:
        parts.append(f"{usage.cpu_seconds:.1f} CPU seconds")
    return ", ".join(parts)


def _bytes(value: int | None) -> str:
    return format_bytes(value) if value is not None else ""


def _number(value: float | None) -> str:
    return format_number(value) if value is not None else ""
