"""The processes of one side, read from /proc: which they are (by the process tree),
their RSS, PSS and CPU time, sampled every SAMPLE_SECONDS in a thread."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.5


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
    """User + system CPU time the process has used, from /proc/<pid>/stat; 0 if gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return 0.0


def short_command(cmdline: str) -> str:
    """`.../bin/agent local start --x` -> `agent local start`."""
    words = cmdline.split()
    scripts = [i for i, w in enumerate(words) if Path(w).name in ("agent", "prefect")]
    if not scripts:
        return Path(words[0]).name if words else "?"
    subcommand = []
    for word in words[scripts[0] + 1 : scripts[0] + 3]:
        if word.startswith("-"):
            break
        subcommand.append(word)
    return " ".join([Path(words[scripts[0]]).name, *subcommand])


def proc_kib(path: str, key: str) -> int:
    """A ``key: N kB`` line of a /proc file; 0 if the process is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS: resident memory, counting shared pages in full."""
    return proc_kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """Pss: resident memory with each shared page divided among the processes sharing it."""
    return proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


# A classifier sorts the processes of one side into named groups; "flows" are counted
# (how many run at once) and every other group's RSS is summed.
Classifier = Callable[[dict[int, Proc]], dict[str, list[int]]]


def classify_agent(supervisord_pid: int) -> Classifier:
    """supervisord -> poller and workers (ours) -> per-run shim -> flow."""

    def classify(table: dict[int, Proc]) -> dict[str, list[int]]:
        own = children(table, supervisord_pid)
        workers = [p for p in own if " worker" in p.cmdline]
        shims = [
            c for w in workers for c in children(table, w.pid) if "agent.worker.shim" in c.cmdline
        ]
        flows = [c for s in shims for c in children(table, s.pid)]
        return {
            "own": [p.pid for p in own],
            "supervisord": [supervisord_pid],
            "shims": [s.pid for s in shims],
            "flows": [f.pid for f in flows],
        }

    return classify


def classify_prefect(worker_pid: int) -> Classifier:
    """The `prefect worker start` process; each flow is its child (a workspace
    supervisor that execs `python -m prefect.engine`) with the flow's own children."""

    def classify(table: dict[int, Proc]) -> dict[str, list[int]]:
        return {
            "own": [worker_pid] if worker_pid in table else [],
            "flows": [p.pid for p in children(table, worker_pid)],
        }

    return classify


@dataclass
class Sample:
    at: float  # time.time()
    rss: dict[str, int]  # group -> summed VmRSS, KiB
    pss: dict[str, int]  # group -> summed Pss, KiB (shared pages split between sharers)
    count: dict[str, int]  # group -> processes
    cpu: dict[str, float]  # group -> CPU seconds its current processes have used so far


class Sampler:
    """Samples every group every SAMPLE_SECONDS in a thread. Also keeps each own
    process's peak RSS, and the CPU time of short-lived helpers (the shims) per pid."""

    def __init__(self, classify: Classifier) -> None:
        self.classify = classify
        self.samples: list[Sample] = []
        self.own_peaks: dict[int, tuple[str, int]] = {}  # pid -> (command, peak KiB)
        self.shim_cpu: dict[int, tuple[float, float]] = {}  # pid -> (first seen, max CPU s)
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
        now, table = time.time(), process_table()
        groups = self.classify(table)
        flows = len(groups.pop("flows", []))
        pids = [pid for members in groups.values() for pid in members]
        rss = {pid: rss_kib(pid) for pid in pids}
        pss = {pid: pss_kib(pid) for pid in pids}
        cpu = {pid: cpu_seconds(pid) for pid in pids}
        self.samples.append(
            Sample(
                now,
                {name: sum(rss[pid] for pid in members) for name, members in groups.items()},
                {name: sum(pss[pid] for pid in members) for name, members in groups.items()},
                {"flows": flows, **{name: len(members) for name, members in groups.items()}},
                {name: sum(cpu[pid] for pid in members) for name, members in groups.items()},
            )
        )
        for pid in groups.get("own", []):
            command = short_command(table[pid].cmdline) if pid in table else "?"
            self.own_peaks[pid] = (command, max(rss[pid], self.own_peaks.get(pid, ("", 0))[1]))
        for pid in groups.get("shims", []):
            first, used = self.shim_cpu.get(pid, (now, 0.0))
            self.shim_cpu[pid] = (first, max(used, cpu[pid]))

    def peaks(self) -> str:
        return ", ".join(f"{cmd} {mib(kib)}" for cmd, kib in self.own_peaks.values())

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def shims_cpu(self, start: float, end: float) -> tuple[int, float]:
        """Shims first seen in the window: how many, and their CPU seconds (as last sampled,
        so a little low: up to SAMPLE_SECONDS of each shim's life is missed)."""
        seen = [used for first, used in self.shim_cpu.values() if start <= first <= end]
        return len(seen), sum(seen)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"
