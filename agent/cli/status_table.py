"""`agent status`'s table: the snapshot of agent/cli/status.py, for a person."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.cli.status import OUTCOMES, age, problems
from agent.spool.registry import BACKOFF

_WAITING_SHOWN = 10


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
    if poller["waiting"]:
        waiting = poller["waiting"]
        pairs.append(
            (
                "waiting",
                f"a new poller (pid {waiting['pid']}) waits for pid {waiting['waiting_for']}, "
                "left running by a supervisord that died, to exit",
            )
        )
    if poller["updated"] is not None:
        pairs.append(("updated", f"{_ago(now, poller['updated'])} ago"))
    held = snap.get("containment")
    pairs.append(
        (
            "contained",
            f"{_cell(held['version'])}: {_cell(held['reason'], 300)} (--containment "
            f"{_cell(held['mode'])})"
            if held
            else "unknown: no worker has started yet",
        )
    )
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
