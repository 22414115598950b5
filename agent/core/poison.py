"""Poison specs: a spec that kills the worker taking it, whatever the cause. Pure.

A worker records each take of a spec durably before it works on it (agent/spool/takes.py)
and marks it when it lets go cleanly or starts the flow. The dying process cooperates in
nothing: a take that was never let go, of a spec whose flow never started, is a worker
that died holding it (an exception out of the loop, a segfault, the OOM killer, a bug
that does not exist yet). After ``KILLS_BEFORE_QUARANTINE`` such deaths the next taker
moves the spec to failed/ and fails its run, instead of dying in turn.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KILLS_BEFORE_QUARANTINE = 2


@dataclass(frozen=True)
class Take:
    """One worker process's take of a spec."""

    worker: str
    pid: int
    at: float  # Unix time
    let_go: bool = False  # released it cleanly (stopping, a spool error): no death


def deaths(takes: Sequence[Take]) -> list[Take]:
    """The takes whose worker died holding the spec (never let go)."""
    return [t for t in takes if not t.let_go]


def should_quarantine(
    earlier: Sequence[Take], flow_started: bool, limit: int = KILLS_BEFORE_QUARANTINE
) -> bool:
    """Whether the spec taken now (after ``earlier`` takes) goes to failed/. Once its flow
    has started, a death is the flow's business (adoption watches it; it never starts
    twice), so only deaths before the start count."""
    return not flow_started and len(deaths(earlier)) >= max(1, limit)


def reason(died: Sequence[Take], how: Mapping[int, str]) -> str:
    """What the run and failed/<id>.reason say: each death, and how it ended where the
    supervisor's record says (``how``: pid -> "terminated by SIGKILL", "exit status 1")."""
    parts = []
    for take in died:
        when = time.strftime("%H:%M:%S", time.localtime(take.at))
        ended = how.get(take.pid)
        ended = f"ended: {ended}" if ended else "died, how is not recorded (no supervisord log)"
        parts.append(f"worker {take.worker} (PID {take.pid}, took it at {when}) {ended}")
    return (
        f"Quarantined: taking this run killed {len(died)} worker processes before its flow "
        f"started: {'; '.join(parts)}. Its spec is in failed/ and no worker takes it again."
    )


_SPAWNED = re.compile(r"spawned: '(?P<name>[^']+)' with pid (?P<pid>\d+)")
_EXITED = re.compile(r"exited: (?P<name>\S+) \((?P<how>.+?); (?:not )?expected\)")


def how_died(supervisor_log: str, names: Sequence[str]) -> dict[int, str]:
    """From supervisord's own log: pid -> how that process of ``names`` ended ("exit
    status 1", "terminated by SIGKILL", "terminated by SIGSEGV (core dumped)"). A
    process's exit follows its spawn line; pids of other programs are ignored."""
    wanted = set(names)
    current: dict[str, int] = {}
    ended: dict[int, str] = {}
    for line in supervisor_log.splitlines():
        spawned = _SPAWNED.search(line)
        if spawned and spawned["name"] in wanted:
            current[spawned["name"]] = int(spawned["pid"])
            continue
        exited = _EXITED.search(line)
        if exited and exited["name"] in current:
            ended[current.pop(exited["name"])] = exited["how"].strip()
    return ended
