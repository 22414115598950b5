"""agent.api.http keep-alive against real sockets on 127.0.0.1: one connection reused for
sequential requests, a new one after Connection: close or an idle close by the server,
one retry when the server closes as a reused connection's request goes out, and
requests from many threads at once."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from agent.api.http import HttpConnectionError, HttpSession
from tests.unit.http_support import Server, T, raw, read_head, server, session

__all__ = ["raw", "server", "session"]  # the fixtures, imported for pytest to find


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
