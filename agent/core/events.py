"""Prefect's events stream, as far as push wake-ups need it: the frames the poller sends
(reference/prefect3-events.md, checked against prefect 3.8.8's server) and what an
incoming message means. Pure.

A run made ad hoc (UI, API), one back from retry, resume or a concurrency slot emits
an event: the poller polls at once instead of at its next idle tick. Cancelling starts
the run's cancellation at once. Runs a schedule makes emit none: polling with prefetch
(and look-ahead) stays the safety net. A deployment of the pool created or updated
(its work pool is among the event's related resources) is when Prefect's scheduler makes
runs within seconds (its recent-deployments loop, every 5 s): the poller polls at once
and again from its shortest interval, doubling, to catch them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

WAKE_EVENTS = (
    "prefect.flow-run.Scheduled",
    "prefect.flow-run.Resuming",
    "prefect.flow-run.AwaitingRetry",
    "prefect.flow-run.AwaitingConcurrencySlot",
)
CANCEL_EVENT = "prefect.flow-run.Cancelling"
# Whatever field an update changed: Prefect deletes a deployment's future scheduled runs
# on every update and its scheduler makes them again. (Changing only its schedules emits
# no event, nor does the /deployments/{id}/schedules API: polling covers those.)
SCHEDULE_EVENTS = ("prefect.deployment.created", "prefect.deployment.updated")
# On reconnect, events since the last one seen minus this are replayed (Prefect's own
# subscriber uses a minute); those already seen are dropped by id.
BACKFILL_MARGIN = timedelta(minutes=1)
FIRST_BACKFILL = timedelta(seconds=10)  # at the first connection: a moment before start


class Kind(enum.Enum):
    WAKE = "wake"  # poll now
    CANCEL = "cancel"  # look for cancellations now
    SCHEDULE = "schedule"  # poll now, then often for a while: runs are being scheduled
    OTHER = "other"


@dataclass(frozen=True)
class Seen:
    kind: Kind
    id: str | None  # the event's id (the state's): duplicates are dropped by it
    occurred: datetime | None
    flow_run_id: str | None
    name: str = ""


def auth_frame(token: str | None) -> dict[str, Any]:
    """Self-hosted with auth: the raw auth string; Cloud: the API key; else null."""
    return {"type": "auth", "token": token}


def filter_frame(pool_id: str, since: datetime) -> dict[str, Any]:
    until = since + timedelta(days=3650)  # open-ended: the stream runs until we close it
    return {
        "type": "filter",
        "filter": {
            "occurred": {"since": _iso(since), "until": _iso(until)},
            "event": {"name": [*WAKE_EVENTS, CANCEL_EVENT, *SCHEDULE_EVENTS]},
            # The resource or any related one: deployment events relate their pool too.
            "any_resource": {"id": [f"prefect.work-pool.{pool_id}"]},
        },
    }


def since_for(last_occurred: datetime | None, now: datetime) -> datetime:
    if last_occurred is None:
        return now - FIRST_BACKFILL
    # An event stamped in the future (a client's clock) must not hide what comes next.
    return min(last_occurred, now) - BACKFILL_MARGIN


def read(message: Any) -> Seen | None:
    """What an incoming message is; None for anything but an event (or a malformed one)."""
    if not isinstance(message, dict) or message.get("type") != "event":
        return None
    event = message.get("event")
    if not isinstance(event, dict):
        return None
    name = event.get("event")
    resource = event.get("resource")
    resource_id = resource.get("prefect.resource.id") if isinstance(resource, dict) else None
    run_id = None
    if isinstance(resource_id, str) and resource_id.startswith("prefect.flow-run."):
        run_id = resource_id.removeprefix("prefect.flow-run.")
    kind = Kind.OTHER
    if name in WAKE_EVENTS:
        kind = Kind.WAKE
    elif name == CANCEL_EVENT:
        kind = Kind.CANCEL
    elif name in SCHEDULE_EVENTS:
        kind = Kind.SCHEDULE
    event_id = event.get("id")
    return Seen(
        kind,
        event_id if isinstance(event_id, str) else None,
        _parse(event.get("occurred")),
        run_id,
        name if isinstance(name, str) else "",
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
