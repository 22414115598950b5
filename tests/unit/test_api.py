"""agent/api/client.py: PrefectClient against a real, scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import email.utils
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest

from agent.api.client import PrefectClient, parse_retry_after
from agent.core.errors import ApiError, AuthError, NotFoundError, TransientApiError
from agent.core.jobvars import base_job_template
from agent.core.states import WorkPool
from agent.settings.config import ApiSettings

Reply = tuple[int, dict[str, str], bytes]


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    payload = b"" if body is None else json.dumps(body).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, payload


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        server = cast(ScriptedServer, self.server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        with server.lock:
            server.seen.append(Seen(self.command, self.path, headers, body))
            if server.replies:
                status, extra, payload = server.replies.pop(0)
            else:
                status, extra, payload = reply(500, {"detail": "unscripted request"})
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next scripted reply and records what it saw."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def sleeps() -> list[float]:
    return []


MakeClient = Callable[..., PrefectClient]


@pytest.fixture
def make_client(server: ScriptedServer, sleeps: list[float]) -> Iterator[MakeClient]:
    clients: list[PrefectClient] = []

    def make(**settings: Any) -> PrefectClient:
        client = PrefectClient(ApiSettings(url=server.api_url, **settings), sleep=sleeps.append)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.session.close()


@pytest.fixture
def client(make_client: MakeClient) -> PrefectClient:
    return make_client()


# -- retries ---------------------------------------------------------------------------


def test_503_then_201_is_retried_and_returns_the_body(
    server: ScriptedServer, client: PrefectClient, sleeps: list[float]
) -> None:
    server.script(reply(503, {"detail": "busy"}), reply(201, {"id": "pool-id"}))
    result = client.request("create_work_pool", "POST", "/work_pools/", {"name": "p"})
    assert result == {"id": "pool-id"}
    assert len(server.seen) == 2
    assert [s.json() for s in server.seen] == [{"name": "p"}, {"name": "p"}]
    assert len(sleeps) == 1


def test_429_retry_after_is_honoured(
    server: ScriptedServer, client: PrefectClient, sleeps: list[float]
) -> None:
    server.script(reply(429, {"detail": "slow down"}, {"Retry-After": "7"}), reply(200, [1]))
    assert client.request("heartbeat", "GET", "/x") == [1]
    assert sleeps == [7.0]


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried(
    server: ScriptedServer, client: PrefectClient, status: int
) -> None:
    server.script(reply(status), reply(status), reply(200, {"ok": True}))
    assert client.request("health", "GET", "/health") == {"ok": True}
    assert len(server.seen) == 3


def test_transient_errors_until_the_deadline_raise_transient_error(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    client = make_client(retry_deadline=0.0)
    server.script(reply(503, {"detail": "down for maintenance"}), reply(200, {}))
    with pytest.raises(TransientApiError, match="down for maintenance") as info:
        client.request("read_flow_run", "GET", "/flow_runs/r1")
    assert info.value.status == 503
    assert len(server.seen) == 1


def test_400_fails_at_once_naming_the_call_and_the_reason(
    server: ScriptedServer, client: PrefectClient, sleeps: list[float]
) -> None:
    server.script(reply(400, {"detail": "bad thing"}), reply(200, {}))
    with pytest.raises(ApiError) as info:
        client.request("create_work_pool", "POST", "/work_pools/", {})
    assert not isinstance(info.value, TransientApiError)
    assert "create_work_pool" in str(info.value)
    assert "bad thing" in str(info.value)
    assert info.value.status == 400
    assert len(server.seen) == 1
    assert sleeps == []


def test_500_is_not_retried(server: ScriptedServer, client: PrefectClient) -> None:
    server.script(reply(500, {"exception_message": "Internal Server Error"}), reply(200, {}))
    with pytest.raises(ApiError, match="Internal Server Error") as info:
        client.request("read_flow_run", "GET", "/flow_runs/r1")
    assert not isinstance(info.value, TransientApiError)
    assert len(server.seen) == 1


def test_401_is_an_auth_error_saying_the_credential_is_wrong(
    server: ScriptedServer, client: PrefectClient
) -> None:
    server.script(reply(401, {"detail": "Unauthorized"}), reply(200, {}))
    with pytest.raises(AuthError, match="the API key or auth string is wrong") as info:
        client.read_work_pool("pool1")
    assert "read_work_pool" in str(info.value)
    assert len(server.seen) == 1


def test_403_is_an_auth_error(server: ScriptedServer, client: PrefectClient) -> None:
    server.script(reply(403, {"detail": "Forbidden"}))
    with pytest.raises(AuthError, match="access denied"):
        client.read_work_pool("pool1")


def test_404_is_not_found(server: ScriptedServer, client: PrefectClient) -> None:
    server.script(reply(404, {"detail": "Work pool not found."}))
    with pytest.raises(NotFoundError, match="Work pool not found") as info:
        client.read_work_pool("pool1")
    assert info.value.status == 404
    assert server.seen[0].method == "GET"
    assert server.seen[0].path == "/api/work_pools/pool1"


def test_non_json_error_body_is_reported_as_text(
    server: ScriptedServer, client: PrefectClient
) -> None:
    server.script((400, {"Content-Type": "text/plain"}, b"plain words of woe"))
    with pytest.raises(ApiError, match="plain words of woe"):
        client.request("health", "GET", "/health")


def test_204_returns_none(server: ScriptedServer, client: PrefectClient) -> None:
    server.script(reply(204))
    assert client.request("update_flow_run", "PATCH", "/flow_runs/r1", {"x": 1}) is None
    assert server.seen[0].method == "PATCH"


def test_heartbeat_posts_worker_name_and_interval(
    server: ScriptedServer, client: PrefectClient
) -> None:
    server.script(reply(204))
    client.heartbeat("pool1", "agent-host", 30.0)
    assert server.seen[0].path == "/api/work_pools/pool1/workers/heartbeat"
    assert server.seen[0].json() == {"name": "agent-host", "heartbeat_interval_seconds": 30}


def test_connection_refused_retries_until_the_deadline(sleeps: list[float]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = ApiSettings(url=f"http://127.0.0.1:{port}/api", retry_deadline=0.05)
    client = PrefectClient(settings, sleep=sleeps.append)
    try:
        with pytest.raises(TransientApiError, match="cannot reach") as info:
            client.request("health", "GET", "/health")
    finally:
        client.session.close()
    assert info.value.call == "health"
    assert len(sleeps) >= 1


# -- authentication --------------------------------------------------------------------


def test_key_is_sent_as_bearer(server: ScriptedServer, make_client: MakeClient) -> None:
    server.script(reply(200, True))
    assert make_client(key="pnu_abc123").health() is True
    assert server.seen[0].headers["authorization"] == "Bearer pnu_abc123"


def test_auth_string_is_sent_as_basic(server: ScriptedServer, make_client: MakeClient) -> None:
    server.script(reply(200, True))
    make_client(auth_string="user:pass").health()
    expected = "Basic " + base64.b64encode(b"user:pass").decode()
    assert server.seen[0].headers["authorization"] == expected


def test_no_credential_sends_no_authorization(
    server: ScriptedServer, client: PrefectClient
) -> None:
    server.script(reply(200, True))
    client.health()
    assert "authorization" not in server.seen[0].headers


def test_api_version_header_is_sent(server: ScriptedServer, client: PrefectClient) -> None:
    server.script(reply(200, True))
    client.health()
    assert server.seen[0].headers["x-prefect-api-version"]


# -- ensure_work_pool ------------------------------------------------------------------


def test_ensure_work_pool_creates_a_missing_pool(
    server: ScriptedServer, client: PrefectClient
) -> None:
    template = base_job_template()
    server.script(
        reply(404, {"detail": "not found"}),
        reply(201, {"name": "pool1", "type": "local-agent", "base_job_template": template}),
    )
    assert client.ensure_work_pool("pool1", "local-agent", template) == WorkPool(
        "pool1", "local-agent", template
    )
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", "/api/work_pools/pool1"),
        ("POST", "/api/work_pools/"),
    ]
    assert server.seen[1].json() == {
        "name": "pool1",
        "type": "local-agent",
        "base_job_template": template,
    }


def test_ensure_work_pool_reads_again_after_losing_the_create_race(
    server: ScriptedServer, client: PrefectClient
) -> None:
    server.script(
        reply(404, {"detail": "not found"}),
        reply(409, {"detail": "already exists"}),
        reply(200, {"name": "pool1", "type": "process", "id": "theirs"}),
    )
    pool = client.ensure_work_pool("pool1", "local-agent", base_job_template())
    assert pool == WorkPool("pool1", "process", id="theirs")  # the one read back
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", "/api/work_pools/pool1"),
        ("POST", "/api/work_pools/"),
        ("GET", "/api/work_pools/pool1"),
    ]


def test_ensure_work_pool_returns_an_existing_pool_without_creating(
    server: ScriptedServer, client: PrefectClient
) -> None:
    server.script(reply(200, {"name": "pool1"}))
    assert client.ensure_work_pool("pool1", "local-agent", base_job_template()) == WorkPool(
        "pool1", ""
    )
    assert len(server.seen) == 1


def test_ensure_work_pool_other_create_error_is_raised(
    server: ScriptedServer, client: PrefectClient
) -> None:
    server.script(reply(404, {"detail": "nf"}), reply(422, {"detail": "bad template"}))
    with pytest.raises(ApiError, match="bad template") as info:
        client.ensure_work_pool("pool1", "local-agent", base_job_template())
    assert info.value.call == "create_work_pool"
    assert len(server.seen) == 2


# -- parse_retry_after -----------------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0


def test_retry_after_date_in_the_past_is_zero() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "Someday, 99 Foo 2024"])
def test_retry_after_missing_or_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_is_capped_at_60_seconds() -> None:
    assert parse_retry_after("3600") == 60.0
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 600, usegmt=True), now=now) == 60.0


def test_retry_after_negative_is_zero() -> None:
    assert parse_retry_after("-5") == 0.0
