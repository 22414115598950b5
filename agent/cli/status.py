"""`agent status`: what is on this host now, read from the spool, as JSON or a table.

Read-only by design: it lists folders, reads small files and probes flocks with a shared
lock for an instant (as the poller's worker count does), so it can run at any time, as
often as wanted, as the agent's user. The JSON layout is documented in docs/status.md;
SCHEMA changes only on incompatible changes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.crashloop import window_text
from agent.core.errors import SpecError, SpoolError
from agent.core.redact import redact_text
from agent.core.spec import loads
from agent.settings import defaults
from agent.spool import containment_state
from agent.spool.files import read_json_object
from agent.spool.guard import NotRegularFile, open_regular
from agent.spool.locks import (
    POLLER_STATE,
    POLLER_WAITING,
    is_locked,
    poller_alive,
    read_poller_state,
)
from agent.spool.moves import CUR, DONE, FAILED, NEW, RUNS, SUFFIX, Spool
from agent.spool.registry import BACKOFF, DEAD, Registry
from agent.worker.shim import STATUS_FILE

SCHEMA = 1
WINDOW = 3600.0  # "finished in the last hour"
CRASH_WINDOW = defaults.CRASH_LOOP_WINDOW_SECONDS  # a worker's "recent" unexpected exits
OUTCOMES = ("completed", "failed", "crashed", "cancelled", "refused", "unknown")
_DONE_OUTCOMES = OUTCOMES[:4]
# A note's mtime is never earlier than its "at" (written just after), so notes older
# than the window plus this slack are skipped unread: done/ is never pruned.
_MTIME_SLACK = 60.0
_MAX_SPEC = 1 << 24  # same bound as Spool.take

EXIT_OK = 0
# LSB's "program is not running" for `status`: the poller or a worker is down.
EXIT_DEGRADED = 3


# -- reading -------------------------------------------------------------------------


def _num(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) else None


def _redacted(text: str | None) -> str | None:
    """The poller's error may quote the API URL, and with it a password."""
    return None if text is None else redact_text(text)


def _strs(body: dict[str, Any], key: str) -> list[str] | None:
    value = body.get(key)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


@dataclass(frozen=True)
class _SpecView:
    """The few spec fields status shows; never env_vars (their values may be secrets)."""

    name: str | None
    claimed_at: float | None
    scheduled_start: str | None
    mtime: float
    error: str | None


def _read_spec(spool: Spool, state: str, run_id: str) -> _SpecView | None:
    """None when the spec moved on while we looked (taken, finished)."""
    path = spool.dir(state) / f"{run_id}{SUFFIX}"
    try:
        # Never blocks: a FIFO or a symlink named like a spec is not opened as one.
        with os.fdopen(open_regular(path), "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            data = f.read(_MAX_SPEC)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        return _SpecView(None, None, None, 0.0, f"not a spec: {exc.kind}")
    except OSError as exc:
        return _SpecView(None, None, None, 0.0, f"cannot read spec: {exc.strerror}")
    try:
        spec = loads(data)
    except SpecError as exc:
        # Still show what can be read (e.g. a spec from a newer agent version).
        body: dict[str, Any] = {}
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            body = parsed
        claimed = _num(body, "claimed_at")
        name, scheduled = _str(body, "flow_run_name"), _str(body, "scheduled_start")
        return _SpecView(name, claimed, scheduled, mtime, str(exc))
    error = None
    if spec.flow_run_id != run_id:
        error = f"spec is for flow run {spec.flow_run_id}, file is {run_id}"
    claimed = spec.claimed_at or None  # 0.0 is the dataclass default: not recorded
    return _SpecView(spec.flow_run_name, claimed, spec.scheduled_start, mtime, error)


# -- the sections --------------------------------------------------------------------


def _check_spool(root: Path) -> None:
    try:
        os.scandir(root / NEW).close()
    except (FileNotFoundError, NotADirectoryError):
        raise SpoolError(f"no spool at {root} (is --spool / AGENT_SPOOL_DIR right?)") from None
    except OSError as exc:
        # The spool is owner-only: the usual cause is running as another user.
        raise SpoolError(
            f"cannot read spool {root}: {exc.strerror} (run as the agent's user)"
        ) from None


def _poller(root: Path, now: float) -> dict[str, Any]:
    body = read_poller_state(root)
    if body is not None:
        state_file = "ok"
    else:
        state_file = "unreadable" if (root / POLLER_STATE).exists() else "missing"
        body = {}
    last_ok = _num(body, "last_successful_poll")
    return {
        "alive": poller_alive(root),
        "state_file": state_file,
        "pid": _int(body, "pid"),
        "name": _str(body, "name"),
        "pool": _str(body, "pool"),
        "labels": _strs(body, "labels"),
        "work_queues": _strs(body, "work_queues"),
        "hostname": _str(body, "hostname"),
        "version": _str(body, "version"),
        "started": _num(body, "started"),
        "updated": _num(body, "updated"),
        "last_successful_poll": last_ok,
        "last_successful_poll_age_seconds": None if last_ok is None else round(now - last_ok, 3),
        "last_error": _redacted(_str(body, "last_error")),
        "waiting": _poller_waiting(root),
    }


def _poller_waiting(root: Path) -> dict[str, Any] | None:
    """A new poller waiting for an orphan (of a supervisord that died) to release the lock."""
    body = read_json_object(root / POLLER_WAITING) or {}
    pid, holder = _int(body, "pid"), _int(body, "waiting_for")
    if pid is None or holder is None or not Path(f"/proc/{pid}").exists():
        return None  # a note left by a poller that is gone
    return {"pid": pid, "waiting_for": holder, "since": _num(body, "since")}


def _workers(root: Path, now: float) -> list[dict[str, Any]]:
    result = []
    registry = Registry(root)
    for info in registry.workers():
        row: dict[str, Any] = {
            "worker_id": info.worker_id,
            "alive": info.state != DEAD,
            "state": info.state,
            "pid": info.pid if isinstance(info.pid, int) else None,
            "flow_run_id": info.flow_run_id if isinstance(info.flow_run_id, str) else None,
            "since": info.since if isinstance(info.since, int | float) else None,
            # Recorded when the next process with the id starts: a dead one is not in yet.
            "recent_exits": len(registry.recent_exits(info.worker_id, now)),
            "backoff_until": info.until if info.state == BACKOFF else None,
        }
        if info.state == DEAD:
            # The registry says only "dead"; its last state file says which run it had,
            # which is what an operator needs. No pid: it may be reused by now.
            last = read_json_object(root / "workers" / f"{info.worker_id}.json") or {}
            if last.get("state") == "busy":
                row["flow_run_id"] = _str(last, "flow_run_id")
            row["since"] = _num(last, "since")
        result.append(row)
    return result


def _waiting(spool: Spool) -> list[dict[str, Any]]:
    result = []
    for run_id in spool.run_ids(NEW):
        view = _read_spec(spool, NEW, run_id)
        if view is None:
            continue
        result.append(
            {
                "flow_run_id": run_id,
                "name": view.name,
                "claimed_at": view.claimed_at or view.mtime or None,
                "scheduled_start": view.scheduled_start,
                "error": view.error,
            }
        )
    return result


def _running(spool: Spool, workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    owner: dict[str, dict[str, Any]] = {}
    for row in sorted(workers, key=lambda w: not w["alive"]):  # a live claim wins
        if row["flow_run_id"]:
            owner.setdefault(row["flow_run_id"], row)
    result = []
    for run_id in spool.run_ids(CUR):
        view = _read_spec(spool, CUR, run_id)
        if view is None:
            continue
        path = spool.dir(CUR) / f"{run_id}{SUFFIX}"
        watched = is_locked(path)
        if not watched and not path.exists():
            continue  # finished between listing and probing, not orphaned
        status = read_json_object(spool.dir(RUNS) / run_id / STATUS_FILE) or {}
        worker = owner.get(run_id)
        since = _num(status, "started")
        if since is None and worker is not None:
            since = worker["since"]
        result.append(
            {
                "flow_run_id": run_id,
                "name": view.name,
                "worker": worker["worker_id"] if worker else None,
                "worker_alive": worker["alive"] if worker else None,
                "pid": _int(status, "pid"),
                "since": since,
                "returncode": _int(status, "returncode"),
                "watched": watched,
                "error": view.error,
            }
        )
    return result


def _finished(spool: Spool, now: float) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    cutoff = now - WINDOW
    for state, suffix in ((DONE, ".outcome"), (FAILED, ".reason")):
        try:
            entries = list(os.scandir(spool.dir(state)))
        except OSError:
            continue  # missing or unreadable: counts are a summary, not worth failing on
        for entry in entries:
            if not entry.name.endswith(suffix) or entry.name.startswith("."):
                continue
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if mtime < cutoff - _MTIME_SLACK:
                continue
            if state == FAILED:
                outcome, at = "refused", mtime
            else:
                note = read_json_object(Path(entry.path)) or {}
                outcome = str(note.get("outcome"))
                outcome = outcome if outcome in _DONE_OUTCOMES else "unknown"
                at = _num(note, "at") or mtime
            if at >= cutoff:
                counts[outcome] += 1
    return counts


def collect(spool_root: Path, now: float | None = None) -> dict[str, Any]:
    """A JSON-serialisable snapshot of the spool (docs/status.md). Never writes."""
    now = time.time() if now is None else now
    root = Path(spool_root)
    _check_spool(root)
    spool = Spool(root)
    workers = _workers(root, now)
    return {
        "schema": SCHEMA,
        "spool": os.path.abspath(root),
        "generated_at": now,
        "poller": _poller(root, now),
        "runs": {
            "waiting": _waiting(spool),
            "running": _running(spool, workers),
            "finished_last_hour": _finished(spool, now),
        },
        "workers": workers,
        "containment": containment_state.read(root),
    }


# -- health --------------------------------------------------------------------------


def problems(snapshot: dict[str, Any]) -> list[str]:
    """What makes ``exit_code`` non-zero, in words."""
    found = []
    if not snapshot["poller"]["alive"]:
        found.append("poller not running")
    found += [f"worker {w['worker_id']} dead" for w in snapshot["workers"] if not w["alive"]]
    now, window = snapshot["generated_at"], window_text(CRASH_WINDOW)
    for w in snapshot["workers"]:
        if w["state"] == BACKOFF:
            until = w["backoff_until"]
            wait = "" if until is None else f", takes runs again in {age(until - now)}"
            found.append(
                f"worker {w['worker_id']} crash-looping "
                f"({w['recent_exits']} unexpected exits in {window}{wait})"
            )
    return found


def exit_code(snapshot: dict[str, Any]) -> int:
    """0 when the poller and every registered worker live and none is crash-looping, else
    EXIT_DEGRADED (3)."""
    return EXIT_DEGRADED if problems(snapshot) else EXIT_OK


def age(seconds: float | None) -> str:
    """Whole units, rounded down: 12s, 3m, 2h, 4d."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))  # clock skew must not print "-5s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
