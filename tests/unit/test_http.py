"""agent.api.http through proxies, against real sockets on 127.0.0.1: a small proxy that
serves absolute-form requests and CONNECT tunnels (Proxy, also used by
test_events_proxy.py), proxy credentials kept from the tunnel and from errors, no_proxy,
and how proxy_for and bypasses read the environment like curl."""

from __future__ import annotations

import base64
import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api.http import HttpConnectionError, HttpError, HttpSession, bypasses, proxy_for
from tests.unit.http_support import (
    RawServer,
    Server,
    T,
    cert,
    closed_port,
    https,
    raw,
    read_head,
    server,
    session,
    tls_server,
)

__all__ = ["cert", "raw", "server", "session", "tls_server"]  # the fixtures, for pytest to find


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
