"""Shared by the events unit tests (test_events_frames, test_events_read,
test_events_stream, test_events_proxy): messages as Prefect 3.8.8 sends them on
/api/events/out, and a Harness that starts a fake Prefect events server (a real websocket
server on 127.0.0.1 that answers like Prefect 3.8.8's /api/events/out, see
reference/prefect3-events.md) and EventStreams against it, all stopped at teardown."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from agent.poller.events import EventStream
from agent.settings.config import ApiSettings

AUTH = "user:pass"
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


# -- a fake Prefect events server, and EventStreams started against it ----------------------


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
