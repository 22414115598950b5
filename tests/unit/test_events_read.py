"""What an incoming message of the events stream means, in agent/core/events.py (pure):
events.read on the flow-run and deployment events Prefect 3.8.8 sends, on messages that
are not events, and (by property) on any JSON value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core import events
from agent.core.events import Kind
from tests.unit.events_support import ALL_NAMES, NOW, RUN, deployment_event, event
from tests.unit.strategies import FAST, json_values

OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
WAKING = ("Scheduled", "Resuming", "AwaitingRetry", "AwaitingConcurrencySlot")


# -- agent/core/events.py: what a message means -----------------------------------------------


@pytest.mark.parametrize(
    "occurred", ["2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05.123456+00:00"]
)
@pytest.mark.parametrize("state", WAKING)
def test_read_a_new_retried_resumed_or_unblocked_run_wakes_the_poller(
    state: str, occurred: str
) -> None:
    seen = events.read(event(state, "e-1", occurred))
    assert seen == events.Seen(Kind.WAKE, "e-1", NOW, RUN, f"prefect.flow-run.{state}")
    assert seen.occurred is not None and seen.occurred.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "occurred", ["2026-01-02T03:04:05.123456Z", "2026-01-02T03:04:05.123456+00:00"]
)
def test_read_a_cancelling_run_starts_cancellation(occurred: str) -> None:
    seen = events.read(event("Cancelling", "e-2", occurred))
    assert seen == events.Seen(Kind.CANCEL, "e-2", NOW, RUN, "prefect.flow-run.Cancelling")


@pytest.mark.parametrize("name", ["created", "updated"])
def test_read_a_deployment_created_or_updated_asks_for_often_polls(name: str) -> None:
    seen = events.read(deployment_event(name, "d-1"))
    assert seen == events.Seen(
        Kind.SCHEDULE, "d-1", NOW, None, f"prefect.deployment.{name}"
    )  # no flow run: the runs are yet to be made


@pytest.mark.parametrize("name", ["deleted", "ready", "not-ready"])
def test_read_other_deployment_events_are_other(name: str) -> None:
    seen = events.read(deployment_event(name))
    assert seen is not None and seen.kind is Kind.OTHER


@pytest.mark.parametrize("state", ["Running", "Pending", "Late", "Completed", "Cancelled"])
def test_read_any_other_state_change_is_other(state: str) -> None:
    seen = events.read(event(state))
    assert seen is not None and seen.kind is Kind.OTHER


def test_read_an_occurred_without_offset_is_taken_as_utc() -> None:
    seen = events.read(event("Scheduled", occurred="2026-01-02T03:04:05.123456"))
    assert seen is not None and seen.occurred == NOW


def test_read_an_event_with_odd_fields_keeps_its_kind_and_leaves_the_rest_unknown() -> None:
    message = event("Scheduled")
    message["event"].update(
        id=42, occurred="yesterday", resource={"prefect.resource.id": "prefect.deployment.x"}
    )
    assert events.read(message) == events.Seen(
        Kind.WAKE, None, None, None, "prefect.flow-run.Scheduled"
    )
    assert events.read({"type": "event", "event": {}}) == events.Seen(Kind.OTHER, None, None, None)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "auth_success"},
        {"type": "auth_failure", "reason": "bad token"},
        {"type": "filter", "filter": {}},
        {"type": "event"},
        {"type": "event", "event": None},
        {"type": "event", "event": [event("Scheduled")["event"]]},
        {"type": "EVENT", "event": event("Scheduled")["event"]},
        event("Scheduled")["event"],  # an event, but not inside a message
        None,
        [],
        "event",
        3,
    ],
    ids=repr,
)
def test_read_anything_but_an_event_message_is_none(message: Any) -> None:
    assert events.read(message) is None


@FAST
@given(json_values())
def test_read_never_raises_on_any_json_value(message: Any) -> None:
    seen = events.read(message)
    assert seen is None or isinstance(seen, events.Seen)


@FAST
@given(json_values())
def test_read_never_raises_on_any_json_value_as_the_event(body: Any) -> None:
    seen = events.read({"type": "event", "event": body})
    assert seen is None or isinstance(seen, events.Seen)


_ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
_MOMENTS = st.datetimes(timezones=st.one_of(st.none(), st.sampled_from(OFFSETS)))
_EVENT_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "event": st.one_of(st.sampled_from(sorted(ALL_NAMES)), _ANY, st.lists(_ANY)),
        "id": st.one_of(st.uuids().map(str), _ANY),
        "occurred": st.one_of(_MOMENTS.map(datetime.isoformat), st.text(max_size=40), _ANY),
        "resource": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"prefect.resource.id": st.one_of(st.text(max_size=30), _ANY)}
            ),
            _ANY,
            st.lists(_ANY),
        ),
    },
)


@FAST
@given(_EVENT_BODIES)
def test_read_never_raises_on_an_event_whose_fields_have_any_shape(body: dict[str, Any]) -> None:
    seen = events.read({"type": "event", "event": body})
    assert isinstance(seen, events.Seen)
    assert seen.occurred is None or seen.occurred.tzinfo is not None
