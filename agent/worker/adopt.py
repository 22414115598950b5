"""What became of a run whose worker died: read from the shim's status.json. Pure.

A spec in cur/ that nobody holds a lease on has lost its worker *and* its shim (the shim
inherits the lease). The status file says how far the run got:

- no file: the shim never started, so the flow never ran: start it now;
- "ended": the flow ended while no worker watched; its real exit status is there;
- "running" and the flow process (pid + start time + boot id) still runs: watch it;
- otherwise the flow is gone without a recorded status: it must not run again here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.worker.launcher import ExitStatus
from agent.worker.procid import ProcessId

LOST_MESSAGE = "ended while no agent process watched it (exit status unknown)"


class Found(enum.Enum):
    NEVER_STARTED = "never started"
    ENDED = "ended"
    RUNNING = "still running"
    LOST = "lost"


@dataclass(frozen=True)
class Orphan:
    found: Found
    status: ExitStatus | None = None  # ENDED and LOST: what to report
    flow: ProcessId | None = None  # RUNNING: the process to watch


def classify(status: dict[str, Any], alive: Callable[[ProcessId], bool]) -> Orphan:
    if not status:
        return Orphan(Found.NEVER_STARTED)
    code = status.get("returncode")
    if isinstance(code, int) and not isinstance(code, bool):
        error = status.get("error")
        return Orphan(Found.ENDED, ExitStatus(code, str(error) if error else None))
    flow = ProcessId.from_json(status.get("flow"))
    if flow is not None and alive(flow):
        return Orphan(Found.RUNNING, flow=flow)
    return Orphan(Found.LOST, ExitStatus(None, LOST_MESSAGE))
