"""A local HTTP server on loopback that is not Prefect: it answers every request 200 with
an HTML page (a captive portal, a proxy's login page, the wrong port), or with JSON of
another shape. Switch with ``serve``; ``requests`` counts what it was asked."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

HTML = b"<!doctype html><html><body><h1>Please sign in</h1></body></html>"


class NotPrefect:
    def __init__(self) -> None:
        self.content_type = "text/html; charset=utf-8"
        self.body = HTML
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test reads the agent's log, not ours

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve(self, content_type: str, body: object) -> None:
        """From now on answer with this body (bytes as they are, anything else as JSON)."""
        self.content_type = content_type
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def __enter__(self) -> NotPrefect:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
