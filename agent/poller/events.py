"""Push wake-ups: a thread subscribed to Prefect's events stream (``/api/events/out``).

An event for a run of this pool made ad hoc, or back from retry, resume or a
concurrency slot, makes the poller poll at once; a Cancelling starts the cancellation
duty at once; a deployment of the pool created or updated makes it poll at once and
often for a while. What each message means is agent/core/events.py. While connected,
the poller's idle polls may be further apart (``connected``).

The stream goes through the proxy that API calls use (agent/api/proxies.py, chosen for
the API's http(s) URL: ``http_proxy`` / ``https_proxy`` / ``all_proxy``, ``no_proxy``,
lowercase first), tunnelled by websockets with CONNECT. A ``socks*://`` proxy needs
python-socks, which the agent does not ship: the stream is then unavailable. Errors are
logged and shown in status() through redact_text, which hides the userinfo of any URL
in them: a proxy's credentials never show.

Polling stays the safety net, so nothing here can stop the agent: a server with the
stream turned off, a proxy that blocks websockets (or that websockets cannot use) or a
refused token is logged once ("polling only") and tried again with backoff, up to every
EVENTS_RETRY_MAX seconds.
After a reconnect, events since the last one seen (minus a margin) are replayed and
those already seen are dropped by id.

Uses the sync client of `websockets` (which Prefect itself depends on): a small,
well-kept library; writing RFC 6455 framing by hand would be more code to get wrong.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from agent.api.client import auth_header
from agent.api.proxies import proxy_for
from agent.core import events
from agent.core.redact import MASK, redact_text
from agent.observe import metrics
from agent.settings import defaults
from agent.settings.config import ApiSettings

log = logging.getLogger(__name__)

SEEN_MAX = 10_000  # event ids remembered for dropping replays
# websockets logs the handshake's headers and every frame at DEBUG, the Authorization
# header and the auth frame included: its own logger never goes below INFO.
_WIRE_LOG = logging.getLogger("agent.poller.events.wire")
_WIRE_LOG.setLevel(logging.INFO)


class EventsRefused(Exception):
    """The server answered, but not with auth_success."""


def stream_url(api_url: str) -> str:
    """``http://host/api`` -> ``ws://host/api/events/out`` (https -> wss)."""
    parts = urlsplit(api_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/events/out", "", ""))


class EventStream(threading.Thread):
    def __init__(
        self,
        api: ApiSettings,
        pool_id: Callable[[], str | None],
        wake: Callable[[], None],
        cancel: Callable[[], None],
        stop: threading.Event,
        schedule: Callable[[], None],
    ) -> None:
        super().__init__(name="events", daemon=True)
        self.api, self._pool_id = api, pool_id
        # Not `_stop`: that name is threading.Thread's own method.
        self._wake, self._cancel, self._stopping = wake, cancel, stop
        self._schedule = schedule
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self._last_occurred: datetime | None = None
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._said_unavailable = False
        # Read once, as for the API client: the proxy API calls use, or None (directly).
        self._proxy = proxy_for(api.url, os.environ)

    @property
    def connected(self) -> bool:
        return self.connected_since is not None

    def status(self) -> dict[str, object]:
        """For /api/health?verbose: never a failure, polling covers for it."""
        return {
            "ok": True,
            "reason": None,
            "connected": self.connected_since is not None,
            "connected_since": self.connected_since,
            "last_error": self.last_error,
        }

    def run(self) -> None:
        pause = 1.0
        while not self._stopping.is_set():
            pool_id = self._pool_id()
            if pool_id is None:  # the pool is not set up yet
                self._stopping.wait(1.0)
                continue
            try:
                self._session(pool_id)
            except (
                OSError,
                TimeoutError,
                WebSocketException,
                EventsRefused,
                ValueError,
                OverflowError,
                ImportError,  # a socks:// proxy without python-socks (websockets says so)
            ) as exc:
                # A connection that was up comes back soon; one that never came, later.
                pause = 1.0 if self.connected_since is not None else pause * 2
                pause = min(pause, defaults.EVENTS_RETRY_MAX)
                self._down(exc)
            except Exception as exc:  # a bug here must never take polling down
                log.exception("events stream failed unexpectedly")
                self._down(exc)
                pause = defaults.EVENTS_RETRY_MAX
            self._stopping.wait(pause)

    def _down(self, exc: Exception) -> None:
        was_up = self.connected_since is not None
        self.connected_since = None
        metrics.EVENTS_CONNECTED.set(0)
        self.last_error = redact_text(self._unproxied(f"{type(exc).__name__}: {exc}"))
        if was_up:
            log.warning("events stream lost (%s); polling meanwhile", self.last_error)
        elif not self._said_unavailable:
            log.warning(
                "events stream unavailable (%s): polling only until it answers",
                self.last_error,
            )
            self._said_unavailable = True
        else:
            log.debug("events stream still unavailable: %s", self.last_error)

    def _unproxied(self, text: str) -> str:
        """``text`` with the proxy URL in use masked from its scheme to its last "@":
        websockets quotes a proxy URL it cannot parse whole, and a password holding a
        bare "/" would pass redact_text (which ends a URL's userinfo at "/")."""
        proxy = self._proxy
        if not proxy or "@" not in proxy:
            return text
        scheme, sep, rest = proxy.partition("://")
        return text.replace(proxy, f"{scheme}{sep}{MASK}@{rest.rpartition('@')[2]}")

    def _session(self, pool_id: str) -> None:
        url = stream_url(self.api.url)
        token = self.api.key or self.api.auth_string
        with connect(
            url,
            subprotocols=[Subprotocol("prefect")],
            additional_headers=auth_header(self.api),
            open_timeout=defaults.API_CONNECT_TIMEOUT,
            # Not websockets' own choice (proxy=True): the one API calls make, for the
            # same variables and no_proxy rules.
            proxy=self._proxy,
            logger=_WIRE_LOG,
        ) as ws:
            ws.send(json.dumps(events.auth_frame(token)))
            answer = json.loads(ws.recv(timeout=defaults.API_CONNECT_TIMEOUT))
            if not isinstance(answer, dict) or answer.get("type") != "auth_success":
                reason = answer.get("reason") if isinstance(answer, dict) else None
                raise EventsRefused(f"not authenticated: {reason or answer!r}")
            since = events.since_for(self._last_occurred, datetime.now(UTC))
            ws.send(json.dumps(events.filter_frame(pool_id, since)))
            self.connected_since = time.time()
            self._said_unavailable = False
            metrics.EVENTS_CONNECTED.set(1)
            log.info(
                "events stream connected: woken at once by new runs, cancellations and "
                "deployment changes"
            )
            while not self._stopping.is_set():
                try:
                    raw = ws.recv(timeout=1.0)
                except TimeoutError:
                    continue
                self._handle(raw)

    def _handle(self, raw: str | bytes) -> None:
        try:
            seen = events.read(json.loads(raw))
        except ValueError:
            return
        if seen is None or seen.kind is events.Kind.OTHER:
            return
        if seen.id is not None:
            if seen.id in self._seen:
                return  # replayed after a reconnect
            self._seen[seen.id] = None
            while len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
        if seen.occurred is not None and (
            self._last_occurred is None or seen.occurred > self._last_occurred
        ):
            self._last_occurred = seen.occurred
        metrics.EVENTS_RECEIVED.labels(seen.kind.value).inc()
        if seen.kind is events.Kind.SCHEDULE:
            log.debug("event %s: polling often while its runs are scheduled", seen.name)
            self._schedule()
            return
        log.debug("event %s for flow run %s", seen.name, seen.flow_run_id)
        if seen.kind is events.Kind.WAKE:
            self._wake()
        else:
            self._cancel()
