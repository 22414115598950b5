"""Push wake-ups from Prefect's events stream.

agent/core/events.py (pure): the auth and filter frames, where a (re)connection starts,
and what an incoming message means. agent/poller/events.py: the EventStream thread,
against a real websocket server on 127.0.0.1 that answers like Prefect 3.8.8's
/api/events/out (reference/prefect3-events.md): subprotocol "prefect", an auth frame
answered with auth_success (or auth_failure and a 1008 close), a filter frame, then
events."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from agent.core import events
from agent.core.events import Kind
from agent.observe import logs
from agent.poller.events import EventStream, stream_url
from agent.settings import defaults
from agent.settings.config import ApiSettings
from tests.unit.strategies import FAST, json_values

AUTH = "user:pass"
BASIC = base64.b64encode(AUTH.encode()).decode()  # the same secret, as the upgrade sends it
POOL = "pool-uuid"
RUN = "0b6e4c1e-5d0f-4a43-9a8e-2f1d7c3b9a10"
NOW = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
FIVE_NAMES = {
    "prefect.flow-run.Scheduled",
    "prefect.flow-run.Resuming",
    "prefect.flow-run.AwaitingRetry",
    "prefect.flow-run.AwaitingConcurrencySlot",
    "prefect.flow-run.Cancelling",
}
DEPLOYMENT_NAMES = {"prefect.deployment.created", "prefect.deployment.updated"}
ALL_NAMES = FIVE_NAMES | DEPLOYMENT_NAMES
DEPLOYMENT = "5f2d7c1e-0a1b-4c2d-8e3f-9a8b7c6d5e4f"
QUEUE = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
WAKING = ("Scheduled", "Resuming", "AwaitingRetry", "AwaitingConcurrencySlot")
UNAVAILABLE = "events stream unavailable"
STILL_UNAVAILABLE = "events stream still unavailable"


def event(
    state: str,
    event_id: str = "e0000000-0000-4000-8000-000000000001",
    occurred: str = "2026-01-02T03:04:05.123456Z",
) -> dict[str, Any]:
    """A message as Prefect 3.8.8 sends it for a flow run's state change."""
    return {
        "type": "event",
        "event": {
            "occurred": occurred,
            "event": f"prefect.flow-run.{state}",
            "resource": {
                "prefect.resource.id": f"prefect.flow-run.{RUN}",
                "prefect.resource.name": "sleepy-otter",
                "prefect.state-name": state,
                "prefect.state-type": state.upper(),
                "prefect.run-count": "0",
            },
            "related": [
                {
                    "prefect.resource.id": f"prefect.work-pool.{POOL}",
                    "prefect.resource.role": "work-pool",
                    "prefect.resource.name": "local",
                },
            ],
            "payload": {"intended": {"from": None, "to": state.upper()}},
            "id": event_id,
            "follows": None,
            "received": occurred,
        },
    }


def deployment_event(
    name: str = "updated",
    event_id: str = "d0000000-0000-4000-8000-000000000001",
    pool: str = POOL,
) -> dict[str, Any]:
    """A message as Prefect 3.8.8 sends it for a deployment created or updated
    (prefect/server/models/events.py): the deployment is the resource, its flow, work
    queue and work pool are related."""
    return {
        "type": "event",
        "event": {
            "occurred": "2026-01-02T03:04:05.123456Z",
            "event": f"prefect.deployment.{name}",
            "resource": {
                "prefect.resource.id": f"prefect.deployment.{DEPLOYMENT}",
                "prefect.resource.name": "nightly",
            },
            "related": [
                {
                    "prefect.resource.id": "prefect.flow.7e0c3f1a-2b4d-4e6f-8a9b-0c1d2e3f4a5b",
                    "prefect.resource.name": "etl",
                    "prefect.resource.role": "flow",
                },
                {
                    "prefect.resource.id": f"prefect.work-queue.{QUEUE}",
                    "prefect.resource.name": "default",
                    "prefect.resource.role": "work-queue",
                },
                {
                    "prefect.resource.id": f"prefect.work-pool.{pool}",
                    "prefect.resource.name": "local",
                    "prefect.work-pool.type": "local-agent",
                    "prefect.resource.role": "work-pool",
                },
            ],
            "payload": {"updated_fields": ["paused"]} if name == "updated" else {},
            "id": event_id,
            "follows": None,
            "received": "2026-01-02T03:04:05.223456Z",
        },
    }


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

# The fake server's own logger: quiet below WARNING, so that its debug lines (which show
# what the client sent, secret included) are never mistaken for the agent's.
FAKE_LOG = logging.getLogger("tests.fake_prefect")
FAKE_LOG.setLevel(logging.WARNING)

Message = dict[str, Any] | str  # a str is sent as it is (not JSON, say)


class FakePrefect:
    """A websocket server answering like Prefect's /api/events/out. Connection i gets
    script[i] after its filter; each but the last is then closed by the server (1000),
    the last is held open until shut(). Records what every connection sent."""

    def __init__(self, script: Sequence[Sequence[Message]], refuse: bool) -> None:
        self.script, self.refuse = script, refuse
        self.opened_at: list[float] = []
        self.paths: list[str | None] = []
        self.subprotocols: list[str | None] = []
        self.authorizations: list[str | None] = []
        self.tokens: list[object] = []
        self.filters: list[dict[str, Any]] = []
        self._closing = threading.Event()
        self._server: Server = serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol("prefect")],
            logger=FAKE_LOG,
        )
        self.port: int = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def shut(self) -> None:
        """Stop listening and close the connection held open (1001 going away)."""
        self._closing.set()
        self._server.shutdown()
        self._thread.join(5)

    def _handle(self, ws: ServerConnection) -> None:
        index = len(self.opened_at)
        self.opened_at.append(time.monotonic())
        request = ws.request
        self.paths.append(request.path if request else None)
        self.authorizations.append(request.headers.get("Authorization") if request else None)
        self.subprotocols.append(ws.subprotocol)
        if self.paths[-1] != "/api/events/out" or ws.subprotocol != "prefect":
            ws.close(1002, "'prefect' subprotocol required when auth is configured")
            return
        with contextlib.suppress(ConnectionClosed):
            self.tokens.append(json.loads(ws.recv(timeout=5)).get("token"))
            if self.refuse:
                ws.send(json.dumps({"type": "auth_failure", "reason": "bad token"}))
                ws.close(1008, "bad token")
                return
            ws.send(json.dumps({"type": "auth_success"}))
            self.filters.append(json.loads(ws.recv(timeout=5)))
            for message in self.script[index] if index < len(self.script) else ():
                ws.send(message if isinstance(message, str) else json.dumps(message))
            if index + 1 < len(self.script):
                ws.close()  # this connection's script is done: the client comes back
                return
            while not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    ws.recv(timeout=0.05)
            ws.close(1001)


@dataclass
class Calls:
    wakes: int = 0
    cancels: int = 0
    schedules: int = 0

    def wake(self) -> None:
        self.wakes += 1

    def cancel(self) -> None:
        self.cancels += 1

    def schedule(self) -> None:
        self.schedules += 1


class Harness:
    """Fake servers and EventStreams started by one test; all stopped at teardown."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.fakes: list[FakePrefect] = []
        self.streams: list[EventStream] = []

    def prefect(self, *script: Sequence[Message], refuse: bool = False) -> FakePrefect:
        fake = FakePrefect(script or ((),), refuse)
        self.fakes.append(fake)
        return fake

    def stream(
        self,
        port: int,
        pool_id: Callable[[], str | None] = lambda: POOL,
        key: str | None = None,
    ) -> tuple[EventStream, Calls]:
        calls = Calls()
        api = ApiSettings(
            url=f"http://127.0.0.1:{port}/api", key=key, auth_string=None if key else AUTH
        )
        stream = EventStream(
            api,
            pool_id=pool_id,
            wake=calls.wake,
            cancel=calls.cancel,
            stop=self.stop,
            schedule=calls.schedule,
        )
        stream.start()
        self.streams.append(stream)
        return stream, calls

    def close(self) -> None:
        self.stop.set()
        for fake in self.fakes:
            fake.shut()  # the stream's recv ends at once, not at its 1 s tick
        for stream in self.streams:
            # Not join(): EventStream's `_stop` attribute shadows Thread._stop (see
            # test_a_stopped_stream_can_be_joined).
            assert eventually(functools.partial(ended, stream)), "the events thread runs on"


@pytest.fixture
def harness() -> Iterator[Harness]:
    world = Harness()
    try:
        yield world
    finally:
        world.close()


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def ended(thread: threading.Thread) -> bool:
    return thread not in threading.enumerate()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


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
