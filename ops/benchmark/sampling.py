"""The processes of each side, read from /proc: which role each plays (decided by the
process tree, never by name alone) and its RSS, sampled every SAMPLE_SECONDS in a thread."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_SECONDS = 0.5
# The agent's warm launcher starts its flow interpreter as `<python> -c <bootstrap>`; the
# bootstrap's text carries this marker, so the warm parent shows in its command line.
WARM_MARKER = "local-agent warm"

SUPERVISORD, POLLER, WORKER, WARM_PARENT, SHIM, FLOW = (
    "supervisord", "poller", "worker", "warm parent", "shim", "flow"
)  # fmt: skip


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str


def process_table() -> dict[int, Proc]:
    """Every process now: pid -> (ppid, command line)."""
    table: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = Proc(int(entry.name), ppid, cmdline)
    return table


def children(table: dict[int, Proc], pid: int) -> list[Proc]:
    return [p for p in table.values() if p.ppid == pid]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used, from /proc/<pid>/stat; 0 if gone
    (ops.fleet samples the server's CPU with it)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return 0.0


def proc_kib(path: str, key: str) -> int:
    """A ``key: N kB`` line of a /proc file; 0 if the process is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS: resident memory, counting pages shared with other processes in full."""
    return proc_kib(f"/proc/{pid}/status", "VmRSS:")


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


# A classifier sorts one side's processes into roles: role -> pids.
Classifier = Callable[[dict[int, Proc]], dict[str, list[int]]]


def classify_agent(supervisord_pid: int) -> Classifier:
    """supervisord -> the poller (`agent local start`) and the workers (`agent worker`);
    a worker's child is its warm parent (warm launch) or a per-run shim (cold); the warm
    parent's children are shims; a shim's children are flows."""

    def classify(table: dict[int, Proc]) -> dict[str, list[int]]:
        own = children(table, supervisord_pid)
        pollers = [p for p in own if "local start" in p.cmdline]
        workers = [p for p in own if p not in pollers and " worker" in p.cmdline]
        warm: list[Proc] = []
        shims: list[Proc] = []
        for worker in workers:
            for child in children(table, worker.pid):
                (warm if WARM_MARKER in child.cmdline else shims).append(child)
        shims += [c for parent in warm for c in children(table, parent.pid)]
        flows = [c for shim in shims for c in children(table, shim.pid)]
        return {
            SUPERVISORD: [supervisord_pid] if supervisord_pid in table else [],
            POLLER: [p.pid for p in pollers],
            WORKER: [p.pid for p in workers],
            WARM_PARENT: [p.pid for p in warm],
            SHIM: [p.pid for p in shims],
            FLOW: [p.pid for p in flows],
        }

    return classify


def classify_prefect(worker_pid: int) -> Classifier:
    """`prefect worker start`, one process; its children are the flows (each a workspace
    supervisor that execs `python -m prefect.engine`)."""

    def classify(table: dict[int, Proc]) -> dict[str, list[int]]:
        return {
            WORKER: [worker_pid] if worker_pid in table else [],
            FLOW: [p.pid for p in children(table, worker_pid)],
        }

    return classify


@dataclass
class RoleMemory:
    """One role's processes over a window: each one's peak RSS (KiB), by pid."""

    peaks: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.peaks)

    @property
    def largest(self) -> int:
        return max(self.peaks.values(), default=0)


class Sampler:
    """Samples every side's processes every SAMPLE_SECONDS in one thread (one pass over
    /proc serves every side)."""

    def __init__(self, sides: dict[str, Classifier]) -> None:
        self.sides = sides
        self.memory: dict[str, dict[str, RoleMemory]] = {s: {} for s in sides}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        table = process_table()
        for side, classify in self.sides.items():
            for role, pids in classify(table).items():
                memory = self.memory[side].setdefault(role, RoleMemory())
                for pid in pids:
                    if kib := rss_kib(pid):
                        memory.peaks[pid] = max(kib, memory.peaks.get(pid, 0))
