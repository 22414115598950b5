"""Who a process is: pid + start time + boot id. A pid alone may have been reused by an
unrelated process since it was recorded; the three together cannot be (Linux /proc)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def boot_id(proc: Path = PROC) -> str:
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), None if no such process.

    The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    """
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        if fields[0] == "Z":  # a zombie has ended: it runs nothing any more
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int
    boot: str

    def alive(self, proc: Path = PROC) -> bool:
        """True only if this very process still runs (not a later one with its pid)."""
        return boot_id(proc) == self.boot and start_time(self.pid, proc) == self.start

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "boot": self.boot}

    @staticmethod
    def from_json(body: Any) -> ProcessId | None:
        if not isinstance(body, dict):
            return None
        pid, start, boot = body.get("pid"), body.get("start"), body.get("boot")
        if isinstance(pid, int) and isinstance(start, int) and isinstance(boot, str):
            return ProcessId(pid, start, boot)
        return None


def identify(pid: int, proc: Path = PROC) -> ProcessId | None:
    start = start_time(pid, proc)
    return None if start is None else ProcessId(pid, start, boot_id(proc))


def runs_flow(flow_run_id: str, proc: Path | None = None) -> bool:
    """Whether a live process on this host runs this flow run: the engine is started
    with PREFECT__FLOW_RUN_ID in its environment. Only this user's processes are
    readable, and flow runs are this user's. Zombies have an empty environment."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    try:
        entries = list((proc or PROC).iterdir())
    except OSError:
        return False
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue
    return False
