"""agent.api.http against real sockets on 127.0.0.1: a threaded http.server, raw-socket
servers for odd answers, a TLS server with a throwaway self-signed certificate, and a
small proxy that serves absolute-form requests and CONNECT tunnels."""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.api.http import (
    HttpConnectionError,
    HttpError,
    HttpSession,
    HttpTimeout,
    bypasses,
    proxy_for,
)

T = (2.0, 2.0)  # (connect, read) timeouts where nothing should time out
REPO = Path(__file__).resolve().parents[2]


# -- servers -------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    """Counts TCP connections; on close, ends every handler thread (kept-alive ones too)."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Echo)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self.thread.join(5)


class Echo(BaseHTTPRequestHandler):
    """Answers with JSON of what it got; a few paths answer in odd but valid ways."""

    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, *extra: tuple[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
            return
        if path == "/204":
            self.send_response(204)
            self.end_headers()
            return
        if path == "/teapot":
            ctype = "text/plain; charset=latin-1"
            self._send(418, "café".encode("latin-1"), ctype, ("X-Twice", "a"), ("X-Twice", "b"))
            return
        if path == "/continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body.decode(),
        }
        extra = [("Connection", "close")] if path == "/close" else []
        self._send(200, json.dumps(seen).encode(), "application/json", *extra)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")  # of the GET it stands for: no body follows
        self.end_headers()


class RawServer:
    """Runs ``handle(conn)`` in a thread for each connection; for answers http.server
    would not give."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.handle = handle
        self.accepted: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            self.accepted.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self.handle(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()
        for conn in self.accepted:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)


def read_head(conn: socket.socket) -> bytes:
    """A request's line and headers (bodies are not needed by the raw servers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handle: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(handle))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


@pytest.fixture
def session() -> Iterator[HttpSession]:
    s = HttpSession(env={})  # never the proxies of the machine running the tests
    yield s
    s.close()


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


# -- requests and responses ------------------------------------------------------------


def test_get_sends_the_expected_head(server: Server, session: HttpSession) -> None:
    session.headers["X-Prefect-Api-Version"] = "0.8.4"
    response = session.get(f"{server.url}/health?x=1", timeout=T)
    assert (response.status_code, response.reason) == (200, "OK")
    seen = response.json()
    port = server.server_address[1]
    assert seen["method"] == "GET"
    assert seen["path"] == "/health?x=1"
    assert seen["body"] == ""
    headers = seen["headers"]
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert headers["User-Agent"] == "local-agent"
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Accept"] == "application/json"
    assert headers["X-Prefect-Api-Version"] == "0.8.4"
    assert "Content-Length" not in headers and "Content-Type" not in headers
    assert response.headers.get("content-type") == "application/json"
    assert "CONTENT-LENGTH" in response.headers
    assert response.headers.get("X-Missing") is None


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE"])
def test_json_body_round_trip(server: Server, session: HttpSession, method: str) -> None:
    body = {"name": "pool", "labels": {"k": "v"}, "n": [1, 2.5, None], "u": "é"}
    response = session.request(method, f"{server.url}/work_pools/", json=body, timeout=T)
    seen = response.json()
    assert seen["method"] == method
    assert json.loads(seen["body"]) == body
    sent = json.dumps(body, separators=(",", ":")).encode()
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["Content-Length"] == str(len(sent))


def test_json_none_is_null_and_no_json_no_body(server: Server, session: HttpSession) -> None:
    assert session.request("POST", server.url, json=None, timeout=T).json()["body"] == "null"
    seen = session.request("POST", server.url, timeout=T).json()
    assert seen["headers"]["Content-Length"] == "0"  # as requests: some servers want it
    assert "Content-Type" not in seen["headers"]


def test_status_reason_text_and_bad_json(server: Server, session: HttpSession) -> None:
    response = session.get(f"{server.url}/teapot", timeout=T)
    assert (response.status_code, response.reason) == (418, "I'm a Teapot")
    assert response.content == "café".encode("latin-1")
    assert response.text == "café"  # the charset of Content-Type, not utf-8
    assert response.headers["x-twice"] == "a, b"
    with pytest.raises(ValueError):
        response.json()


def test_chunked_with_extension_and_trailer_then_reuse(
    server: Server, session: HttpSession
) -> None:
    assert session.get(f"{server.url}/chunked", timeout=T).content == b"hello world"
    assert session.get(f"{server.url}/echo", timeout=T).status_code == 200
    assert len(server.connections) == 1  # the chunked body ended where it said


def test_204_and_head_have_no_body(server: Server, session: HttpSession) -> None:
    assert session.request("DELETE", f"{server.url}/204", timeout=T).content == b""
    head = session.request("HEAD", f"{server.url}/x", timeout=T)
    assert (head.status_code, head.content, head.headers["Content-Length"]) == (200, b"", "10")
    # Nothing was waited for, and the connection still carries a next request.
    assert session.get(f"{server.url}/x", timeout=T).json()["method"] == "GET"
    assert len(server.connections) == 1


def test_interim_100_continue_is_skipped(server: Server, session: HttpSession) -> None:
    response = session.get(f"{server.url}/continue", timeout=T)
    assert response.status_code == 200
    assert response.json()["path"] == "/continue"


def test_body_read_to_close_http_1_0(raw: Any, session: HttpSession) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 100_000)

    srv = raw(handle)
    assert session.get(srv.url, timeout=T).content == b"x" * 100_000
    assert session.get(srv.url, timeout=T).content == b"x" * 100_000
    assert len(srv.accepted) == 2  # a body that ends at the close ends the connection


def test_userinfo_becomes_basic_auth(server: Server, session: HttpSession) -> None:
    port = server.server_address[1]
    seen = session.get(f"http://us%40r:p%3Ass@127.0.0.1:{port}/x", timeout=T).json()
    assert seen["headers"]["Authorization"] == "Basic " + base64.b64encode(b"us@r:p:ss").decode()
    assert seen["headers"]["Host"] == f"127.0.0.1:{port}"
    session.headers["Authorization"] = "Bearer key"
    seen = session.get(f"http://user:pass@127.0.0.1:{port}/x", timeout=T).json()
    assert seen["headers"]["Authorization"] == "Bearer key"


def test_crlf_in_a_header_value_is_refused(server: Server, session: HttpSession) -> None:
    session.headers["X-Evil"] = "a\r\nX-Injected: 1"
    with pytest.raises(HttpError, match="X-Evil") as caught:
        session.get(server.url, timeout=T)
    assert "Injected" not in str(caught.value)  # the value is never shown
    assert server.connections == []  # nothing was sent
    del session.headers["X-Evil"]
    # The URL cannot inject either: what is not safe in a request-target is quoted.
    seen = session.get(f"{server.url}/a b\x01c", timeout=T).json()
    assert seen["path"] == "/a%20b%01c"


# -- keep-alive -------------------------------------------------------------------------


def test_sequential_requests_share_one_connection(server: Server, session: HttpSession) -> None:
    for i in range(3):
        assert session.get(f"{server.url}/{i}", timeout=T).json()["path"] == f"/{i}"
    assert len(server.connections) == 1


def test_connection_close_opens_a_new_one(server: Server, session: HttpSession) -> None:
    session.get(f"{server.url}/close", timeout=T)
    session.get(f"{server.url}/x", timeout=T)
    assert len(server.connections) == 2


@pytest.mark.parametrize(
    "parting", [b"", b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n"]
)
def test_idle_connection_closed_by_server_is_not_reused(
    raw: Any, session: HttpSession, parting: bytes
) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # Then it closes, as a server does when its keep-alive timeout runs out; some
        # say 408 first, which must not be taken for the answer to the next request.
        conn.sendall(parting)

    srv = raw(handle)
    assert session.get(srv.url, timeout=T).content == b"ok"
    srv.threads[0].join(5)
    assert session.get(srv.url, timeout=T).content == b"ok"
    assert len(srv.accepted) == 2


def test_server_closing_as_request_arrives_is_retried_once(raw: Any, session: HttpSession) -> None:
    """The race the idle check cannot see: the server closes just as the request goes out."""

    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        read_head(conn)  # the second request: closed unanswered

    srv = raw(handle)
    assert session.get(srv.url, timeout=T).content == b"ok"
    assert session.get(srv.url, timeout=T).content == b"ok"
    assert len(srv.accepted) == 2


def test_new_connection_failure_is_not_retried(raw: Any, session: HttpSession) -> None:
    srv = raw(read_head)  # reads the request, closes without a word
    with pytest.raises(HttpConnectionError, match="closed the connection without answering"):
        session.get(srv.url, timeout=T)
    assert len(srv.accepted) == 1


def test_concurrent_requests_from_threads(server: Server, session: HttpSession) -> None:
    results: dict[int, list[Any]] = {}

    def work(n: int) -> None:
        results[n] = [
            session.request("POST", f"{server.url}/{n}", json={"n": n, "i": i}, timeout=T).json()
            for i in range(5)
        ]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == list(range(8))
    for n, answers in results.items():
        assert [json.loads(a["body"]) for a in answers] == [{"n": n, "i": i} for i in range(5)]
        assert {a["path"] for a in answers} == {f"/{n}"}
    assert len(server.connections) <= 8


# -- failures ---------------------------------------------------------------------------


def test_connection_refused_names_host_port_not_userinfo(session: HttpSession) -> None:
    port = closed_port()
    with pytest.raises(HttpConnectionError) as caught:
        session.get(f"http://u:secret@127.0.0.1:{port}/api", timeout=T)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "refused" in message
    assert "secret" not in message and "u:" not in message


def test_silent_server_is_a_read_timeout(raw: Any, session: HttpSession) -> None:
    gone = threading.Event()

    def handle(conn: socket.socket) -> None:
        read_head(conn)
        gone.wait(5)  # never answers

    srv = raw(handle)
    started = time.monotonic()
    with pytest.raises(HttpTimeout, match=r"read .* timed out"):
        session.get(srv.url, timeout=(2.0, 0.3))
    assert 0.3 <= time.monotonic() - started < 1.5
    gone.set()


def test_full_backlog_is_a_connect_timeout(session: HttpSession) -> None:
    # Linux drops SYNs to a listener whose accept queue is full: connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            with pytest.raises(HttpTimeout, match=r"connect .* timed out"):
                session.get(f"http://127.0.0.1:{port}/", timeout=(0.3, 2.0))
        finally:
            for filler in fillers:
                filler.close()


def test_garbage_is_not_http(raw: Any, session: HttpSession) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    with pytest.raises(HttpConnectionError, match="not HTTP"):
        session.get(raw(handle).url, timeout=T)


def test_close_mid_body(raw: Any, session: HttpSession) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    with pytest.raises(HttpConnectionError, match="mid-response"):
        session.get(raw(handle).url, timeout=T)


def test_close_mid_chunked_body(raw: Any, session: HttpSession) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhello")

    with pytest.raises(HttpConnectionError, match="mid-response"):
        session.get(raw(handle).url, timeout=T)


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"X-Long: " + b"a" * 9000 + b"\r\n", "a line over 8 KiB"),
        (b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70)), "over 64 KiB"),
    ],
)
def test_oversize_header(raw: Any, session: HttpSession, head: bytes, why: str) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 0\r\n\r\n")

    with pytest.raises(HttpError, match=f"malformed response.*{why}"):
        session.get(raw(handle).url, timeout=T)


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    key, crt = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest.fixture
def tls_server(cert: tuple[Path, Path]) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    srv = Server(tls=context)
    yield srv
    srv.close()


def https(srv: Server, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{srv.server_address[1]}"


def test_https_with_ca_bundle(tls_server: Server, cert: tuple[Path, Path]) -> None:
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        s = HttpSession(env={var: str(cert[0])})
        try:
            for host in ("127.0.0.1", "localhost"):
                seen = s.request("POST", f"{https(tls_server, host)}/x", json=[1], timeout=T)
                assert seen.json()["body"] == "[1]"
        finally:
            s.close()


def test_unreadable_ca_bundle_names_the_variable(tmp_path: Path) -> None:
    s = HttpSession(env={"CURL_CA_BUNDLE": str(tmp_path / "missing.pem")})
    with pytest.raises(HttpError, match="CA certificates named by CURL_CA_BUNDLE"):
        s.get("https://127.0.0.1:1/", timeout=T)


def test_https_unknown_certificate_says_what_to_do(tls_server: Server) -> None:
    s = HttpSession(env={})
    try:
        with pytest.raises(HttpConnectionError, match=r"certificate.*REQUESTS_CA_BUNDLE"):
            s.get(https(tls_server), timeout=T)
    finally:
        s.close()


# -- proxies ----------------------------------------------------------------------------


class Proxy(RawServer):
    """Serves absolute-form requests itself and tunnels CONNECT; records request heads."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        super().__init__(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        head = read_head(conn).decode("latin-1")
        self.seen.append(head)
        if not head.startswith("CONNECT "):
            body = json.dumps({"proxied": head.split("\r\n")[0]}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        host, port = head.split()[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            pair = {conn: upstream, upstream: conn}
            while True:
                ready, _, _ = select.select(list(pair), [], [], 5)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
                if not ready:
                    return


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    yield p
    p.close()


def test_http_through_proxy_is_absolute_form(proxy: Proxy) -> None:
    s = HttpSession(env={"http_proxy": f"http://pu:psecret@127.0.0.1:{proxy.port}"})
    try:
        answer = s.get("http://api.example:4200/api/health?x=1", timeout=T).json()
    finally:
        s.close()
    assert answer["proxied"] == "GET http://api.example:4200/api/health?x=1 HTTP/1.1"
    assert "Host: api.example:4200\r\n" in proxy.seen[0]
    auth = base64.b64encode(b"pu:psecret").decode()
    assert f"Proxy-Authorization: Basic {auth}\r\n" in proxy.seen[0]


def test_https_through_proxy_tunnels(
    proxy: Proxy, tls_server: Server, cert: tuple[Path, Path]
) -> None:
    # No scheme: a bare host:port proxy is http://, as for requests and curl.
    env = {"HTTPS_PROXY": f"pu:psecret@127.0.0.1:{proxy.port}", "REQUESTS_CA_BUNDLE": str(cert[0])}
    s = HttpSession(env=env)
    try:
        answers = [s.get(f"{https(tls_server, 'localhost')}/x", timeout=T).json() for _ in "ab"]
    finally:
        s.close()
    assert [a["path"] for a in answers] == ["/x", "/x"]
    port = tls_server.server_address[1]
    assert len(proxy.seen) == 1  # one tunnel, kept alive
    assert proxy.seen[0].startswith(f"CONNECT localhost:{port} HTTP/1.1\r\n")
    auth = base64.b64encode(b"pu:psecret").decode()
    assert f"Proxy-Authorization: Basic {auth}\r\n" in proxy.seen[0]
    # The proxy's credentials go to the proxy only, never through the tunnel.
    assert "Proxy-Authorization" not in answers[0]["headers"]
    assert answers[0]["headers"]["Host"] == f"localhost:{port}"


def test_proxy_refusing_the_tunnel(raw: Any, session: HttpSession) -> None:
    def handle(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

    srv = raw(handle)
    s = HttpSession(env={"https_proxy": f"http://pu:psecret@127.0.0.1:{srv.port}"})
    try:
        with pytest.raises(HttpConnectionError, match=r"refused the tunnel.*407") as caught:
            s.get("https://api.example/x", timeout=T)
    finally:
        s.close()
    assert "psecret" not in str(caught.value)


def test_no_proxy_goes_direct(proxy: Proxy, server: Server) -> None:
    env = {"http_proxy": f"http://127.0.0.1:{proxy.port}", "no_proxy": "localhost,127.0.0.1"}
    s = HttpSession(env=env)
    try:
        assert s.get(f"{server.url}/direct", timeout=T).json()["path"] == "/direct"
    finally:
        s.close()
    assert proxy.seen == []


def test_unsupported_proxy_scheme_names_the_variable() -> None:
    s = HttpSession(env={"HTTPS_PROXY": "socks5://pu:psecret@127.0.0.1:1080"})
    with pytest.raises(HttpError, match=r"HTTPS_PROXY.*only http:// proxies") as caught:
        s.get("https://api.example/x", timeout=T)
    assert "psecret" not in str(caught.value)


def test_unreachable_proxy_hides_its_credentials() -> None:
    port = closed_port()
    s = HttpSession(env={"all_proxy": f"http://pu:psecret@127.0.0.1:{port}"})
    with pytest.raises(HttpConnectionError, match=rf"proxy 127\.0\.0\.1:{port}.*refused") as caught:
        s.get("http://api.example/x", timeout=T)
    assert "psecret" not in str(caught.value) and "pu:" not in str(caught.value)


def test_proxy_for_reads_the_environment_like_curl() -> None:
    url = "http://api.example.com:4200/api"
    assert proxy_for(url, {}) is None
    assert proxy_for(url, {"HTTP_PROXY": "http://up:1"}) == "http://up:1"
    assert proxy_for(url, {"http_proxy": "http://low:1", "HTTP_PROXY": "http://up:1"}) == (
        "http://low:1"
    )
    assert proxy_for(url, {"https_proxy": "http://s:1"}) is None  # the http URL's own
    assert proxy_for("https://h/", {"https_proxy": "http://s:1"}) == "http://s:1"
    assert proxy_for(url, {"ALL_PROXY": "http://all:1"}) == "http://all:1"
    assert proxy_for(url, {"http_proxy": "p:3128"}) == "http://p:3128"
    # An empty lowercase variable still wins: it turns the uppercase off.
    assert proxy_for(url, {"http_proxy": "", "HTTP_PROXY": "http://up:1"}) is None
    env = {"http_proxy": "http://p:1", "NO_PROXY": "example.com"}
    assert proxy_for(url, env) is None
    assert proxy_for(url, {**env, "no_proxy": "other.org"}) == "http://p:1"


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("api.example.com", 443, "*", True),
        ("api.example.com", 443, "", False),
        ("api.example.com", 443, "example.com", True),
        ("api.example.com", 443, ".example.com", True),
        ("example.com", 443, ".example.com", True),
        ("api.example.com", 443, "foo.org, example.com", True),
        ("badexample.com", 443, "example.com", False),
        ("example.com.evil.org", 443, "example.com", False),
        ("api.example.com", 443, "example.com:443", True),
        ("api.example.com", 8443, "example.com:443", False),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("10.1.2.3", 80, "10.1.2.3", True),
        ("10.1.2.3", 80, "10.1.2.3:81", False),
        ("10.1.2.3", 80, "example.com", False),
        ("::1", 80, "::1", True),
        ("::1", 80, "[::1]:80", True),
        ("fd00::5", 80, "fd00::/8", True),
        ("localhost", 80, "127.0.0.1", False),  # names are not resolved
        ("API.Example.COM", 80, "example.com", True),
    ],
)
def test_bypasses(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypasses(host, port, no_proxy) is expected


# -- import cost ------------------------------------------------------------------------


def test_import_and_plain_request_stay_light(server: Server) -> None:
    code = f"""
import sys
import agent.api.http as http
HEAVY = ("ssl", "_ssl", "http.client", "email", "urllib.request", "hashlib", "_hashlib")
def heavy():
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m in HEAVY)
assert not heavy(), ("import", heavy())
session = http.HttpSession(env={{}})
assert session.get({server.url + "/x"!r}, timeout=(2, 2)).status_code == 200
session.close()
assert not heavy(), ("request", heavy())
print("light")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "light"
