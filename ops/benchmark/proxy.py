"""A raw TCP proxy on loopback that counts the HTTP requests passing through it.

Each contender talks to the Prefect server through its own proxy, so its API requests are
counted the same way whatever client it uses. Bytes are spliced unchanged in both
directions; the client-to-server stream is also read by ``RequestCounter``, which finds
each request line and skips the body. A websocket (``/api/events/out``, the agent's push
wake-ups; ``/api/events/in``, Prefect's events; ``/api/work_pools/<pool>/workers/connect``,
the channel Prefect 3.8's worker sends its heartbeats on) counts as one request, its
upgrade; each data message the client then sends on it is counted apart, as
``WS <path>``, so that traffic moved from HTTP to a websocket still shows.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from enum import Enum

MAX_HEAD = 64 * 1024  # a request head larger than this is not HTTP we understand
CHUNK = 64 * 1024


class _Phase(Enum):
    HEAD = "head"  # reading a request line and headers
    BODY = "body"  # skipping a Content-Length body (or a chunk and its CRLF)
    CHUNK_SIZE = "chunk size"
    TRAILER = "trailer"  # after the last chunk: header lines until an empty one
    FRAME = "frame"  # a websocket: reading a frame's header
    RAW = "raw"  # another protocol, or not understood: nothing more to count


WS_DATA = (0x1, 0x2)  # text and binary frames open a message; 0 continues one, 8-10 control


class RequestCounter:
    """The request lines (``"GET /api/health"``) in one connection's client-to-server
    bytes, fed in pieces as they arrive, and after a websocket upgrade its data messages
    (``"WS /api/events/in"``). Pure: no sockets, no clock."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._phase = _Phase.HEAD
        self._skip = 0  # body (or frame payload) bytes still to skip
        self._after = _Phase.HEAD  # where a skipped body leads
        self._websocket = ""  # the upgraded request's path

    @property
    def raw(self) -> bool:
        return self._phase is _Phase.RAW

    def feed(self, data: bytes) -> list[str]:
        if self._phase is _Phase.RAW:
            return []
        self._buf += data
        found: list[str] = []
        while self._step(found):
            pass
        return found

    def _step(self, found: list[str]) -> bool:
        """Consume one piece of the buffer; False when more bytes are needed."""
        if self._phase is _Phase.BODY:
            if not self._skip:
                self._phase = self._after
                return True
            if not self._buf:
                return False
            taken = min(self._skip, len(self._buf))
            del self._buf[:taken]
            self._skip -= taken
            return True
        if self._phase is _Phase.HEAD:
            return self._head(found)
        if self._phase is _Phase.FRAME:
            return self._frame(found)
        line = self._line()
        if line is None:
            return False
        if self._phase is _Phase.CHUNK_SIZE:
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                self._give_up()
                return False
            if size == 0:
                self._phase = _Phase.TRAILER
            else:
                self._skip = size + 2  # the data and its CRLF
                self._phase, self._after = _Phase.BODY, _Phase.CHUNK_SIZE
            return True
        if not line:  # the empty line that ends the trailer, and the request
            self._phase = _Phase.HEAD
        return True

    def _frame(self, found: list[str]) -> bool:
        """One websocket frame's header (RFC 6455 5.2); its payload is then skipped."""
        buf = self._buf
        if len(buf) < 2:
            return False
        opcode, size, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(buf[2:4]), 4
        elif size == 127:
            size, start = int.from_bytes(buf[2:10]), 10
        start += 4 if buf[1] & 0x80 else 0  # the client's masking key
        if len(buf) < start:
            return False
        del buf[:start]
        if opcode in WS_DATA:
            found.append(f"WS {self._websocket}")
        self._phase, self._skip, self._after = _Phase.BODY, size, _Phase.FRAME
        return True

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._give_up()
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _head(self, found: list[str]) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._give_up()
            return False
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        words = head[0].split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self._give_up()
            return False
        found.append(f"{words[0]} {words[1]}")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() == "websocket":
            # Counted on the assumption that the server accepts (101): a refusal closes
            # the connection in practice, so nothing more would be read anyway.
            self._phase, self._websocket = _Phase.FRAME, words[1].split("?", 1)[0]
            return True
        if "upgrade" in headers or words[0] == "CONNECT":
            self._give_up()  # what follows is another protocol's bytes
            return False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._phase = _Phase.CHUNK_SIZE
            return True
        try:
            self._skip = int(headers.get("content-length", "0"))
        except ValueError:
            self._give_up()
            return False
        self._phase, self._after = _Phase.BODY, _Phase.HEAD
        return True

    def _give_up(self) -> None:
        self._phase = _Phase.RAW
        self._buf.clear()


@dataclass(frozen=True)
class Request:
    at: float  # time.time() when its head had arrived
    line: str  # "POST /api/work_pools/x/get_scheduled_flow_runs"


def per_minute(times: list[float], start: float, end: float) -> float | None:
    """How many of ``times`` fall in [start, end], per minute; None for an empty window."""
    if end <= start:
        return None
    return sum(1 for t in times if start <= t <= end) * 60.0 / (end - start)


class CountingProxy:
    """Listens on a free loopback port and forwards every connection to ``upstream``;
    ``requests`` holds every request seen, in arrival order."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)  # so that close() is noticed
        self.port = int(self._listener.getsockname()[1])
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    def url(self, path: str = "/api") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()

    def times(self) -> list[float]:
        with self._lock:
            return [r.at for r in self.requests]

    def between(self, start: float, end: float) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if start <= r.at <= end]

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            pair = _Pair(client, server, self)
            for target, name in ((pair.upward, "up"), (pair.downward, "down")):
                threading.Thread(target=target, name=f"proxy-{name}", daemon=True).start()

    def _record(self, lines: list[str]) -> None:
        now = time.time()
        with self._lock:
            self.requests.extend(Request(now, line) for line in lines)

    def _forget(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.difference_update(sockets)


class _Pair:
    """One proxied connection: two pumps; the second to finish closes both sockets."""

    def __init__(self, client: socket.socket, server: socket.socket, proxy: CountingProxy):
        self.client, self.server, self.proxy = client, server, proxy
        self.counter = RequestCounter()
        self._left = 2
        self._lock = threading.Lock()

    def upward(self) -> None:
        self._pump(self.client, self.server, count=True)

    def downward(self) -> None:
        self._pump(self.server, self.client, count=False)

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(CHUNK):
                if count and (lines := self.counter.feed(data)):
                    self.proxy._record(lines)
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            for sock in (src, dst):  # a reset: end the other direction too
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.client.close()
            self.server.close()
            self.proxy._forget(self.client, self.server)
