"""Health: each check with ``ok``, a ``reason`` when failing, and its values. Reads only
what the duties keep and the spool's files, never the API, so it answers fast."""

from __future__ import annotations

import time
from typing import Any

from agent.poller.shared import Shared
from agent.spool import containment_state
from agent.spool.registry import IDLE


def health(s: Shared, started_at: float) -> tuple[bool, dict[str, Any]]:
    """Each check with ``ok``, a ``reason`` when failing, and its values. Reads only
    what the loop keeps and the spool's files: never the API, so it answers fast."""
    now = time.time()
    # Three polls at the cap in force (s.lookahead: the longer one while the events
    # stream is connected), so that an idle poll 30 s apart never looks overdue.
    max_age = max(3 * max(s.config.poll_interval_max, s.lookahead), 30.0)
    since = s.last_success if s.last_success is not None else started_at
    age = now - since
    poll_ok = age <= max_age
    what = "since the agent started" if s.last_success is None else "for"
    poll_reason = None
    if not poll_ok:
        poll_reason = f"no successful poll {what} {age:.0f}s (limit {max_age:.0f}s)"
        if s.last_error:
            poll_reason += f": {s.last_error}"
    workers = s.registry.counts()
    live = workers[IDLE] + workers["busy"]
    # Crash-looping workers are alive but wait before taking runs: name each.
    looping = s.registry.crash_looping()
    workers_reason = None
    if looping:
        workers_reason = "; ".join(w.describe_backoff(now) for w in looping)
    elif not live:
        workers_reason = f"no live worker process ({workers['dead']} dead)"
    backoff = [{"worker_id": w.worker_id, "exits": w.exits, "until": w.until} for w in looping]
    spool_error = s.spool_error or (
        None if s.spool.writable() else "not writable (read-only or permissions)"
    )
    spool_reason = None if spool_error is None else f"spool {s.spool.root}: {spool_error}"
    api_reason = None
    waiting = s.reporter.outbox.count()
    if s.outage.down_since is not None:
        api_reason = (
            f"the Prefect API has been unavailable for {now - s.outage.down_since:.0f}s, "
            f"claiming nothing: {s.last_error}"
        )
    elif s.outage.not_prefect is not None:
        api_reason = f"{s.outage.not_prefect}; claiming nothing"
    if api_reason and waiting:
        api_reason += f"; {waiting} reports wait in the outbox"
    checks: dict[str, Any] = {
        "api": {
            "ok": api_reason is None,
            "reason": api_reason,
            "unavailable_since": s.outage.down_since,
            "not_prefect_since": s.outage.not_prefect_since,
            "outbox_reports": waiting,
        },
        "poll": {
            "ok": poll_ok,
            "reason": poll_reason,
            "last_successful_poll_age_seconds": (
                None if s.last_success is None else round(now - s.last_success, 3)
            ),
            "max_age_seconds": max_age,
            "last_error": s.last_error,
        },
        "workers": {
            "ok": live > 0 and not looping,
            "reason": workers_reason,
            **workers,
            **({"crash_looping": backoff} if backoff else {}),
        },
        "spool": {
            "ok": spool_error is None,
            "reason": spool_reason,
            "path": str(s.spool.root),
            "depth": s.spool.depth(),
        },
        # Not a failure: how runs are contained here (v2, v1 or none, and why).
        "containment": {
            "ok": True,
            "reason": None,
            **(containment_state.read(s.spool.root) or {"version": "unknown"}),
        },
    }
    return all(c["ok"] for c in checks.values()), checks
