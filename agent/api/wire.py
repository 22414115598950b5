"""HTTP/1.1 on a socket: the errors, URLs, request heads, responses and the reading of
them, for agent/api/http.py. Standard library only, and only cheap modules of it."""

from __future__ import annotations

import base64
import contextlib
import json as _json
import select
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from agent.api.proxies import DEFAULT_PORT, digits

MAX_LINE = 8 * 1024
MAX_HEAD = 64 * 1024
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters left as they are in a request-target; the rest (spaces, controls, non-ASCII)
# is percent-encoded, as requests does: no CR/LF can reach the request line.
_SAFE = "!$%&'()*+,/:;=?@[]~"


class HttpError(Exception):
    """Any failure of a request; the message is for people and never holds credentials."""


class HttpTimeout(HttpError):
    """Connecting (TCP, TLS handshake, proxy CONNECT) or reading timed out."""


class HttpConnectionError(HttpError):
    """Refused, reset, DNS or TLS failure, a proxy's refusal, a close mid-response, or an
    answer that is not HTTP."""


class Eof(Exception):
    """The peer closed the connection where the response needed more bytes."""


class Stale(Exception):
    """A pooled connection failed before any byte of the answer: the server had closed it."""


class Headers(Mapping[str, str]):
    """Response headers, case-insensitive; a repeated header's values joined by ", "."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: dict[str, tuple[str, str]] = {}
        for name, value in fields:
            old = self._fields.get(name.lower())
            self._fields[name.lower()] = (name, f"{old[1]}, {value}" if old else value)

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._fields.values())

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass(frozen=True)
class Response:
    status_code: int
    reason: str
    headers: Headers
    content: bytes

    @property
    def text(self) -> str:
        charset = "utf-8"
        for param in self.headers.get("Content-Type", "").split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip(" \"'"):
                charset = value.strip(" \"'")
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The decoded body; ValueError when it is not JSON, as with requests."""
        return _json.loads(self.content)


# -- URLs and request heads ------------------------------------------------------------


@dataclass(frozen=True)
class Url:
    scheme: str
    host: str
    port: int
    target: str  # origin-form: path and query
    auth: str | None  # "Basic ..." from the userinfo

    @property
    def where(self) -> str:
        """host:port for messages and CONNECT: never the userinfo."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def netloc(self) -> str:
        """The Host header: the port only when it is not the scheme's own."""
        if self.port != DEFAULT_PORT[self.scheme]:
            return self.where
        return f"[{self.host}]" if ":" in self.host else self.host


def parse_url(url: str, what: str = "the URL") -> Url:
    # Messages name the part that is wrong, never the URL: it may hold a password.
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORT:
        raise HttpError(f"{what} is not http:// or https://")
    try:
        port = parts.port or DEFAULT_PORT[scheme]
        host = parts.hostname or ""
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise HttpError(f"{what} has a bad host or port") from None
    if not host:
        raise HttpError(f"{what} has no host")
    target = quote(parts.path or "/", safe=_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE)
    auth = None
    if parts.username or parts.password:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Url(scheme, host, port, target, auth)


def encode_head(start: str, fields: Iterable[tuple[str, str]]) -> bytes:
    lines = [start]
    for name, value in fields:
        if not name or not (name.isascii() and name.isprintable()) or set(name) & set(" :"):
            raise HttpError(f"bad header name {name!r}")
        if set(value) & set("\r\n\0"):  # header injection; the value itself is not shown
            raise HttpError(f"header {name!r} has a CR, LF or NUL in its value")
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise HttpError("a header value is not Latin-1") from None


# -- connections -----------------------------------------------------------------------


class Conn:
    """A socket, what was read from it but not used yet, and whether it came from the pool."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where
        self.buf = bytearray()
        self.reused = False
        self.received = False  # any byte of the current answer

    def fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        self.received = True
        return True

    def readline(self, limit: int = MAX_LINE) -> bytes:
        start = 0
        while True:
            end = self.buf.find(b"\n", start, limit)
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) >= limit:
                raise HttpError(f"malformed response from {self.where}: a line over 8 KiB")
            start = len(self.buf)
            if not self.fill():
                raise Eof

    def read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not self.fill():
                raise Eof
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_to_close(self) -> bytes:
        while self.fill():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def alive(self) -> bool:
        """An idle connection must have nothing to read: readable means EOF or junk."""
        if self.buf:
            return False
        try:
            poller = select.poll()  # not select(): it fails on fds over 1023
            poller.register(self.sock, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def malformed(conn: Conn, what: str) -> HttpError:
    return HttpError(f"malformed response from {conn.where}: {what}")


def read_fields(conn: Conn) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    total = 0
    while True:
        line = conn.readline()
        total += len(line)
        if total > MAX_HEAD:
            raise malformed(conn, "headers over 64 KiB")
        if line in (b"\r\n", b"\n"):
            return fields
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise malformed(conn, "a bad header line")
        fields.append((name, value.strip()))


def read_head(conn: Conn) -> tuple[int, str, Headers, bool]:
    """Status, reason, headers, and whether the connection may be kept open."""
    while True:
        while len(conn.buf) < 5 and conn.fill():
            pass
        if not conn.buf:
            raise Eof
        if not conn.buf.startswith(b"HTTP/"):
            raise HttpConnectionError(f"the answer from {conn.where} is not HTTP")
        line = conn.readline().decode("latin-1").rstrip("\r\n")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version not in ("HTTP/1.0", "HTTP/1.1") or len(code) != 3 or not digits(code):
            raise HttpConnectionError(f"the answer from {conn.where} is not HTTP/1.x")
        headers = Headers(read_fields(conn))
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue  # interim (100 Continue, 103 Early Hints): the real answer follows
        tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        keep = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        return status, reason.strip(), headers, keep


def read_chunked(conn: Conn) -> bytes:
    parts: list[bytes] = []
    while True:
        size = conn.readline().split(b";", 1)[0].strip().decode("latin-1")
        if not size or not set(size) <= _HEX:
            raise malformed(conn, "a bad chunk size")
        if int(size, 16) == 0:
            read_fields(conn)  # trailers: read past them, unused
            return b"".join(parts)
        parts.append(conn.read_exact(int(size, 16)))
        if conn.readline().strip():
            raise malformed(conn, "a chunk longer than its size")


def read_body(conn: Conn, method: str, status: int, headers: Headers) -> tuple[bytes, bool]:
    """The body, and whether it ended where the connection can carry another answer."""
    if status == 101:
        return b"", False
    if method == "HEAD" or status in (204, 304):
        return b"", True
    coding = headers.get("Transfer-Encoding")
    if coding is not None:
        if coding.split(",")[-1].strip().lower() == "chunked":
            return read_chunked(conn), True
        return conn.read_to_close(), False
    length = headers.get("Content-Length")
    if length is None:
        return conn.read_to_close(), False
    values = {v.strip() for v in length.split(",")}
    size = values.pop() if len(values) == 1 else ""
    if not digits(size):
        raise malformed(conn, "a bad Content-Length")
    return conn.read_exact(int(size)), True


def os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BrokenPipeError | ConnectionAbortedError):
        return "connection closed"
    return str(getattr(exc, "reason", None) or exc.strerror or exc or type(exc).__name__)
