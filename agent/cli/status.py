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
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.core.crashloop import window_text
from agent.core.errors import SpecError, SpoolError
from agent.core.redact import redact_text
from agent.core.spec import loads
from agent.settings import defaults
from agent.spool.files import read_json_object
from agent.spool.locks import POLLER_STATE, is_locked, poller_alive, read_poller_state
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
        with open(path, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            data = f.read(_MAX_SPEC)
    except FileNotFoundError:
        return None
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
    }


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


# -- the table -----------------------------------------------------------------------

_WAITING_SHOWN = 10


def age(seconds: float | None) -> str:
    """Whole units, rounded down: 12s, 3m, 2h, 4d."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))  # clock skew must not print "-5s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ago(now: float, then: float | None) -> str:
    return "-" if then is None else age(now - then)


def _cell(value: object, width: int = 40) -> str:
    """One printable line: file contents must not break the layout or the terminal."""
    if value is None or value == "":
        return "-"
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, *rows]
    ]


def _scheduled(now: float, value: str | None) -> str:
    if not value:
        return "-"
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return _cell(value, 32)
    return f"{age(now - when)} ago" if when <= now else f"in {age(when - now)}"


def _header(snap: dict[str, Any]) -> list[str]:
    now, poller = snap["generated_at"], snap["poller"]
    labels = poller["labels"]
    if poller["alive"]:
        who = f"running, pid {_cell(poller['pid'])}"
    else:
        who = f"NOT RUNNING (last pid {_cell(poller['pid'])})"
    if poller["name"] or poller["hostname"]:
        who += f", {_cell(poller['name'])} on {_cell(poller['hostname'])}"
    if poller["version"]:
        who += f", version {_cell(poller['version'])}"
    if poller["state_file"] != "ok":
        who += f", poller.json {poller['state_file']}"
    last_ok = poller["last_successful_poll_age_seconds"]
    found = problems(snap)
    pairs = [
        ("spool", _cell(snap["spool"], 200)),
        ("pool", _cell(poller["pool"])),
        ("labels", ", ".join(_cell(x) for x in labels) if labels else "-"),
        ("queues", ", ".join(_cell(x) for x in poller["work_queues"] or []) or "-"),
        ("poller", who),
        ("last poll", "never" if last_ok is None else f"{age(last_ok)} ago"),
    ]
    if poller["last_error"]:
        pairs.append(("last error", _cell(poller["last_error"], 200)))
    if poller["updated"] is not None:
        pairs.append(("updated", f"{_ago(now, poller['updated'])} ago"))
    pairs.append(("health", f"DEGRADED: {'; '.join(found)}" if found else "ok"))
    return [f"{k:<11}{v}" for k, v in pairs]


def render_table(snapshot: dict[str, Any]) -> str:
    """The human view: a header block, then WORKERS, RUNNING, WAITING and FINISHED.
    Never shows env_vars (their values may be secrets): they are not in the snapshot."""
    now = snapshot["generated_at"]
    lines = _header(snapshot)

    workers = snapshot["workers"]
    by_state = {s: sum(w["state"] == s for w in workers) for s in ("busy", "idle", BACKOFF, "dead")}
    if not by_state[BACKOFF]:
        del by_state[BACKOFF]  # shown only when some worker is in backoff
    lines += [
        "",
        f"WORKERS ({len(workers)}: " + ", ".join(f"{n} {s}" for s, n in by_state.items()) + ")",
    ]
    if workers:
        rows = [
            [
                _cell(w["worker_id"]),
                w["state"],
                _cell(w["pid"]),
                _cell(w["flow_run_id"]),
                _ago(now, w["since"]),
                str(w["recent_exits"]),
            ]
            for w in workers
        ]
        lines += _table(["WORKER", "STATE", "PID", "FLOW RUN", "SINCE", "EXITS"], rows)

    running = snapshot["runs"]["running"]
    lines += ["", f"RUNNING ({len(running)})"]
    if running:
        rows = []
        for r in running:
            notes = []
            if not r["watched"]:
                notes.append("ORPHANED: no worker or shim holds it")
            if r["worker_alive"] is False:
                notes.append("worker dead")
            if r["returncode"] is not None:
                notes.append(f"exited {r['returncode']}")
            if r["error"]:
                notes.append(_cell(r["error"], 60))
            rows.append(
                [
                    _cell(r["flow_run_id"]),
                    _cell(r["name"], 32),
                    _cell(r["worker"]),
                    _cell(r["pid"]),
                    _ago(now, r["since"]),
                    "; ".join(notes),
                ]
            )
        lines += _table(["FLOW RUN", "NAME", "WORKER", "PID", "SINCE", "NOTE"], rows)

    waiting = snapshot["runs"]["waiting"]
    oldest = min((w["claimed_at"] for w in waiting if w["claimed_at"] is not None), default=None)
    title = f"WAITING ({len(waiting)}"
    lines += ["", title + (f", oldest {_ago(now, oldest)})" if oldest is not None else ")")]
    if waiting:
        rows = [
            [
                _cell(w["flow_run_id"]),
                _cell(w["name"], 32) if not w["error"] else f"(bad spec: {_cell(w['error'], 60)})",
                _ago(now, w["claimed_at"]),
                _scheduled(now, w["scheduled_start"]),
            ]
            for w in waiting[:_WAITING_SHOWN]
        ]
        lines += _table(["FLOW RUN", "NAME", "WAITING", "SCHEDULED"], rows)
        if len(waiting) > _WAITING_SHOWN:
            lines.append(f"... and {len(waiting) - _WAITING_SHOWN} more (--json lists all)")

    counts = snapshot["runs"]["finished_last_hour"]
    shown = [o for o in OUTCOMES if o != "unknown" or counts.get(o)]
    lines += ["", "FINISHED (last hour)"]
    lines += _table([o.upper() for o in shown], [[str(counts.get(o, 0)) for o in shown]])
    return "\n".join(lines) + "\n"
