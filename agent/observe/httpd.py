"""The poller's HTTP endpoint: /api/health, /api/poke, /metrics.

Handlers never call the Prefect API: health reads state the poll loop keeps, so it
answers fast whatever the API is doing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        health: HealthFn,
        poke: Callable[[], None],
        metrics: Callable[[], bytes],
    ) -> None:
        self.health, self.poke, self.metrics = health, poke, metrics
        super().__init__(address, _Handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread


def health_body(ok: bool, checks: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """{"healthy", "reasons": {failing check: why}, "checks": {name: ok}}; with
    ``?verbose`` each check carries all its values."""
    return {
        "healthy": ok,
        "reasons": {name: c.get("reason") for name, c in checks.items() if not c["ok"]},
        "checks": checks if verbose else {name: c["ok"] for name, c in checks.items()},
    }


class _Handler(BaseHTTPRequestHandler):
    server: AgentHTTPServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        try:
            if path == "/api/health":
                ok, checks = self.server.health()
                self._json(200 if ok else 503, health_body(ok, checks, "verbose" in url.query))
            elif path == "/api/poke":
                self.server.poke()
                self._json(200, {"poked": True})
            elif path == "/metrics":
                self._send(200, self.server.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._json(404, {"error": f"no such endpoint {path}"})
        except Exception:  # a failing handler must never take the poller down
            log.exception("error serving %s", path)
            self._json(500, {"error": "internal error, see the agent's log"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)
