"""Live workers and their states, shared through the spool's ``workers/`` folder.

Each worker holds an exclusive flock on ``workers/<id>.lock`` for its whole life (the
kernel drops it when the process dies, so there are no stale entries) and keeps its
state in ``workers/<id>.json``, replaced atomically. The poller counts idle live
workers to know how many runs it may claim.

A clean exit (stopped by a signal, or asked to stop) removes both files. So when a
worker registers and its id's ``.json`` is still there, the id's previous process exited
unexpectedly (killed, or an error out of its loop): its time goes into
``workers/<id>.exits`` (the id's recent unexpected exits, kept for the crash-loop
window), and when agent/core/crashloop.py says so the new process starts in ``backoff``:
alive, but taking no runs until its wait is over. A worker that was asked to stop and
was then killed anyway (supervisor's SIGKILL after stopwaitsecs, a second SIGTERM)
marked its entry ``stopping`` first: that exit is not counted.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.crashloop import Policy, Verdict, assess, describe, recent
from agent.core.errors import SpoolError
from agent.settings import defaults
from agent.spool.files import read_json_object, replace_file_durably
from agent.spool.locks import hold_lock, is_locked

IDLE, BUSY, BACKOFF, DEAD = "idle", "busy", "backoff", "dead"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    state: str  # idle | busy | backoff | dead
    pid: int | None = None
    flow_run_id: str | None = None
    since: float | None = None
    # In backoff: its unexpected exits within the window when it started, the reason
    # in words, and when it takes runs again (Unix time).
    exits: int | None = None
    reason: str | None = None
    until: float | None = None

    def describe_backoff(self, now: float) -> str:
        """``worker w1 is crash-looping (exited unexpectedly 6 times in the last 10 min);
        it takes runs again in 35s``."""
        why = self.reason or "exited unexpectedly"
        text = f"worker {self.worker_id} is crash-looping ({why})"
        if self.until is not None:
            text += f"; it takes runs again in {max(0.0, self.until - now):.0f}s"
        return text


@dataclass(frozen=True)
class Registration:
    crashed: bool  # the id's previous process exited unexpectedly (found now)
    verdict: Verdict  # its unexpected exits within the window, and the wait
    until: float | None  # in backoff until then (Unix time); None: takes runs now
    reason: str  # "exited unexpectedly 6 times in the last 10 min"


class Registry:
    def __init__(self, spool_root: Path) -> None:
        self.dir = spool_root / "workers"
        self._lock_fd = -1
        self._id: str | None = None
        # The worker's main thread and its stop watcher both write the state file.
        self._write = threading.Lock()
        self._body: dict[str, Any] = {}
        self._stopping = False

    # -- a worker's own entry --------------------------------------------------------

    def register(self, worker_id: str, policy: Policy | None = None) -> Registration:
        """Take the id's lock and write its first state: ``idle``, or ``backoff`` when its
        previous process exited unexpectedly and the crash-loop policy says to wait."""
        policy = policy or Policy()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.release()  # registering again (the spool was deleted): drop the old lock
        fd = hold_lock(self.dir / f"{worker_id}.lock")
        if fd is None:
            raise SpoolError(f"worker id {worker_id!r} is already in use on this spool")
        with self._write:
            self._lock_fd, self._id, self._stopping = fd, worker_id, False
        now = time.time()
        crashed = self._left_unexpectedly(worker_id)
        exits = self.recent_exits(worker_id, now, policy.window)
        if crashed:
            exits = [*exits, now][-defaults.CRASH_LOOP_HISTORY_MAX :]
            replace_file_durably(self._exits_path(worker_id), _dumps({"exits": exits}))
        verdict = assess(exits, now, policy, just_exited=crashed)
        reason = describe(verdict.exits, policy.window)
        if verdict.delay <= 0:
            self.set_state(IDLE)
            return Registration(crashed, verdict, None, reason)
        until = now + verdict.delay
        self.set_state(BACKOFF, details={"exits": verdict.exits, "reason": reason, "until": until})
        return Registration(crashed, verdict, until, reason)

    def _left_unexpectedly(self, worker_id: str) -> bool:
        """The id's previous process left its state file: it did not exit cleanly. Unless
        it had been asked to stop (then a kill or a second signal ended its drain)."""
        path = self.dir / f"{worker_id}.json"
        if not path.exists():
            return False
        last = read_json_object(path) or {}
        return last.get("stopping") is not True

    def still_registered(self) -> bool:
        """False when the lock file this process holds is no longer the one in workers/
        (the spool was deleted and perhaps re-created): then it must register again."""
        if self._id is None or self._lock_fd < 0:
            return True
        try:
            return os.stat(self.dir / f"{self._id}.lock").st_ino == os.fstat(self._lock_fd).st_ino
        except FileNotFoundError:
            return False

    def set_state(
        self,
        state: str,
        flow_run_id: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        assert self._id is not None, "register() first"
        body = {
            "pid": os.getpid(),
            "state": state,
            "flow_run_id": flow_run_id,
            "since": time.time(),
            **(details or {}),
        }
        with self._write:
            self._body = body
            self._put(body)

    def mark_stopping(self) -> None:
        """The worker was asked to stop: however its process ends from now on (a clean
        exit, supervisor's SIGKILL after stopwaitsecs, a second signal's immediate exit),
        the next process with its id does not count that as an unexpected exit."""
        with self._write:
            if self._lock_fd < 0 or self._id is None or self._stopping:
                return
            self._stopping = True
            self._put(self._body)

    def _put(self, body: dict[str, Any]) -> None:
        assert self._id is not None
        if self._stopping:
            body = {**body, "stopping": True}
        replace_file_durably(self.dir / f"{self._id}.json", _dumps(body))

    def unregister(self) -> None:
        """A clean exit leaves no entry (a killed worker's shows as dead)."""
        with self._write:
            if self._id is not None:
                (self.dir / f"{self._id}.json").unlink(missing_ok=True)
                (self.dir / f"{self._id}.lock").unlink(missing_ok=True)
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def release(self) -> None:
        """An exit that is not clean (an error out of the worker's loop): let go of the
        lock but keep the entry, so that it shows as dead and the next process with
        this id counts the exit, as it does a kill."""
        with self._write:
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
        state = str(body["state"]) if body.get("state") in (IDLE, BUSY, BACKOFF) else BUSY
        info = WorkerInfo(
            worker_id, state, body.get("pid"), body.get("flow_run_id"), body.get("since")
        )
        if state != BACKOFF:
            return info
        exits, reason = body.get("exits"), body.get("reason")
        return WorkerInfo(
            info.worker_id,
            info.state,
            info.pid,
            None,
            info.since,
            exits if isinstance(exits, int) and not isinstance(exits, bool) else None,
            reason if isinstance(reason, str) else None,
            _finite(body.get("until")),
        )

    def counts(self) -> dict[str, int]:
        """Workers by state. ``backoff`` workers are alive but take no runs: they are no
        free slot for the poller (it counts idle and busy ones)."""
        result = {IDLE: 0, BUSY: 0, BACKOFF: 0, DEAD: 0}
        for info in self.workers():
            result[info.state] += 1
        return result

    def crash_looping(self) -> list[WorkerInfo]:
        """Live workers waiting out a crash-loop backoff."""
        return [info for info in self.workers() if info.state == BACKOFF]

    def recent_exits(
        self,
        worker_id: str,
        now: float | None = None,
        window: float = defaults.CRASH_LOOP_WINDOW_SECONDS,
    ) -> list[float]:
        """Times of the id's recorded unexpected exits within ``window`` before ``now``
        (an exit is recorded when the next process with the id starts)."""
        body = read_json_object(self._exits_path(worker_id)) or {}
        values = body.get("exits")
        times = [_finite(v) for v in values] if isinstance(values, list) else []
        now = time.time() if now is None else now
        return recent((t for t in times if t is not None), now, window)

    def _exits_path(self, worker_id: str) -> Path:
        return self.dir / f"{worker_id}.exits"


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body).encode()
