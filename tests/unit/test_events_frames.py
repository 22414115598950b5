"""The frames of the events stream, in agent/core/events.py (pure): the auth and filter
frames, our filter as Prefect's own server reads it, and where a (re)connection starts
(since_for)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from agent.core import events
from tests.unit.events_support import ALL_NAMES, AUTH, NOW, POOL, deployment_event

# -- agent/core/events.py: the frames ----------------------------------------------------------


def test_auth_frame_carries_the_raw_auth_string_as_the_token() -> None:
    assert events.auth_frame(AUTH) == {"type": "auth", "token": AUTH}


def test_auth_frame_without_a_credential_sends_a_null_token() -> None:
    assert json.loads(json.dumps(events.auth_frame(None))) == {"type": "auth", "token": None}


def test_filter_frame_asks_for_the_pools_run_and_deployment_events_since_the_moment_given() -> None:
    frame = json.loads(json.dumps(events.filter_frame(POOL, NOW)))  # it is plain JSON
    assert frame["type"] == "filter"
    wanted = frame["filter"]
    assert len(wanted["event"]["name"]) == 7
    assert set(wanted["event"]["name"]) == ALL_NAMES
    assert wanted["any_resource"] == {"id": [f"prefect.work-pool.{POOL}"]}
    since = datetime.fromisoformat(wanted["occurred"]["since"])
    until = datetime.fromisoformat(wanted["occurred"]["until"])
    assert since == NOW
    assert until - since > timedelta(days=365)  # open-ended: the stream runs until closed


def test_filter_frame_writes_since_and_until_in_utc_whatever_the_offset_given() -> None:
    elsewhere = NOW.astimezone(timezone(timedelta(hours=2)))
    occurred = events.filter_frame(POOL, elsewhere)["filter"]["occurred"]
    assert occurred["since"] == "2026-01-02T03:04:05.123456+00:00"
    assert occurred["until"].endswith("+00:00")


def _server_filter(frame: dict[str, Any]) -> Any:
    """Our filter as Prefect's own server reads it (prefect/server/api/events.py)."""
    filters = pytest.importorskip("prefect.server.events.filters")
    return filters.EventFilter.model_validate(json.loads(json.dumps(frame["filter"])))


def _received(message: dict[str, Any]) -> Any:
    schemas = pytest.importorskip("prefect.server.events.schemas.events")
    return schemas.ReceivedEvent.model_validate(message["event"])


@pytest.mark.parametrize("name", ["created", "updated"])
def test_prefects_own_server_sends_a_deployment_event_of_the_pool_matched_by_a_related_resource(
    name: str,
) -> None:
    """The deployment is the event's resource; the pool is only among its related ones,
    which `any_resource` matches too (EventAnyResourceFilter.includes, prefect 3.8.8)."""
    pool = "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"  # the server's filter wants a real id shape
    wanted = _server_filter(events.filter_frame(pool, NOW - timedelta(minutes=1)))
    assert not wanted.excludes(_received(deployment_event(name, pool=pool)))
    elsewhere = deployment_event(name, pool="9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
    assert wanted.excludes(_received(elsewhere))
    assert wanted.excludes(_received(deployment_event("deleted", pool=pool)))


def test_since_for_the_first_connection_is_ten_seconds_before_now() -> None:
    assert events.since_for(None, NOW) == NOW - timedelta(seconds=10)


def test_since_for_a_reconnection_is_a_minute_before_the_last_event_seen() -> None:
    last = NOW - timedelta(hours=3)
    assert events.since_for(last, NOW) == last - timedelta(minutes=1)


def test_since_for_an_event_stamped_in_the_future_is_a_minute_before_now() -> None:
    # A client with a wrong clock must not make the server drop what comes next.
    future = NOW + timedelta(days=365 * 7000)
    assert events.since_for(future, NOW) == NOW - timedelta(minutes=1)
