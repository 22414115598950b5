"""One run's cgroup: made before its shim starts, limits written, processes found and
killed through it, usage read at the end, removed after.

It is one directory per hierarchy (the v2 one and each v1 controller's), all named
``run-<flow run id>-<claim>``. The shim writes its own pid into each ``cgroup.procs``
before it starts the flow, so the flow and everything it forks are inside before any
user code runs, including processes that leave the process group (``setsid``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.limits import Limits
from agent.worker.cgroups import Containment

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Usage:
    peak_memory: int | None = None  # bytes
    cpu_seconds: float | None = None
    oom_kills: int = 0


class RunCgroup:
    def __init__(self, containment: Containment, run_id: str, claim: str) -> None:
        name = f"run-{run_id}-{claim[:8]}"
        self.v2 = containment.v2 / name if containment.v2 is not None else None
        self.v2_limits = containment.v2_limits
        self.v1 = {c: p / name for c, p in containment.v1.items()}

    @property
    def dirs(self) -> list[Path]:
        """Every directory the run's processes join."""
        return [*([self.v2] if self.v2 is not None else []), *self.v1.values()]

    @property
    def _tracker(self) -> Path | None:
        return self.v2 if self.v2 is not None else next(iter(self.v1.values()), None)

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.dirs)

    # -- before the run ----------------------------------------------------------------

    def create(self, limits: Limits) -> None:
        """OSError if a directory or a limit cannot be written: the run is not started."""
        for directory in self.dirs:
            directory.mkdir(exist_ok=True)
        if limits.memory is not None:
            self._memory(limits.memory)
        if limits.cpu is not None:
            quota = max(1000, round(limits.cpu * CPU_PERIOD_US))
            if "cpu" in self.v2_limits and self.v2 is not None:
                _write(self.v2 / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(self.v1["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(self.v1["cpu"] / "cpu.cfs_quota_us", str(quota))
        if limits.pids is not None:
            where = self.v2 if "pids" in self.v2_limits else self.v1["pids"]
            assert where is not None
            _write(where / "pids.max", str(limits.pids))

    def _memory(self, limit: int) -> None:
        if "memory" in self.v2_limits and self.v2 is not None:
            _write(self.v2 / "memory.max", str(limit))
            # Without swap the limit is where the OOM killer acts, not where paging starts.
            with contextlib.suppress(OSError):
                _write(self.v2 / "memory.swap.max", "0")
            return
        directory = self.v1["memory"]
        _write(directory / "memory.limit_in_bytes", str(limit))
        with contextlib.suppress(OSError):  # swap accounting may be off in the kernel
            _write(directory / "memory.memsw.limit_in_bytes", str(limit))

    # -- while it runs -------------------------------------------------------------------

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in self.dirs:
            found.update(_pids(directory))
        return sorted(found)

    def populated(self) -> bool:
        """Whether any process of the run is left: the run is alive while one is."""
        if self.v2 is not None:
            events = _read(self.v2 / "cgroup.events")
            if events:
                return _field(events, "populated") == 1
        return bool(self.pids())

    def signal(self, sig: signal.Signals) -> int:
        """Send ``sig`` to every process in the run's cgroup; how many got it."""
        sent = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                sent += 1
        return sent

    def kill(self, patience: float = 5.0) -> bool:
        """SIGKILL every process of the run, forks racing the kill included; whether the
        cgroup is empty afterwards. v2: ``cgroup.kill``; v1: freeze, kill, thaw."""
        if self.v2 is not None and (self.v2 / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.v2 / "cgroup.kill", "1")
        freezer = self.v1.get("freezer")
        deadline = time.monotonic() + patience
        while True:
            if freezer is not None and freezer.is_dir():
                self._frozen_kill(freezer)
            else:
                self.signal(signal.SIGKILL)
            if not self.populated():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _frozen_kill(self, freezer: Path) -> None:
        # Frozen, nothing can fork between reading the list and the kill.
        try:
            _write(freezer / "freezer.state", "FROZEN")
            deadline = time.monotonic() + 1.0
            while _read(freezer / "freezer.state").strip() == "FREEZING":
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            self.signal(signal.SIGKILL)
        except OSError as exc:
            log.debug("cannot freeze %s: %s", freezer, exc)
            self.signal(signal.SIGKILL)
        finally:
            with contextlib.suppress(OSError):
                _write(freezer / "freezer.state", "THAWED")  # a killed task dies on thaw

    # -- after it ended ------------------------------------------------------------------

    def usage(self) -> Usage:
        peak: int | None = None
        cpu: float | None = None
        ooms = 0
        if self.v2 is not None and "memory" in self.v2_limits:
            peak = _int(_read(self.v2 / "memory.peak"))
            ooms = _field(_read(self.v2 / "memory.events"), "oom_kill") or 0
        elif "memory" in self.v1:
            peak = _int(_read(self.v1["memory"] / "memory.max_usage_in_bytes"))
            ooms = _field(_read(self.v1["memory"] / "memory.oom_control"), "oom_kill") or 0
        if self.v2 is not None:
            usec = _field(_read(self.v2 / "cpu.stat"), "usage_usec")
            cpu = usec / 1e6 if usec is not None else None
        if cpu is None and "cpuacct" in self.v1:
            nsec = _int(_read(self.v1["cpuacct"] / "cpuacct.usage"))
            cpu = nsec / 1e9 if nsec is not None else None
        return Usage(peak, cpu, ooms)

    def remove(self, patience: float = 5.0) -> bool:
        """Remove every directory (the run's processes must be gone); whether all went."""
        deadline = time.monotonic() + patience
        left = [d for d in self.dirs if d.is_dir()]
        while left:
            for directory in list(left):
                try:
                    directory.rmdir()
                    left.remove(directory)
                except FileNotFoundError:
                    left.remove(directory)
                except OSError:
                    pass  # EBUSY: a process is still leaving
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if left:
            log.warning("cannot remove the run's cgroup %s: processes are still in it", left[0])
        return not left


def _write(path: Path, value: str) -> None:
    # cgroupfs files take one write each, and no O_CREAT or truncation games.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _pids(directory: Path) -> list[int]:
    return [int(x) for x in _read(directory / "cgroup.procs").split() if x.isdigit()]


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _field(text: str, name: str) -> int | None:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return _int(value)
    return None
