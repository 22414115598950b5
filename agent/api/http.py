"""A small HTTP/1.1 client on raw sockets, for JSON calls to the Prefect REST API.

Why not requests or http.client: worker processes must fit in 25 MiB RSS; requests costs
~16 MiB and http.client ~6.7 MiB (it imports email and ssl when imported). This module
imports only cheap stdlib modules; ssl is imported when an https URL is first used.

It does what the agent needs of requests: (connect, read) timeouts, keep-alive with a small
thread-safe pool, Content-Length, chunked and read-to-close bodies, TLS honouring
REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, proxies from the environment as requests and curl
read them (http:// proxies only, CONNECT tunnels for https), Basic auth from URL userinfo.
It never logs (the caller does), and no message it makes holds a credential.
"""

from __future__ import annotations

import json as _json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.api.proxies import bypasses, proxy_for, proxy_var
from agent.api.wire import (
    Conn,
    Eof,
    Headers,
    HttpConnectionError,
    HttpError,
    HttpTimeout,
    Response,
    Stale,
    Url,
    encode_head,
    os_reason,
    parse_url,
    read_body,
    read_head,
)

if TYPE_CHECKING:
    import ssl

__all__ = [
    "Headers",
    "HttpConnectionError",
    "HttpError",
    "HttpSession",
    "HttpTimeout",
    "Response",
    "bypasses",
    "proxy_for",
]

_POOL_SIZE = 4  # idle connections kept per (scheme, host, port, proxy)
_CA_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_UA = "local-agent"
_NO_BODY: Any = object()


@dataclass(frozen=True)
class _Proxy:
    var: str  # the environment variable that named it, for messages
    raw: str  # its URL, in the pool key
    url: Url


class HttpSession:
    """Sends requests; keeps idle connections for reuse. Safe to use from several threads."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        source = os.environ if env is None else env
        # Read once: what a session routes through does not change under it.
        self._env = {
            k: v for k, v in source.items() if k.lower().endswith("_proxy") or k in _CA_VARS
        }
        self.headers: dict[str, str] = {}
        self._idle: dict[tuple[str, str, int, str], list[Conn]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def get(self, url: str, *, timeout: tuple[float, float]) -> Response:
        return self.request("GET", url, timeout=timeout)

    def request(
        self, method: str, url: str, *, json: Any = _NO_BODY, timeout: tuple[float, float]
    ) -> Response:
        """One request; ``json`` (any JSON value, None too) is sent as the body when given."""
        method = method.upper()
        if not (method.isascii() and method.isalpha()):
            raise HttpError(f"bad method {method!r}")
        origin = parse_url(url)
        proxy = self._proxy(url)
        body = None if json is _NO_BODY else _json.dumps(json, separators=(",", ":")).encode()
        data = self._head(method, origin, proxy, body) + (body or b"")
        key = (origin.scheme, origin.host, origin.port, proxy.raw if proxy else "")
        conn = self._take(key)
        if conn is not None:
            try:
                return self._exchange(conn, key, method, data, timeout[1])
            except Stale:
                pass  # the server closed it as we sent: once more, on a new connection
        # A new connection's failure is never retried: the caller has its retry policy.
        return self._exchange(self._open(origin, proxy, timeout[0]), key, method, data, timeout[1])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _proxy(self, url: str) -> _Proxy | None:
        found = proxy_var(url, self._env)
        if found is None:
            return None
        var, raw = found
        scheme = raw.partition("://")[0].lower()
        if scheme != "http":
            raise HttpError(f"{var} names a {scheme}:// proxy; only http:// proxies are supported")
        return _Proxy(var, raw, parse_url(raw, f"the proxy URL in {var}"))

    def _head(self, method: str, url: Url, proxy: _Proxy | None, body: bytes | None) -> bytes:
        fields = {
            "user-agent": ("User-Agent", _UA),
            "accept-encoding": ("Accept-Encoding", "identity"),
            "accept": ("Accept", "application/json"),
        }
        fields.update((name.lower(), (name, value)) for name, value in self.headers.items())
        if url.auth:  # userinfo, unless the caller set Authorization (as requests does)
            fields.setdefault("authorization", ("Authorization", url.auth))
        for name in ("host", "content-length", "content-type", "proxy-authorization"):
            fields.pop(name, None)
        if body is not None:
            fields["content-type"] = ("Content-Type", "application/json")
        if body is not None or method in ("POST", "PUT", "PATCH"):  # some servers insist: 411
            fields["content-length"] = ("Content-Length", str(len(body or b"")))
        target = url.target
        if proxy and url.scheme == "http":  # absolute-form; https goes through a tunnel
            target = f"http://{url.netloc}{url.target}"
            if proxy.url.auth:
                fields["proxy-authorization"] = ("Proxy-Authorization", proxy.url.auth)
        start = f"{method} {target} HTTP/1.1"
        return encode_head(start, [("Host", url.netloc), *fields.values()])

    def _take(self, key: tuple[str, str, int, str]) -> Conn | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn = idle.pop()
            if conn.alive():
                conn.reused = True
                return conn
            conn.close()

    def _put(self, key: tuple[str, str, int, str], conn: Conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < _POOL_SIZE:
                idle.append(conn)
                return
        conn.close()

    def _open(self, url: Url, proxy: _Proxy | None, timeout: float) -> Conn:
        context = self._context() if url.scheme == "https" else None  # its errors first
        hop = proxy.url if proxy else url
        what = f"proxy {hop.where} (from {proxy.var})" if proxy else hop.where
        try:
            sock = socket.create_connection((hop.host, hop.port), timeout=timeout)
        except TimeoutError:
            raise HttpTimeout(f"connect to {what} timed out after {timeout:g}s") from None
        except socket.gaierror as exc:
            raise HttpConnectionError(f"cannot resolve {what}: {exc.strerror}") from None
        except OSError as exc:
            raise HttpConnectionError(f"cannot connect to {what}: {os_reason(exc)}") from None
        conn = Conn(sock, f"{url.where} via proxy {hop.where}" if proxy else url.where)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                if proxy:
                    self._tunnel(conn, url, proxy, timeout)
                conn.sock = self._wrap(context, sock, url, timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def _tunnel(self, conn: Conn, url: Url, proxy: _Proxy, timeout: float) -> None:
        fields = [("Host", url.where), ("User-Agent", _UA)]
        if proxy.url.auth:
            fields.append(("Proxy-Authorization", proxy.url.auth))
        what = f"proxy {proxy.url.where} (from {proxy.var})"
        conn.sock.settimeout(timeout)
        try:
            conn.sock.sendall(encode_head(f"CONNECT {url.where} HTTP/1.1", fields))
            status, reason, _, _ = read_head(conn)
        except TimeoutError:
            raise HttpTimeout(f"connect timed out: {what} did not answer CONNECT") from None
        except (OSError, Eof) as exc:
            why = os_reason(exc) if isinstance(exc, OSError) else "closed the connection"
            raise HttpConnectionError(f"{what} failed during CONNECT: {why}") from None
        if not 200 <= status < 300 or conn.buf:
            raise HttpConnectionError(
                f"{what} refused the tunnel to {url.where}: {status} {reason}".rstrip()
            )

    def _wrap(
        self, context: ssl.SSLContext, sock: socket.socket, url: Url, timeout: float
    ) -> socket.socket:
        import ssl

        sock.settimeout(timeout)  # the handshake is part of connecting
        try:
            return context.wrap_socket(sock, server_hostname=url.host)
        except ssl.SSLCertVerificationError as exc:
            raise HttpConnectionError(
                f"TLS: the certificate of {url.where} could not be verified "
                f"({exc.verify_message}); set REQUESTS_CA_BUNDLE to a CA bundle that signs it"
            ) from None
        except TimeoutError:
            raise HttpTimeout(f"connect to {url.where} timed out in the TLS handshake") from None
        except OSError as exc:
            raise HttpConnectionError(f"TLS with {url.where} failed: {os_reason(exc)}") from None

    def _context(self) -> ssl.SSLContext:
        import ssl  # here, not at the top: ssl costs ~5 MiB and only https needs it

        with self._lock:
            if self._tls is None:
                var = next((v for v in _CA_VARS if self._env.get(v)), None)
                where = self._env[var] if var else None
                folder = where is not None and os.path.isdir(where)
                try:
                    self._tls = ssl.create_default_context(
                        cafile=None if folder else where, capath=where if folder else None
                    )
                except OSError as exc:
                    named = f" named by {var}" if var else ""
                    raise HttpError(
                        f"cannot load the CA certificates{named}: {os_reason(exc)}"
                    ) from None
            return self._tls

    def _exchange(
        self, conn: Conn, key: tuple[str, str, int, str], method: str, data: bytes, read: float
    ) -> Response:
        conn.received = False
        try:
            conn.sock.settimeout(read)  # per recv: the longest wait between bytes
            conn.sock.sendall(data)
            status, reason, headers, keep = read_head(conn)
            content, ended = read_body(conn, method, status, headers)
        except TimeoutError:
            conn.close()
            raise HttpTimeout(f"read from {conn.where} timed out after {read:g}s") from None
        except (OSError, Eof) as exc:
            conn.close()
            if conn.reused and not conn.received:
                raise Stale from None
            if isinstance(exc, OSError):
                why = f"connection to {conn.where} failed: {os_reason(exc)}"
            else:
                when = "mid-response" if conn.received else "without answering"
                why = f"{conn.where} closed the connection {when}"
            raise HttpConnectionError(why) from None
        except BaseException:
            conn.close()
            raise
        if keep and ended:
            self._put(key, conn)
        else:
            conn.close()
        return Response(status, reason, headers, content)
