"""The EventStream thread of agent/poller/events.py, and its stream_url: against a real
websocket server on 127.0.0.1 that answers like Prefect 3.8.8's /api/events/out
(reference/prefect3-events.md): subprotocol "prefect", an auth frame answered with
auth_success (or auth_failure and a 1008 close), a filter frame, then events."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from agent.observe import logs
from agent.poller.events import stream_url
from agent.settings import defaults
from tests.unit.events_support import (
    ALL_NAMES,
    AUTH,
    POOL,
    STILL_UNAVAILABLE,
    UNAVAILABLE,
    Harness,
    closed_port,
    deployment_event,
    ended,
    event,
    eventually,
    harness,
    said,
)

__all__ = ["harness"]  # the fixture, imported for pytest to find

BASIC = base64.b64encode(AUTH.encode()).decode()  # the same secret, as the upgrade sends it


# -- agent/poller/events.py: stream_url -------------------------------------------------------


@pytest.mark.parametrize(
    ("api_url", "url"),
    [
        ("https://h/api", "wss://h/api/events/out"),
        ("http://127.0.0.1:4200/api", "ws://127.0.0.1:4200/api/events/out"),
        ("http://h/api/", "ws://h/api/events/out"),
    ],
)
def test_stream_url_is_the_api_url_over_websockets_with_events_out(api_url: str, url: str) -> None:
    assert stream_url(api_url) == url


# -- agent/poller/events.py: EventStream against a real websocket server ----------------------


def test_the_stream_asks_for_events_out_with_the_prefect_subprotocol_and_the_raw_auth_string(
    harness: Harness,
) -> None:
    fake = harness.prefect()
    stream, _ = harness.stream(fake.port)
    assert eventually(lambda: stream.status()["connected"] is True)
    assert fake.paths == ["/api/events/out"]
    assert fake.subprotocols == ["prefect"]
    assert fake.tokens == [AUTH]  # raw, not base64
    assert fake.authorizations == [f"Basic {BASIC}"]  # for a basic-auth proxy in front


def test_with_an_api_key_the_token_is_the_key(harness: Harness) -> None:
    fake = harness.prefect()
    stream, _ = harness.stream(fake.port, key="pnu_k3y")
    assert eventually(lambda: stream.status()["connected"] is True)
    assert fake.tokens == ["pnu_k3y"]
    assert fake.authorizations == ["Bearer pnu_k3y"]


def test_the_filter_names_the_pool_and_starts_ten_seconds_before_the_first_connection(
    harness: Harness,
) -> None:
    fake = harness.prefect()
    before = datetime.now(UTC)
    stream, _ = harness.stream(fake.port)
    assert eventually(lambda: stream.status()["connected"] is True)
    after = datetime.now(UTC)
    [sent] = fake.filters
    assert sent["type"] == "filter"
    assert sent["filter"]["any_resource"] == {"id": [f"prefect.work-pool.{POOL}"]}
    assert set(sent["filter"]["event"]["name"]) == ALL_NAMES
    since = datetime.fromisoformat(sent["filter"]["occurred"]["since"])
    assert before - timedelta(seconds=10) <= since <= after - timedelta(seconds=10)


def test_a_scheduled_event_wakes_the_poller_once(harness: Harness) -> None:
    fake = harness.prefect([event("Scheduled")])
    _, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.wakes == 1)
    time.sleep(0.1)
    assert (calls.wakes, calls.cancels) == (1, 0)


def test_a_cancelling_event_starts_cancellation_once(harness: Harness) -> None:
    fake = harness.prefect([event("Cancelling")])
    _, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.cancels == 1)
    time.sleep(0.1)
    assert (calls.wakes, calls.cancels) == (0, 1)


def test_a_deployment_event_asks_for_often_polls_once_and_neither_wakes_nor_cancels(
    harness: Harness,
) -> None:
    fake = harness.prefect([deployment_event("created", "d-1"), deployment_event("updated", "d-2")])
    _, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.schedules == 2)
    time.sleep(0.1)
    assert (calls.wakes, calls.cancels, calls.schedules) == (0, 0, 2)


def test_a_running_event_and_messages_that_are_not_events_call_neither(harness: Harness) -> None:
    sentinel = event("Cancelling", "e-last")  # handled after everything before it
    fake = harness.prefect(
        [event("Running", "e-run"), {"type": "auth_success"}, "not json {", "[]", sentinel]
    )
    stream, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.cancels == 1)
    assert (calls.wakes, calls.schedules) == (0, 0)
    assert stream.status()["connected"] is True  # none of it broke the connection


def test_the_same_event_id_twice_wakes_the_poller_once(harness: Harness) -> None:
    fake = harness.prefect(
        [event("Scheduled", "e-1"), event("Scheduled", "e-1"), event("Cancelling", "e-last")]
    )
    _, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.cancels == 1)
    assert calls.wakes == 1


def test_after_a_reconnect_the_filter_starts_a_minute_before_the_last_event_and_a_replay_is_dropped(
    harness: Harness,
) -> None:
    first = event("Scheduled", "e-1", "2026-01-02T03:04:05Z")
    last = event("AwaitingRetry", "e-2", "2026-01-02T03:05:00+00:00")
    fake = harness.prefect(
        [first, last],  # then the server closes the connection
        [last, event("Cancelling", "e-3", "2026-01-02T03:06:00Z")],  # a replay, then news
    )
    _, calls = harness.stream(fake.port)
    assert eventually(lambda: calls.cancels == 1, timeout=8)  # the client came back
    assert calls.wakes == 2  # e-1 and e-2, not e-2 again
    assert len(fake.filters) == 2
    since = datetime.fromisoformat(fake.filters[1]["filter"]["occurred"]["since"])
    assert since == datetime(2026, 1, 2, 3, 4, 0, tzinfo=UTC)  # e-2's occurred - 1 minute
    assert fake.tokens == [AUTH, AUTH]  # auth again on every connection


def test_a_dropped_connection_is_tried_again_after_about_a_second(harness: Harness) -> None:
    fake = harness.prefect([], [])  # the first connection is closed right after its filter
    harness.stream(fake.port)
    assert eventually(lambda: len(fake.opened_at) == 2, timeout=5)
    assert fake.opened_at[1] - fake.opened_at[0] < 1.5


def test_status_says_connected_while_subscribed_and_not_once_the_server_is_gone(
    harness: Harness,
) -> None:
    fake = harness.prefect()
    stream, _ = harness.stream(fake.port)
    assert eventually(lambda: stream.status()["connected"] is True)
    up = stream.status()
    assert stream.connected  # what the poller's idle cap follows
    assert up["ok"] is True and up["last_error"] is None
    connected_since = up["connected_since"]
    assert isinstance(connected_since, float) and connected_since <= time.time()
    fake.shut()
    assert eventually(lambda: stream.status()["connected"] is False)
    assert not stream.connected
    down = stream.status()
    assert down["ok"] is True  # polling covers for it: never a failed health check
    assert down["connected_since"] is None
    assert isinstance(down["last_error"], str) and down["last_error"]


def test_without_a_pool_yet_the_stream_waits_and_subscribes_once_there_is_one(
    harness: Harness,
) -> None:
    pool: list[str | None] = [None]
    fake = harness.prefect()
    stream, _ = harness.stream(fake.port, pool_id=lambda: pool[0])
    time.sleep(0.2)
    assert fake.opened_at == []
    pool[0] = "pool-later"
    assert eventually(lambda: stream.status()["connected"] is True, timeout=3)
    # The client counts itself connected once it has sent the filter; the fake server's
    # thread may record it a moment later (a loaded CI machine once showed none yet).
    assert eventually(lambda: len(fake.filters) == 1, timeout=3)
    assert fake.filters[0]["filter"]["any_resource"] == {"id": ["prefect.work-pool.pool-later"]}


def test_a_refused_token_is_said_once_retried_with_backoff_and_never_logs_the_secret(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="agent")
    fake = harness.prefect([event("Scheduled")], refuse=True)
    stream, calls = harness.stream(fake.port)
    # Tried at once, then again after 2 s and 4 s more: two retries.
    assert eventually(lambda: len(said(caplog, STILL_UNAVAILABLE)) >= 2, timeout=10)
    assert fake.tokens == [AUTH, AUTH, AUTH]
    [unavailable] = said(caplog, UNAVAILABLE)
    assert unavailable.levelno == logging.WARNING
    assert "bad token" in unavailable.getMessage()
    first_gap = fake.opened_at[1] - fake.opened_at[0]
    second_gap = fake.opened_at[2] - fake.opened_at[1]
    assert 1.0 <= first_gap < second_gap  # it backs off
    assert (calls.wakes, calls.cancels) == (0, 0)
    status = stream.status()
    assert status["connected"] is False
    assert isinstance(status["last_error"], str) and "bad token" in status["last_error"]
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert AUTH not in text and BASIC not in text, record
    assert AUTH not in caplog.text and BASIC not in caplog.text


def test_nothing_listening_keeps_the_thread_running_says_unavailable_once_and_never_raises(
    harness: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "EVENTS_RETRY_MAX", 0.2)  # many retries, quickly
    caplog.set_level(logging.DEBUG, logger="agent")
    stream, calls = harness.stream(closed_port())
    assert eventually(lambda: len(said(caplog, STILL_UNAVAILABLE)) >= 3)
    assert not ended(stream)
    assert len(said(caplog, UNAVAILABLE)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no unexpected bug
    status = stream.status()
    assert status["connected"] is False
    assert isinstance(status["last_error"], str) and "Refused" in status["last_error"]
    assert (calls.wakes, calls.cancels) == (0, 0)


def test_a_stopped_stream_can_be_joined(harness: Harness) -> None:
    stream, _ = harness.stream(closed_port())
    harness.stop.set()
    stream.join(5)
    assert not stream.is_alive()


@contextlib.contextmanager
def agent_logging(level: str, stream: io.StringIO) -> Iterator[None]:
    """The agent's own logging setup (logs.setup), undone afterwards."""
    manager = logging.Logger.manager
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    levels = {n: lg.level for n, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    logs.setup(level, "poller", stream=stream)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        for name, logger in manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))


def test_at_debug_level_no_log_line_carries_the_auth_string(harness: Harness) -> None:
    """websockets logs the upgrade's headers and every frame at DEBUG; the agent's own
    logging setup at DEBUG must still print neither the auth frame nor the header."""
    output = io.StringIO()
    with agent_logging("DEBUG", output):
        fake = harness.prefect([event("Scheduled")])
        _, calls = harness.stream(fake.port)
        assert eventually(lambda: calls.wakes == 1)
        harness.close()
    text = output.getvalue()
    assert "events stream connected" in text  # the capture works
    assert AUTH not in text
    assert BASIC not in text
