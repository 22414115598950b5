"""agent.api.http failures against raw sockets on 127.0.0.1: refused connections, connect
and read timeouts, answers that are not HTTP, connections closed mid-body, and oversize
headers; what the errors say, and that they never show credentials."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from agent.api.http import HttpConnectionError, HttpError, HttpSession, HttpTimeout
from tests.unit.http_support import T, closed_port, raw, read_head, session

__all__ = ["raw", "session"]  # the fixtures, imported for pytest to find


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
