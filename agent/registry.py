"""Live workers and their states, shared through the spool's ``workers/`` folder.

Each worker holds an exclusive flock on ``workers/<id>.lock`` for its whole life (the
kernel drops it when the process dies, so there are no stale entries) and keeps its
state in ``workers/<id>.json``, replaced atomically. The poller counts idle live
workers to know how many runs it may claim.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SpoolError
from agent.spool import hold_lock, is_locked, read_json_object, replace_file_durably

IDLE, BUSY, DEAD = "idle", "busy", "dead"


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    state: str  # idle | busy | dead
    pid: int | None = None
    flow_run_id: str | None = None
    since: float | None = None


class Registry:
    def __init__(self, spool_root: Path) -> None:
        self.dir = spool_root / "workers"
        self._lock_fd = -1
        self._id: str | None = None

    # -- a worker's own entry --------------------------------------------------------

    def register(self, worker_id: str) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = hold_lock(self.dir / f"{worker_id}.lock")
        if fd is None:
            raise SpoolError(f"worker id {worker_id!r} is already in use on this spool")
        self._lock_fd, self._id = fd, worker_id
        self.set_state(IDLE)

    def set_state(self, state: str, flow_run_id: str | None = None) -> None:
        assert self._id is not None, "register() first"
        body = {
            "pid": os.getpid(),
            "state": state,
            "flow_run_id": flow_run_id,
            "since": time.time(),
        }
        replace_file_durably(self.dir / f"{self._id}.json", json.dumps(body).encode())

    def unregister(self) -> None:
        """A clean exit leaves no entry (a killed worker's shows as dead)."""
        if self._id is not None:
            (self.dir / f"{self._id}.json").unlink(missing_ok=True)
            (self.dir / f"{self._id}.lock").unlink(missing_ok=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- everyone's view -------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        try:
            names = sorted(p.stem for p in self.dir.glob("*.lock"))
        except OSError:
            return []
        return [self._inspect(name) for name in names]

    def _inspect(self, worker_id: str) -> WorkerInfo:
        if not is_locked(self.dir / f"{worker_id}.lock"):
            return WorkerInfo(worker_id, DEAD)
        # Unreadable while starting up or mid-replace: count as busy, the safe side.
        body = read_json_object(self.dir / f"{worker_id}.json") or {}
        state = str(body["state"]) if body.get("state") in (IDLE, BUSY) else BUSY
        return WorkerInfo(
            worker_id, state, body.get("pid"), body.get("flow_run_id"), body.get("since")
        )

    def counts(self) -> dict[str, int]:
        result = {IDLE: 0, BUSY: 0, DEAD: 0}
        for info in self.workers():
            result[info.state] += 1
        return result
