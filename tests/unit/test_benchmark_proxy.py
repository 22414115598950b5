"""ops/benchmark/proxy.py: the request lines found in a connection's bytes, however they
are split, and a real proxied connection on loopback (keep-alive, then a websocket)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from ops.benchmark.proxy import CountingProxy, RequestCounter, per_minute

GET = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b'{"x": "GET /api/not-a-line"}'
POST = (
    b"POST /api/work_pools/p/get_scheduled_flow_runs HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
) + BODY
CHUNKED = (
    b"POST /api/logs/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n10\r\nGET / HTTP/1.1\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
)
UPGRADE = (
    b"GET /api/events/out HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
)
# Client frames are masked: a 5-byte text message, a ping (control: not a message), a
# 200-byte binary message (16-bit length) and a close; a payload may look like HTTP.
WEBSOCKET_FRAMES = (
    b"\x81\x85abcd" + b"GET /"
    + b"\x89\x80abcd"
    + b"\x82\xfe\x00\xc8abcd" + b"GET /api/x HTTP/1.1\r\n\r\n".ljust(200, b"x")
    + b"\x88\x80abcd"
)  # fmt: skip


def feed_all(data: bytes, piece: int) -> list[str]:
    counter = RequestCounter()
    found = []
    for i in range(0, len(data), piece):
        found += counter.feed(data[i : i + piece])
    return found


@pytest.mark.parametrize("piece", [1, 2, 7, 64, 10_000])
def test_each_request_line_counts_once_however_the_bytes_are_split(piece: int) -> None:
    stream = GET + POST + CHUNKED + GET + UPGRADE + WEBSOCKET_FRAMES
    assert feed_all(stream, piece) == [
        "GET /api/health",
        "POST /api/work_pools/p/get_scheduled_flow_runs",
        "POST /api/logs/",
        "GET /api/health",
        "GET /api/events/out",  # the websocket counts as one request: its upgrade
        "WS /api/events/out",  # then each data message apart
        "WS /api/events/out",
    ]


def test_a_body_that_looks_like_a_request_is_not_one() -> None:
    body = b"GET /api/inside-a-body HTTP/1.1\r\n\r\n"
    head = b"PATCH /api/x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert feed_all(head + body + GET, 3) == ["PATCH /api/x", "GET /api/health"]


def test_after_a_websocket_upgrade_only_its_data_messages_count() -> None:
    counter = RequestCounter()
    assert counter.feed(UPGRADE) == ["GET /api/events/out"]
    assert counter.feed(b"\x89\x80abcd") == []  # a ping
    assert counter.feed(b"\x81\x83abcd" + b"GET") == ["WS /api/events/out"]
    long = 70_000  # a 64-bit length
    header = b"\x82\xff" + long.to_bytes(8, "big") + b"abcd"
    assert counter.feed(header + b"x" * 1000) == ["WS /api/events/out"]
    assert counter.feed(b"y" * (long - 1000)) == []
    assert counter.feed(b"\x81\x80abcd") == ["WS /api/events/out"]


def test_another_upgrade_stops_the_count() -> None:
    counter = RequestCounter()
    h2c = b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    assert counter.feed(h2c) == ["GET /"]
    assert counter.raw
    assert counter.feed(GET * 3) == []


def test_garbage_stops_the_count_instead_of_inventing_requests() -> None:
    counter = RequestCounter()
    assert counter.feed(b"\x16\x03\x01 not http\r\n\r\n" + GET) == []
    assert counter.raw


def test_per_minute_counts_only_the_window() -> None:
    times = [0.0, 10.0, 20.0, 30.0, 95.0]
    assert per_minute(times, 10.0, 40.0) == pytest.approx(3 * 60 / 30)
    assert per_minute(times, 40.0, 40.0) is None


@pytest.fixture
def upstream() -> Iterator[tuple[str, int]]:
    """A server that answers each HTTP request with a fixed 200, and after a websocket
    upgrade echoes raw bytes back."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        counter = RequestCounter()
        upgraded = False
        with conn:
            while data := conn.recv(65536):
                if upgraded:
                    conn.sendall(data)
                    continue
                for line in counter.feed(data):
                    if line.endswith("/events/out"):
                        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                        upgraded = True
                    else:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield "127.0.0.1", int(listener.getsockname()[1])
    stop.set()
    thread.join()
    listener.close()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        assert more, "connection closed early"
        data += more
    return data


def test_a_proxied_connection_passes_bytes_both_ways_and_counts_requests(
    upstream: tuple[str, int],
) -> None:
    proxy = CountingProxy(upstream)
    proxy.start()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(GET + POST)
            assert read_exactly(client, 2 * len(answer)) == answer * 2
            client.sendall(UPGRADE)
            switching = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
            assert read_exactly(client, len(switching)) == switching
            client.sendall(WEBSOCKET_FRAMES)
            assert read_exactly(client, len(WEBSOCKET_FRAMES)) == WEBSOCKET_FRAMES
        lines = [r.line for r in proxy.requests]
        assert lines == [
            "GET /api/health",
            "POST /api/work_pools/p/get_scheduled_flow_runs",
            "GET /api/events/out",
            "WS /api/events/out",
            "WS /api/events/out",
        ]
        assert len(proxy.between(0, float("inf"))) == 5
    finally:
        proxy.close()
