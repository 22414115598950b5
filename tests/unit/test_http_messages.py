"""agent.api.http requests and responses on the wire, against a threaded http.server and
raw-socket servers on 127.0.0.1: the request head, JSON bodies, status and reason,
chunked, bodiless and read-to-close bodies, interim 100s, basic auth from userinfo, and
header injection refused."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import pytest

from agent.api.http import HttpError, HttpSession
from tests.unit.http_support import Server, T, raw, read_head, server, session

__all__ = ["raw", "server", "session"]  # the fixtures, imported for pytest to find


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
